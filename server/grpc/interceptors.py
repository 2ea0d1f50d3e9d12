"""Server interceptors: request ids, authentication, and the error boundary.

- `RequestIdInterceptor` gives every call a request id (the caller's
  ``x-request-id`` or a fresh one), binds it to the structlog context (with
  the caller's W3C ``traceparent`` trace and span ids, when valid), returns
  it in the trailers, maps any escaping error to a gRPC status with rich
  details (`status.to_grpc_status`), turns undecodable request bytes into
  INVALID_ARGUMENT, writes one access log line per call and, past
  ``server.max_concurrent_rpcs`` calls in progress, refuses more at once.
- `AuthInterceptor` maps ``authorization: Bearer <key>`` or ``x-api-key`` to a
  `Principal` (role from configuration, never from the request) and refuses
  calls without a valid credential, except health checking and reflection,
  which load balancers and grpcurl call anonymously.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

import grpc
import structlog
from grpc import aio

from desiderata.policy.model import Principal
from desiderata.server.config import ApiKey
from desiderata.server.errors import DesiderataError, InvalidArgument, Overloaded, QuotaViolation, Unauthenticated
from desiderata.server.grpc.status import to_grpc_status
from desiderata.server.logging import trace_context

__all__ = [
    "ANONYMOUS_SERVICES",
    "AuthInterceptor",
    "CallSlots",
    "RequestIdInterceptor",
    "current_principal",
    "request_id",
]

log = structlog.get_logger("desiderata.access")

ANONYMOUS_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("current_principal")
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

if TYPE_CHECKING:
    from desiderata.server.metrics import Metrics

    Ctx = aio.ServicerContext[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
    _Interceptor = aio.ServerInterceptor[Any, Any]
else:
    Ctx = aio.ServicerContext
    Handler = grpc.RpcMethodHandler
    _Interceptor = aio.ServerInterceptor

Behavior = Callable[[Any, Ctx], Any]


class _Malformed:
    """Stands in for a request whose bytes did not decode."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return _Malformed(exc)

    return decode


def _metadata(context: Ctx) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            out[key.lower()] = value
    return out


def _rewrap(handler: Handler, wrap: Callable[[Behavior, bool], Behavior]) -> Handler:
    """The same handler with its behaviour wrapped (unary and server-streaming)."""
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            wrap(cast(Behavior, handler.unary_unary), False),
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            wrap(cast(Behavior, handler.unary_stream), True),
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
    return handler  # streaming requests are not part of the API


class _Wrapped:
    """Wrapped handlers by method, built on a method's first call: wrapping per call
    cost two handler objects and four closures on every RPC."""

    def __init__(self) -> None:
        self._by_method: dict[str, tuple[Handler, Handler]] = {}

    def get(self, method: str, handler: Handler, build: Callable[[], Handler]) -> Handler:
        found = self._by_method.get(method)
        if found is not None and found[0] is handler:
            return found[1]
        wrapped = build()
        self._by_method[method] = (handler, wrapped)
        return wrapped


class CallSlots:
    """The calls in progress, at most `limit` (load shedding: `server.max_concurrent_rpcs`).

    Used from the event loop only, so a plain counter suffices.
    """

    RETRY_AFTER_S = 0.5

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0

    def take(self) -> None:
        """Takes a slot, or raises Overloaded (RESOURCE_EXHAUSTED with RetryInfo) when none is free."""
        if self.taken >= self.limit:
            raise Overloaded(
                f"the server is serving its most calls at once ({self.limit}); retry shortly",
                [QuotaViolation("server", f"at most {self.limit} calls in progress (server.max_concurrent_rpcs)")],
                retry_after_s=self.RETRY_AFTER_S,
            )
        self.taken += 1

    def give_back(self) -> None:
        self.taken -= 1


class RequestIdInterceptor(_Interceptor):
    """Request ids, the error boundary, access logs, RPC metrics and load shedding (outermost interceptor).

    Args:
        metrics: where each finished call is counted; None counts nothing.
        max_concurrent_rpcs: most calls in progress at once, health and reflection aside
            (more get RESOURCE_EXHAUSTED at once); 0 sets no limit.
    """

    def __init__(self, metrics: Metrics | None = None, max_concurrent_rpcs: int = 0) -> None:
        self._wrapped = _Wrapped()
        self._metrics = metrics
        self._slots = CallSlots(max_concurrent_rpcs) if max_concurrent_rpcs > 0 else None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        slots = None if method.startswith(ANONYMOUS_SERVICES) else self._slots
        return self._wrapped.get(method, handler, lambda: self._wrap(method, handler, self._metrics, slots))

    @staticmethod
    def _wrap(method: str, handler: Handler, metrics: Metrics | None, slots: CallSlots | None = None) -> Handler:

        def wrap(behavior: Behavior, streaming: bool) -> Behavior:
            async def begin(context: Ctx) -> tuple[str, float]:
                metadata = _metadata(context)
                rid = metadata.get("x-request-id", "")[:64] or uuid.uuid4().hex
                request_id.set(rid)
                structlog.contextvars.bind_contextvars(request_id=rid, **trace_context(metadata.get("traceparent", "")))
                context.set_trailing_metadata((("x-request-id", rid),))
                return rid, time.perf_counter()

            def done(code: str, started: float, exc: BaseException | None = None) -> float:
                seconds = time.perf_counter() - started
                if metrics is not None:
                    error = "" if exc is None else exc.code if isinstance(exc, DesiderataError) else "internal"
                    metrics.rpc(method, code, seconds, error)
                return seconds

            async def fail(context: Ctx, rid: str, started: float, exc: BaseException) -> None:
                if not isinstance(exc, DesiderataError):
                    log.exception("unhandled_error", method=method)
                status = to_grpc_status(exc, rid)
                done(status.code.name, started, exc)
                log.info("rpc", method=method, code=status.code.name)
                try:
                    await context.abort(
                        status.code, status.details, (*tuple(status.trailing_metadata), ("x-request-id", rid))
                    )
                except aio.AbortError:
                    raise
                except Exception as send_failed:
                    # gRPC ended the call first (its deadline passed as ours did, or the caller
                    # left): no status can reach anyone. Ending as a cancelled call keeps grpc
                    # from logging the failed send as an error with a traceback.
                    log.info(
                        "rpc_status_not_sent", method=method, code=status.code.name, why=type(send_failed).__name__
                    )
                    raise asyncio.CancelledError from None

            def cancelled(started: float) -> None:
                """The caller cancelled, or gRPC ended the call: counted and logged, nothing sent."""
                log.info("rpc", method=method, code="CANCELLED", ms=round(done("CANCELLED", started) * 1e3, 3))

            def check(request: Any) -> None:
                if isinstance(request, _Malformed):
                    raise InvalidArgument.single("request", "the message could not be decoded")

            if not streaming:

                async def unary(request: Any, context: Ctx) -> Any:
                    rid, started = await begin(context)
                    taken = False
                    try:
                        if slots is not None:
                            slots.take()
                            taken = True
                        check(request)
                        response = await behavior(request, context)
                    except aio.AbortError:
                        raise
                    except asyncio.CancelledError:
                        cancelled(started)
                        raise
                    except Exception as exc:
                        await fail(context, rid, started, exc)
                        raise  # unreachable: abort raises
                    finally:
                        if taken and slots is not None:
                            slots.give_back()
                    log.info("rpc", method=method, code="OK", ms=round(done("OK", started) * 1e3, 3))
                    return response

                return unary

            async def stream(request: Any, context: Ctx) -> AsyncIterator[Any]:
                rid, started = await begin(context)
                taken = False
                try:
                    if slots is not None:
                        slots.take()
                        taken = True
                    check(request)
                    async for item in behavior(request, context):
                        yield item
                except aio.AbortError:
                    raise
                except (asyncio.CancelledError, GeneratorExit):  # the caller left (or stopped reading)
                    cancelled(started)
                    raise
                except Exception as exc:
                    await fail(context, rid, started, exc)
                    raise
                finally:
                    if taken and slots is not None:
                        slots.give_back()
                log.info("rpc", method=method, code="OK", ms=round(done("OK", started) * 1e3, 3))

            return stream

        return _rewrap(handler, wrap)


class AuthInterceptor(_Interceptor):
    """Maps credentials to principals; inner to `RequestIdInterceptor`.

    Args:
        keys: the configured credentials.
    """

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._by_digest = {
            k.digest: Principal(id=k.principal, role=k.role, subject_id=k.subject_id, attributes=dict(k.attributes))
            for k in keys
        }
        self._wrapped = _Wrapped()

    def authenticate(self, metadata: dict[str, str]) -> Principal:
        token = metadata.get("x-api-key", "")
        auth = metadata.get("authorization", "")
        if auth:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise Unauthenticated("the authorization header must be 'Bearer <key>'")
            token = value.strip()
        if not token:
            raise Unauthenticated("no credential: send 'authorization: Bearer <key>'")
        principal = self._by_digest.get(hashlib.sha256(token.encode()).hexdigest())
        if principal is None:
            raise Unauthenticated("unknown credential")
        return principal

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(ANONYMOUS_SERVICES):
            return handler
        return self._wrapped.get(method, handler, lambda: self._wrap(handler))

    def _wrap(self, handler: Handler) -> Handler:
        def wrap(behavior: Behavior, streaming: bool) -> Behavior:
            if not streaming:

                async def unary(request: Any, context: Ctx) -> Any:
                    principal = self.authenticate(_metadata(context))
                    current_principal.set(principal)
                    structlog.contextvars.bind_contextvars(principal=principal.id)
                    return await behavior(request, context)

                return unary

            async def stream(request: Any, context: Ctx) -> AsyncIterator[Any]:
                principal = self.authenticate(_metadata(context))
                current_principal.set(principal)
                structlog.contextvars.bind_contextvars(principal=principal.id)
                async for item in behavior(request, context):
                    yield item

            return stream

        return _rewrap(handler, wrap)
