"""The one table from error codes to gRPC status, with google.rpc rich details.

Every `DesiderataError` becomes a status whose ``grpc-status-details-bin``
trailer carries a google.rpc.Status with: ErrorInfo (reason = the stable error
code, domain, metadata such as the policy decision id and the request id),
BadRequest field violations for invalid arguments, QuotaFailure for exhausted
quotas, and RetryInfo only where a window refills. Anything else is INTERNAL
with a generic message and the request id — never a traceback.
"""

from __future__ import annotations

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from desiderata.server import errors as e

__all__ = ["DOMAIN", "STATUS_BY_CODE", "to_grpc_status"]

DOMAIN = "desiderata.dev"

STATUS_BY_CODE: dict[str, grpc.StatusCode] = {
    e.InvalidArgument.code: grpc.StatusCode.INVALID_ARGUMENT,
    e.UnknownPurpose.code: grpc.StatusCode.INVALID_ARGUMENT,
    e.Unauthenticated.code: grpc.StatusCode.UNAUTHENTICATED,
    e.PermissionDenied.code: grpc.StatusCode.PERMISSION_DENIED,
    e.NotFound.code: grpc.StatusCode.NOT_FOUND,
    e.ModelNotFound.code: grpc.StatusCode.NOT_FOUND,
    e.DecisionNotFound.code: grpc.StatusCode.NOT_FOUND,
    e.ResourceExhausted.code: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.RateLimited.code: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.Overloaded.code: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.BudgetExhausted.code: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.FailedPrecondition.code: grpc.StatusCode.FAILED_PRECONDITION,
    e.Unavailable.code: grpc.StatusCode.UNAVAILABLE,
    e.DeadlineExceeded.code: grpc.StatusCode.DEADLINE_EXCEEDED,
    e.NotImplementedYet.code: grpc.StatusCode.UNIMPLEMENTED,
    "cancelled": grpc.StatusCode.CANCELLED,
    e.InternalError.code: grpc.StatusCode.INTERNAL,
}


def to_grpc_status(error: BaseException, request_id: str) -> grpc.Status:
    """The status (code, message, trailing details) reported for `error`."""
    if not isinstance(error, e.DesiderataError) or isinstance(error, e.InternalError):
        error = e.InternalError("internal error")
        message = f"internal error (request id {request_id})"
    else:
        message = error.message
    code = STATUS_BY_CODE.get(error.code, grpc.StatusCode.INTERNAL)
    info = error_details_pb2.ErrorInfo(reason=error.code.upper(), domain=DOMAIN)
    info.metadata.update(error.metadata)
    info.metadata["request_id"] = request_id
    details = [info]
    if isinstance(error, e.InvalidArgument) and error.violations:
        bad = error_details_pb2.BadRequest()
        for v in error.violations:
            bad.field_violations.add(field=v.field, description=v.description)
        details.append(bad)
    if isinstance(error, e.ResourceExhausted) and error.violations:
        quota = error_details_pb2.QuotaFailure()
        for q in error.violations:
            quota.violations.add(subject=q.subject, description=q.description)
        details.append(quota)
    if isinstance(error, e.RateLimited):
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(max(int(error.retry_after_s * 1000), 1))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=_rpc_code(code), message=message)
    for d in details:
        status.details.add().Pack(d)
    return rpc_status.to_status(status)


def _rpc_code(code: grpc.StatusCode) -> int:
    value: int = getattr(code_pb2, code.name)
    return value
