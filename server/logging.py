"""Structured logs: JSON lines in production, one event per decision.

Every event carries the request id bound by the interceptor, and, when the
caller sent a W3C ``traceparent`` header, its trace id and span id
(`trace_context`), so that a call's log lines join the caller's distributed
trace in whatever collects both. Feature values of end users are never
logged: log calls pass ids, names and figures only.
"""

from __future__ import annotations

import logging
import re
import sys

import structlog

from desiderata.server.config import LoggingSettings

__all__ = ["configure_logging", "trace_context"]

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(-.*)?")


def trace_context(traceparent: str) -> dict[str, str]:
    """The log fields of a W3C Trace Context ``traceparent`` header: ``trace_id`` and
    ``parent_span_id`` (the caller's span), or none for a missing or invalid header.

    Invalid, as the Trace Context recommendation says: not ``version-trace-parent-flags`` in
    lowercase hex, version ``ff``, an all-zero trace or span id, or version 00 with more fields.
    """
    m = _TRACEPARENT.fullmatch(traceparent.strip())
    if m is None:
        return {}
    version, trace_id, span_id, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == "0" * 32 or span_id == "0" * 16:
        return {}
    return {"trace_id": trace_id, "parent_span_id": span_id}


def configure_logging(settings: LoggingSettings) -> None:
    """Configures structlog (and stdlib logging) once, to stderr."""
    level = getattr(logging, settings.level.upper())
    logging.basicConfig(level=level, stream=sys.stderr, format="%(message)s")
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if settings.format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
