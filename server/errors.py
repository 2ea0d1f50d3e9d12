"""The one error tree of desiderata, free of any transport.

Every layer (policy, privacy guards, explainers, model repository, pipeline)
raises these; only the gRPC edge (`desiderata.server.grpc.status`) turns them
into a status code with rich details. Each class has a stable string `code`
that clients may match on; the table from codes to gRPC status lives at the
edge.

    DesiderataError                       code
    ├── InvalidArgument                   invalid_argument     bad input, with field violations
    │   └── UnknownPurpose                unknown_purpose
    ├── Unauthenticated                   unauthenticated      no or unknown credential
    ├── PermissionDenied                  permission_denied    policy said no (carries decision id)
    ├── NotFound                          not_found
    │   ├── ModelNotFound                 model_not_found
    │   └── DecisionNotFound              decision_not_found
    ├── ResourceExhausted                 resource_exhausted   quota / budget / size (QuotaFailure)
    │   ├── RateLimited                   rate_limited         window refills (RetryInfo)
    │   │   └── Overloaded                overloaded           too many calls in progress (RetryInfo)
    │   └── BudgetExhausted               budget_exhausted     lifetime budget spent
    ├── FailedPrecondition                failed_precondition  the model lacks what the method needs
    ├── Unavailable                       unavailable          a store is down: fail closed
    ├── DeadlineExceeded                  deadline_exceeded
    ├── NotImplementedYet                 not_implemented      a capability not built yet, said plainly
    └── InternalError                     internal             a bug; clients see only the request id

Messages are written for the caller: they never carry feature values of an
end user, stack traces or policy internals.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BudgetExhausted",
    "DeadlineExceeded",
    "DecisionNotFound",
    "DesiderataError",
    "FailedPrecondition",
    "FieldViolation",
    "InternalError",
    "InvalidArgument",
    "ModelNotFound",
    "NotFound",
    "NotImplementedYet",
    "Overloaded",
    "PermissionDenied",
    "QuotaViolation",
    "RateLimited",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "UnknownPurpose",
]


@dataclass(frozen=True)
class FieldViolation:
    """One problem with one request field (google.rpc.BadRequest.FieldViolation).

    Args:
        field: dotted path of the field, e.g. ``instance.features[income]``.
        description: what is wrong and what is allowed.
    """

    field: str
    description: str


@dataclass(frozen=True)
class QuotaViolation:
    """One exhausted quota (google.rpc.QuotaFailure.Violation).

    Args:
        subject: whose quota, e.g. ``principal:alice/model:credit``.
        description: which quota and its limit.
    """

    subject: str
    description: str


class DesiderataError(Exception):
    """Base of every error the server reports to a caller."""

    code: str = "error"

    def __init__(self, message: str, *, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(DesiderataError):
    """The request is malformed; one field violation per problem."""

    code = "invalid_argument"

    def __init__(
        self,
        message: str,
        violations: list[FieldViolation] | None = None,
        *,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, metadata=metadata)
        self.violations: list[FieldViolation] = list(violations or [])

    @classmethod
    def single(cls, field_path: str, description: str) -> InvalidArgument:
        """One violation, with the message taken from it."""
        return cls(f"{field_path}: {description}", [FieldViolation(field_path, description)])


class UnknownPurpose(InvalidArgument):
    code = "unknown_purpose"


class Unauthenticated(DesiderataError):
    code = "unauthenticated"


class PermissionDenied(DesiderataError):
    """Policy denied the request; `decision_id` names the audited decision."""

    code = "permission_denied"

    def __init__(
        self,
        message: str,
        *,
        decision_id: str = "",
        reasons: tuple[str, ...] = (),
        metadata: dict[str, str] | None = None,
    ) -> None:
        meta = dict(metadata or {})
        if decision_id:
            meta["decision_id"] = decision_id
        if reasons:
            meta["reasons"] = ",".join(reasons)
        super().__init__(message, metadata=meta)
        self.decision_id = decision_id
        self.reasons = reasons


class NotFound(DesiderataError):
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class DecisionNotFound(NotFound):
    code = "decision_not_found"


class ResourceExhausted(DesiderataError):
    """A quota is spent or a message is too large (QuotaFailure details)."""

    code = "resource_exhausted"

    def __init__(
        self,
        message: str,
        violations: list[QuotaViolation] | None = None,
        *,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, metadata=metadata)
        self.violations: list[QuotaViolation] = list(violations or [])


class RateLimited(ResourceExhausted):
    """A short-window rate is spent; it refills after `retry_after_s`."""

    code = "rate_limited"

    def __init__(
        self,
        message: str,
        violations: list[QuotaViolation] | None = None,
        *,
        retry_after_s: float,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, violations, metadata=metadata)
        self.retry_after_s = retry_after_s


class Overloaded(RateLimited):
    """The server already serves its most calls at once (`server.max_concurrent_rpcs`)."""

    code = "overloaded"


class BudgetExhausted(ResourceExhausted):
    """A lifetime query or privacy budget is spent; it never refills."""

    code = "budget_exhausted"


class FailedPrecondition(DesiderataError):
    code = "failed_precondition"


class Unavailable(DesiderataError):
    code = "unavailable"


class DeadlineExceeded(DesiderataError):
    code = "deadline_exceeded"


class NotImplementedYet(DesiderataError):
    """A capability that is declared in the API but not built yet."""

    code = "not_implemented"


class InternalError(DesiderataError):
    """A bug. The caller sees a generic message and the request id only."""

    code = "internal"
