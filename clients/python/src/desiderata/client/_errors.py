"""Rich error details of a failed call, decoded into plain Python values.

The server attaches google.rpc details to every error status (ErrorInfo
always; BadRequest, QuotaFailure and RetryInfo where they apply). This module
turns a `grpc.RpcError` into a `DesiderataRpcError` carrying them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = ["DesiderataRpcError", "ErrorDetails", "decode_details"]


@dataclass(frozen=True)
class ErrorDetails:
    """The decoded google.rpc details of one error.

    Attributes:
        reason: stable error code (ErrorInfo.reason), e.g. "INVALID_ARGUMENT".
        metadata: ErrorInfo metadata, e.g. {"request_id": ..., "decision_id": ...}.
        field_violations: (field, description) pairs from BadRequest.
        quota_violations: (subject, description) pairs from QuotaFailure.
        retry_after_s: RetryInfo delay in seconds, or None when the quota never refills.
    """

    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: list[tuple[str, str]] = field(default_factory=list)
    quota_violations: list[tuple[str, str]] = field(default_factory=list)
    retry_after_s: float | None = None


def decode_details(status: status_pb2.Status | None) -> ErrorDetails:
    """Decodes the details of a google.rpc.Status (None → empty details)."""
    if status is None:
        return ErrorDetails()
    reason, metadata = "", {}
    fields: list[tuple[str, str]] = []
    quotas: list[tuple[str, str]] = []
    retry: float | None = None
    for any_msg in status.details:
        if any_msg.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_msg.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif any_msg.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_msg.Unpack(bad)
            fields.extend((v.field, v.description) for v in bad.field_violations)
        elif any_msg.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            any_msg.Unpack(quota)
            quotas.extend((v.subject, v.description) for v in quota.violations)
        elif any_msg.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info_r = error_details_pb2.RetryInfo()
            any_msg.Unpack(info_r)
            retry = info_r.retry_delay.ToMilliseconds() / 1000.0
    return ErrorDetails(reason, metadata, fields, quotas, retry)


class DesiderataRpcError(Exception):
    """A failed call with its status code, message and decoded details."""

    def __init__(self, code: grpc.StatusCode, message: str, details: ErrorDetails) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.details = details

    @property
    def request_id(self) -> str:
        return self.details.metadata.get("request_id", "")

    def describe(self) -> str:
        """A multi-line human description (for command-line tools)."""
        lines = [f"{self.code.name}: {self.message}"]
        lines += [f"  {f}: {d}" for f, d in self.details.field_violations]
        lines += [f"  quota {s}: {d}" for s, d in self.details.quota_violations]
        if self.details.retry_after_s is not None:
            lines.append(f"  retry after {self.details.retry_after_s:.1f} s")
        if self.request_id:
            lines.append(f"  request id {self.request_id}")
        return "\n".join(lines)

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> DesiderataRpcError:
        """Wraps a grpc.RpcError (sync or aio) and decodes its details."""
        from grpc_status import rpc_status

        call: Any = error
        status: status_pb2.Status | None = None
        try:
            status = rpc_status.from_call(call)
        except (ValueError, AttributeError, TypeError):
            status = None
        return cls(call.code(), call.details() or "", decode_details(status))
