"""The error boundary when a status cannot be sent: gRPC's core may end a call first (its
deadline passes at the moment the pipeline's does, or the caller leaves), and then
sending the mapped status fails. Under mixed load with short deadlines that happened to
about 1 call in 500, each logged by grpc as an error with a traceback. The boundary now
ends such a call as cancelled; a status that can be sent is still sent."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc import aio

from desiderata.server.errors import DeadlineExceeded, InvalidArgument
from desiderata.server.grpc.interceptors import RequestIdInterceptor


class FakeContext:
    """Records what the boundary sends; `abort` fails as grpc's does once core ended the call."""

    def __init__(self, call_ended: bool) -> None:
        self.call_ended = call_ended
        self.aborted: list[tuple[grpc.StatusCode, str]] = []

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def set_trailing_metadata(self, _metadata: Any) -> None:
        pass

    async def abort(self, code: grpc.StatusCode, details: str, _trailing: Any = ()) -> None:
        if self.call_ended:
            raise RuntimeError('Failed "execute_batch"')  # what grpc raises (its class is private)
        self.aborted.append((code, details))
        raise aio.AbortError("Locally aborted.")


def _boundary(error: Exception) -> Any:
    async def behaviour(_request: Any, _context: Any) -> Any:
        raise error

    handler = grpc.unary_unary_rpc_method_handler(behaviour)
    return RequestIdInterceptor._wrap("/test/Method", handler, None).unary_unary


async def test_a_status_the_call_can_still_carry_is_sent() -> None:
    context = FakeContext(call_ended=False)
    with pytest.raises(aio.AbortError):
        await _boundary(InvalidArgument.single("x", "bad"))(object(), context)
    assert [code for code, _ in context.aborted] == [grpc.StatusCode.INVALID_ARGUMENT]


async def test_a_call_core_already_ended_ends_as_cancelled() -> None:
    context = FakeContext(call_ended=True)
    with pytest.raises(asyncio.CancelledError):
        await _boundary(DeadlineExceeded("the deadline passed"))(object(), context)
    assert context.aborted == []
