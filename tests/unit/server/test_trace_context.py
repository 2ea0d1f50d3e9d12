"""W3C Trace Context in the logs: which ``traceparent`` headers are taken, and what they give."""

from __future__ import annotations

import pytest

from desiderata.server.logging import trace_context

TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def test_a_valid_header_gives_its_trace_and_span() -> None:
    assert trace_context(f"00-{TRACE}-{SPAN}-01") == {"trace_id": TRACE, "parent_span_id": SPAN}
    # A later version may add fields after the flags; they are ignored.
    assert trace_context(f"01-{TRACE}-{SPAN}-00-more") == {"trace_id": TRACE, "parent_span_id": SPAN}


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        f"00-{TRACE.upper()}-{SPAN}-01",  # hex must be lowercase
        f"ff-{TRACE}-{SPAN}-01",  # version ff is invalid
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero span id
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE[:-1]}-{SPAN}-01",  # short trace id
    ],
)
def test_an_invalid_header_gives_nothing(header: str) -> None:
    assert trace_context(header) == {}
