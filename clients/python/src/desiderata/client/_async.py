"""The asyncio client (grpc.aio)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
from grpc import aio

from desiderata.client._errors import DesiderataRpcError
from desiderata.client._requests import Credentials, Requests, channel_credentials, channel_options
from desiderata.client._values import Value
from desiderata.v1 import audit_service_pb2 as au
from desiderata.v1 import audit_service_pb2_grpc as au_grpc
from desiderata.v1 import explanation_service_pb2 as es
from desiderata.v1 import explanation_service_pb2_grpc as es_grpc
from desiderata.v1 import model_service_pb2 as ms
from desiderata.v1 import model_service_pb2_grpc as ms_grpc
from desiderata.v1 import types_pb2 as pb

__all__ = ["AsyncClient"]


class AsyncClient:
    """An asyncio desiderata client; same methods as `Client`, awaited.

    Args:
        address: "host:port" of the server, or any gRPC target ("dns:///name:port", "ipv4:a:p,b:p").
        api_key: API key, sent as a bearer token.
        credentials: full credential settings (TLS, mTLS); overrides `api_key`.
        timeout_s: default deadline of every call, in seconds.
        load_balancing: "round_robin" spreads calls over every address `address`
            resolves to (see `channel_options`); "" keeps gRPC's default (one connection).
    """

    def __init__(
        self,
        address: str,
        *,
        api_key: str | None = None,
        credentials: Credentials | None = None,
        timeout_s: float = 10.0,
        load_balancing: str = "",
    ) -> None:
        self._creds = credentials or Credentials(api_key=api_key)
        tls = channel_credentials(self._creds)
        options = channel_options(load_balancing)
        self.channel = aio.secure_channel(address, tls, options) if tls else aio.insecure_channel(address, options)
        self.explanations = es_grpc.ExplanationServiceStub(self.channel)
        self.models = ms_grpc.ModelServiceStub(self.channel)
        self.audit = au_grpc.AuditServiceStub(self.channel)
        self.timeout_s = timeout_s

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close(None)

    async def _call(self, method: Any, request: Any, timeout_s: float | None) -> Any:
        try:
            return await method(request, timeout=timeout_s or self.timeout_s, metadata=self._creds.metadata())
        except grpc.RpcError as exc:
            raise DesiderataRpcError.from_rpc_error(exc) from None

    async def explain(
        self,
        model: str,
        features: Mapping[str, Value],
        *,
        purpose: str,
        timeout_s: float | None = None,
        **options: Any,
    ) -> pb.Explanation:
        request = Requests.explain(model, features, purpose=purpose, **options)
        response: es.ExplainResponse = await self._call(self.explanations.Explain, request, timeout_s)
        return response.explanation

    async def explain_batch(
        self,
        model: str,
        rows: Sequence[Mapping[str, Value]],
        *,
        purpose: str,
        timeout_s: float | None = None,
        **options: Any,
    ) -> list[pb.Explanation]:
        """One explanation per row, in order, from one ExplainBatch call (at most the server's
        ``explain.max_batch_instances`` rows; each is admitted and charged as a call of its own)."""
        request = Requests.explain_batch(model, rows, purpose=purpose, **options)
        response: es.ExplainBatchResponse = await self._call(self.explanations.ExplainBatch, request, timeout_s)
        return list(response.explanations)

    async def explain_decisions(
        self, decision_ids: Sequence[str], *, purpose: str, timeout_s: float | None = None, **options: Any
    ) -> list[pb.Explanation]:
        """One explanation per recorded decision, in order, from one ExplainBatch call, each as
        `explain_decision` would give it (an end user's only for their own decisions)."""
        request = Requests.explain_decisions(decision_ids, purpose=purpose, **options)
        response: es.ExplainBatchResponse = await self._call(self.explanations.ExplainBatch, request, timeout_s)
        return list(response.explanations)

    async def explain_decision(
        self, decision_id: str, *, purpose: str, timeout_s: float | None = None, **options: Any
    ) -> pb.Explanation:
        request = Requests.explain_decision(decision_id, purpose=purpose, **options)
        response: es.ExplainDecisionResponse = await self._call(self.explanations.ExplainDecision, request, timeout_s)
        return response.explanation

    async def explain_stream(
        self,
        model: str,
        features: Mapping[str, Value],
        *,
        purpose: str,
        timeout_s: float | None = None,
        **options: Any,
    ) -> AsyncIterator[es.ExplainStreamResponse]:
        """Successive refinements; the last response has `final` set.

        Stopping early (``break``, or ``aclose()``) cancels the call, so the server
        stops computing refinements nobody reads.
        """
        request = es.ExplainStreamRequest(request=Requests.explain(model, features, purpose=purpose, **options))
        call = self.explanations.ExplainStream(
            request, timeout=timeout_s or self.timeout_s, metadata=self._creds.metadata()
        )
        try:
            async for item in call:
                yield item
        except grpc.RpcError as exc:
            raise DesiderataRpcError.from_rpc_error(exc) from None
        finally:
            call.cancel()  # the caller stopped reading (or the stream ended: then a no-op)

    async def capabilities(
        self, model: str, *, purpose: str, consumption: str = "static", timeout_s: float | None = None
    ) -> es.GetCapabilitiesResponse:
        result: es.GetCapabilitiesResponse = await self._call(
            self.explanations.GetCapabilities, Requests.capabilities(model, purpose, consumption), timeout_s
        )
        return result

    async def global_summary(
        self, model: str, *, purpose: str, version: str = "", timeout_s: float | None = None
    ) -> es.GetGlobalSummaryResponse:
        """Mean |attribution| per feature and predicted class over the model's training reference."""
        request = es.GetGlobalSummaryRequest(model=model, model_version=version, purpose=purpose)
        result: es.GetGlobalSummaryResponse = await self._call(self.explanations.GetGlobalSummary, request, timeout_s)
        return result

    async def attribution_drift(
        self,
        model: str,
        *,
        purpose: str,
        version: str = "",
        max_decisions: int = 0,
        timeout_s: float | None = None,
    ) -> es.GetAttributionDriftResponse:
        """The newest recorded decisions (0: the server's default count) against the training reference."""
        request = es.GetAttributionDriftRequest(
            model=model, model_version=version, purpose=purpose, max_decisions=max_decisions
        )
        result: es.GetAttributionDriftResponse = await self._call(
            self.explanations.GetAttributionDrift, request, timeout_s
        )
        return result

    async def predict(
        self, model: str, features: Mapping[str, Value], *, subject_id: str, timeout_s: float | None = None
    ) -> ms.PredictResponse:
        result: ms.PredictResponse = await self._call(
            self.models.Predict, Requests.predict(model, features, subject_id), timeout_s
        )
        return result

    async def list_decisions(
        self,
        model: str,
        *,
        purpose: str,
        subject_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout_s: float | None = None,
    ) -> ms.ListDecisionsResponse:
        """One page of the decisions recorded about a subject by `model` (any version), newest
        first; `subject_id` "" is the caller's own (end users). Ids for `explain_decision`."""
        request = Requests.list_decisions(
            model, purpose=purpose, subject_id=subject_id, page_size=page_size, page_token=page_token
        )
        result: ms.ListDecisionsResponse = await self._call(self.models.ListDecisions, request, timeout_s)
        return result

    async def list_models(
        self, *, page_size: int = 0, page_token: str = "", timeout_s: float | None = None
    ) -> ms.ListModelsResponse:
        result: ms.ListModelsResponse = await self._call(
            self.models.ListModels,
            ms.ListModelsRequest(page_size=page_size, page_token=page_token),
            timeout_s,
        )
        return result

    async def get_model(self, name: str, *, version: str = "", timeout_s: float | None = None) -> ms.ModelCard:
        result: ms.GetModelResponse = await self._call(
            self.models.GetModel, ms.GetModelRequest(name=name, version=version), timeout_s
        )
        return result.card

    async def submit_feedback(
        self, model: str, decision_id: str, *, purpose: str, timeout_s: float | None = None, **options: Any
    ) -> es.SubmitFeedbackResponse:
        """Feedback on an explanation (dynamic consumption; see `Requests.submit_feedback` for options)."""
        request = Requests.submit_feedback(model, decision_id, purpose=purpose, **options)
        result: es.SubmitFeedbackResponse = await self._call(self.explanations.SubmitFeedback, request, timeout_s)
        return result

    async def query_audit(
        self, model: str, *, purpose: str, timeout_s: float | None = None, **filters: Any
    ) -> au.QueryAuditResponse:
        """One page of the model's audit log, oldest first (see `Requests.query_audit` for filters)."""
        request = Requests.query_audit(model, purpose=purpose, **filters)
        result: au.QueryAuditResponse = await self._call(self.audit.QueryAudit, request, timeout_s)
        return result

    async def audit_entries(
        self, model: str, *, purpose: str, timeout_s: float | None = None, **filters: Any
    ) -> AsyncIterator[au.AuditEntry]:
        """Every audit entry that matches, oldest first, following the pages (each call one page
        of at most `page_size`, or the server's 100). `timeout_s` bounds each page's call."""
        token = filters.pop("page_token", "")
        while True:
            page = await self.query_audit(model, purpose=purpose, timeout_s=timeout_s, page_token=token, **filters)
            for entry in page.entries:
                yield entry
            token = page.next_page_token
            if not token:
                return

    async def verify_audit(
        self, model: str, *, purpose: str, store_records: bool = False, timeout_s: float | None = None
    ) -> au.VerifyAuditResponse:
        """Verifies the hash chain of the whole audit log (access is decided per model, or with
        `store_records` and `model` "" on the records that concern no model)."""
        request = au.VerifyAuditRequest(model=model, purpose=purpose, store_records=store_records)
        result: au.VerifyAuditResponse = await self._call(self.audit.VerifyAudit, request, timeout_s)
        return result
