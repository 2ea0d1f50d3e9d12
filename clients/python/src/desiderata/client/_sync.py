"""The blocking client."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc

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

__all__ = ["Client"]

R = TypeVar("R")


class Client:
    """A blocking desiderata client.

    Args:
        address: "host:port" of the server, or any gRPC target ("dns:///name:port", "ipv4:a:p,b:p").
        api_key: API key, sent as a bearer token.
        credentials: full credential settings (TLS, mTLS); overrides `api_key`.
        timeout_s: default deadline of every call, in seconds.
        load_balancing: "round_robin" spreads calls over every address `address`
            resolves to (see `channel_options`); "" keeps gRPC's default (one connection).

    Errors are raised as `DesiderataRpcError` with decoded rich details.
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
        self.channel = grpc.secure_channel(address, tls, options) if tls else grpc.insecure_channel(address, options)
        self.explanations = es_grpc.ExplanationServiceStub(self.channel)
        self.models = ms_grpc.ModelServiceStub(self.channel)
        self.audit = au_grpc.AuditServiceStub(self.channel)
        self.timeout_s = timeout_s

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: Callable[..., R], request: Any, timeout_s: float | None) -> R:
        try:
            return method(request, timeout=timeout_s or self.timeout_s, metadata=self._creds.metadata())
        except grpc.RpcError as exc:
            raise DesiderataRpcError.from_rpc_error(exc) from None

    def explain(
        self,
        model: str,
        features: Mapping[str, Value],
        *,
        purpose: str,
        timeout_s: float | None = None,
        **options: Any,
    ) -> pb.Explanation:
        """Explains a submitted instance (see `Requests.explain` for options)."""
        request = Requests.explain(model, features, purpose=purpose, **options)
        return self._call(self.explanations.Explain, request, timeout_s).explanation

    def explain_batch(
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
        response: es.ExplainBatchResponse = self._call(self.explanations.ExplainBatch, request, timeout_s)
        return list(response.explanations)

    def explain_decisions(
        self, decision_ids: Sequence[str], *, purpose: str, timeout_s: float | None = None, **options: Any
    ) -> list[pb.Explanation]:
        """One explanation per recorded decision, in order, from one ExplainBatch call, each as
        `explain_decision` would give it (an end user's only for their own decisions)."""
        request = Requests.explain_decisions(decision_ids, purpose=purpose, **options)
        response: es.ExplainBatchResponse = self._call(self.explanations.ExplainBatch, request, timeout_s)
        return list(response.explanations)

    def explain_decision(
        self, decision_id: str, *, purpose: str, timeout_s: float | None = None, **options: Any
    ) -> pb.Explanation:
        """Explains a decision recorded by `predict`."""
        request = Requests.explain_decision(decision_id, purpose=purpose, **options)
        return self._call(self.explanations.ExplainDecision, request, timeout_s).explanation

    def explain_stream(
        self,
        model: str,
        features: Mapping[str, Value],
        *,
        purpose: str,
        timeout_s: float | None = None,
        **options: Any,
    ) -> Iterator[es.ExplainStreamResponse]:
        """Successive refinements; the last response has `final` set.

        Stopping early (``break``, or closing the iterator) cancels the call, so the
        server stops computing refinements nobody reads.
        """
        request = es.ExplainStreamRequest(request=Requests.explain(model, features, purpose=purpose, **options))
        call = self.explanations.ExplainStream(
            request, timeout=timeout_s or self.timeout_s, metadata=self._creds.metadata()
        )
        try:
            yield from call
        except grpc.RpcError as exc:
            raise DesiderataRpcError.from_rpc_error(exc) from None
        finally:
            call.cancel()  # type: ignore[no-untyped-call]  # a no-op once the stream has ended

    def capabilities(
        self, model: str, *, purpose: str, consumption: str = "static", timeout_s: float | None = None
    ) -> es.GetCapabilitiesResponse:
        return self._call(
            self.explanations.GetCapabilities, Requests.capabilities(model, purpose, consumption), timeout_s
        )

    def global_summary(
        self, model: str, *, purpose: str, version: str = "", timeout_s: float | None = None
    ) -> es.GetGlobalSummaryResponse:
        """Mean |attribution| per feature and predicted class over the model's training reference."""
        request = es.GetGlobalSummaryRequest(model=model, model_version=version, purpose=purpose)
        return self._call(self.explanations.GetGlobalSummary, request, timeout_s)

    def attribution_drift(
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
        return self._call(self.explanations.GetAttributionDrift, request, timeout_s)

    def predict(
        self, model: str, features: Mapping[str, Value], *, subject_id: str, timeout_s: float | None = None
    ) -> ms.PredictResponse:
        """Scores an instance for a subject; the response carries the decision id."""
        return self._call(self.models.Predict, Requests.predict(model, features, subject_id), timeout_s)

    def list_decisions(
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
        return self._call(self.models.ListDecisions, request, timeout_s)

    def list_models(
        self, *, page_size: int = 0, page_token: str = "", timeout_s: float | None = None
    ) -> ms.ListModelsResponse:
        return self._call(
            self.models.ListModels,
            ms.ListModelsRequest(page_size=page_size, page_token=page_token),
            timeout_s,
        )

    def get_model(self, name: str, *, version: str = "", timeout_s: float | None = None) -> ms.ModelCard:
        return self._call(self.models.GetModel, ms.GetModelRequest(name=name, version=version), timeout_s).card

    def submit_feedback(
        self, model: str, decision_id: str, *, purpose: str, timeout_s: float | None = None, **options: Any
    ) -> es.SubmitFeedbackResponse:
        """Feedback on an explanation (dynamic consumption; see `Requests.submit_feedback` for options)."""
        request = Requests.submit_feedback(model, decision_id, purpose=purpose, **options)
        return self._call(self.explanations.SubmitFeedback, request, timeout_s)

    def query_audit(
        self, model: str, *, purpose: str, timeout_s: float | None = None, **filters: Any
    ) -> au.QueryAuditResponse:
        """One page of the model's audit log, oldest first (see `Requests.query_audit` for filters)."""
        request = Requests.query_audit(model, purpose=purpose, **filters)
        return self._call(self.audit.QueryAudit, request, timeout_s)

    def audit_entries(
        self, model: str, *, purpose: str, timeout_s: float | None = None, **filters: Any
    ) -> Iterator[au.AuditEntry]:
        """Every audit entry that matches, oldest first, following the pages (each call one page
        of at most `page_size`, or the server's 100). `timeout_s` bounds each page's call."""
        token = filters.pop("page_token", "")
        while True:
            page = self.query_audit(model, purpose=purpose, timeout_s=timeout_s, page_token=token, **filters)
            yield from page.entries
            token = page.next_page_token
            if not token:
                return

    def verify_audit(
        self, model: str, *, purpose: str, store_records: bool = False, timeout_s: float | None = None
    ) -> au.VerifyAuditResponse:
        """Verifies the hash chain of the whole audit log (access is decided per model, or with
        `store_records` and `model` "" on the records that concern no model)."""
        request = au.VerifyAuditRequest(model=model, purpose=purpose, store_records=store_records)
        return self._call(self.audit.VerifyAudit, request, timeout_s)
