"""Request builders and channel options shared by the sync and async clients."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import grpc

from desiderata.client._values import Value, fill_instance
from desiderata.v1 import audit_service_pb2 as au
from desiderata.v1 import explanation_service_pb2 as es
from desiderata.v1 import model_service_pb2 as ms
from desiderata.v1 import types_pb2 as pb

__all__ = ["Credentials", "Requests", "channel_credentials"]

CONSUMPTION = {"static": pb.CONSUMPTION_STATIC, "dynamic": pb.CONSUMPTION_DYNAMIC}
VERDICT = {
    "": es.FEEDBACK_VERDICT_UNSPECIFIED,
    "agree": es.FEEDBACK_VERDICT_AGREE,
    "disagree": es.FEEDBACK_VERDICT_DISAGREE,
}
OUTCOME = {"": au.AUDIT_OUTCOME_UNSPECIFIED, "allowed": au.AUDIT_OUTCOME_ALLOWED, "denied": au.AUDIT_OUTCOME_DENIED}


@dataclass(frozen=True)
class Credentials:
    """How the client authenticates.

    Args:
        api_key: sent as ``authorization: Bearer <api_key>``.
        tls: use TLS (default roots unless `root_certificates` is given).
        root_certificates: PEM CA bundle of the server certificate.
        client_certificate, client_key: PEM client pair for mTLS.
    """

    api_key: str | None = None
    tls: bool = False
    root_certificates: bytes | None = None
    client_certificate: bytes | None = None
    client_key: bytes | None = None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()


def channel_credentials(creds: Credentials) -> grpc.ChannelCredentials | None:
    """TLS channel credentials, or None for a plaintext channel."""
    if not (creds.tls or creds.root_certificates or creds.client_certificate):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=creds.root_certificates,
        private_key=creds.client_key,
        certificate_chain=creds.client_certificate,
    )


LOAD_BALANCING = ("", "pick_first", "round_robin")


def channel_options(load_balancing: str) -> list[tuple[str, str]]:
    """Channel options for a load-balancing policy.

    gRPC keeps one HTTP/2 connection per channel, so a load balancer in front of
    several replicas spreads connections, not calls. With ``round_robin`` and an
    address that resolves to every replica (``dns:///desiderata-headless:50051``
    for a headless Kubernetes Service, or ``ipv4:10.0.0.1:50051,10.0.0.2:50051``)
    the channel connects to all of them and spreads the calls itself.

    Args:
        load_balancing: "" (gRPC's default, pick_first), "pick_first" or "round_robin".
    """
    if load_balancing not in LOAD_BALANCING:
        raise ValueError(f"load_balancing must be one of {LOAD_BALANCING}, not {load_balancing!r}")
    return [("grpc.lb_policy_name", load_balancing)] if load_balancing else []


class Requests:
    """Builds the v1 request messages from plain values."""

    @staticmethod
    def attribution_params(
        method: str = "", target_class: str = "", steps: int = 0, seed: int = 0, **extra: object
    ) -> pb.ExplanationParams:
        return pb.ExplanationParams(
            attribution=pb.AttributionParams(
                method=method,
                target_class=target_class,
                steps=steps,
                seed=seed,
                **extra,  # type: ignore[arg-type]
            )
        )

    @staticmethod
    def explain(
        model: str,
        features: Mapping[str, Value],
        *,
        purpose: str,
        consumption: str = "static",
        kind: int = pb.EXPLANATION_KIND_FEATURE_ATTRIBUTION,
        params: pb.ExplanationParams | None = None,
        method: str = "",
        model_version: str = "",
        locale: str = "",
    ) -> es.ExplainRequest:
        if params is None and kind == pb.EXPLANATION_KIND_FEATURE_ATTRIBUTION:
            params = Requests.attribution_params(method=method)
        req = es.ExplainRequest(
            model=model,
            model_version=model_version,
            kind=kind,  # type: ignore[arg-type]
            purpose=purpose,
            consumption=CONSUMPTION[consumption],
            params=params,
            locale=locale,
        )
        fill_instance(req.instance, features)
        return req

    @staticmethod
    def explain_batch(
        model: str,
        rows: Sequence[Mapping[str, Value]],
        *,
        purpose: str,
        consumption: str = "static",
        kind: int = pb.EXPLANATION_KIND_FEATURE_ATTRIBUTION,
        params: pb.ExplanationParams | None = None,
        method: str = "",
        model_version: str = "",
        locale: str = "",
    ) -> es.ExplainBatchRequest:
        single = Requests.explain(
            model,
            {},
            purpose=purpose,
            consumption=consumption,
            kind=kind,
            params=params,
            method=method,
            model_version=model_version,
            locale=locale,
        )
        req = es.ExplainBatchRequest(
            model=single.model,
            model_version=single.model_version,
            kind=single.kind,
            purpose=single.purpose,
            consumption=single.consumption,
            params=single.params,
            locale=single.locale,
        )
        for row in rows:
            fill_instance(req.instances.add(), row)
        return req

    @staticmethod
    def explain_decisions(
        decision_ids: Sequence[str],
        *,
        purpose: str,
        consumption: str = "static",
        kind: int = pb.EXPLANATION_KIND_FEATURE_ATTRIBUTION,
        params: pb.ExplanationParams | None = None,
        method: str = "",
        locale: str = "",
    ) -> es.ExplainBatchRequest:
        """An ExplainBatch of recorded decisions (all of one model version)."""
        req = Requests.explain_batch(
            "", [], purpose=purpose, consumption=consumption, kind=kind, params=params, method=method, locale=locale
        )
        req.decision_ids.extend(decision_ids)
        return req

    @staticmethod
    def explain_decision(
        decision_id: str,
        *,
        purpose: str,
        consumption: str = "static",
        kind: int = pb.EXPLANATION_KIND_FEATURE_ATTRIBUTION,
        params: pb.ExplanationParams | None = None,
        locale: str = "",
    ) -> es.ExplainDecisionRequest:
        return es.ExplainDecisionRequest(
            decision_id=decision_id,
            kind=pb.ExplanationKind.ValueType(kind),
            purpose=purpose,
            consumption=CONSUMPTION[consumption],
            params=params,
            locale=locale,
        )

    @staticmethod
    def predict(
        model: str, features: Mapping[str, Value], subject_id: str, model_version: str = ""
    ) -> ms.PredictRequest:
        req = ms.PredictRequest(model=model, model_version=model_version, subject_id=subject_id)
        fill_instance(req.instance, features)
        return req

    @staticmethod
    def capabilities(model: str, purpose: str, consumption: str = "static") -> es.GetCapabilitiesRequest:
        return es.GetCapabilitiesRequest(model=model, purpose=purpose, consumption=CONSUMPTION[consumption])

    @staticmethod
    def submit_feedback(
        model: str,
        decision_id: str,
        *,
        purpose: str,
        verdict: str = "",
        should_matter: Sequence[str] = (),
        should_not_matter: Sequence[str] = (),
        text: str = "",
        explanation_id: str = "",
    ) -> es.SubmitFeedbackRequest:
        """Feedback on the explanation whose disclosure carried `decision_id`.

        Args:
            verdict: "agree", "disagree" or "" (none given).
            should_matter, should_not_matter: feature names.
        """
        if verdict not in VERDICT:
            raise ValueError(f"verdict must be one of {sorted(VERDICT)}, not {verdict!r}")
        return es.SubmitFeedbackRequest(
            model=model,
            decision_id=decision_id,
            explanation_id=explanation_id,
            verdict=VERDICT[verdict],
            should_matter=list(should_matter),
            should_not_matter=list(should_not_matter),
            text=text,
            purpose=purpose,
        )

    @staticmethod
    def list_decisions(
        model: str, *, purpose: str, subject_id: str = "", page_size: int = 0, page_token: str = ""
    ) -> ms.ListDecisionsRequest:
        """One page of the decisions recorded about a subject ("" : the caller's own) by `model`.

        Args:
            page_size: decisions per page; 0 is the server's default (50), at most 500.
        """
        return ms.ListDecisionsRequest(
            model=model, purpose=purpose, subject_id=subject_id, page_size=page_size, page_token=page_token
        )

    @staticmethod
    def query_audit(
        model: str,
        *,
        purpose: str,
        principal: str = "",
        role: str = "",
        decision_id: str = "",
        outcome: str = "",
        since: datetime | None = None,
        until: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        store_records: bool = False,
        action: str = "",
    ) -> au.QueryAuditRequest:
        """One page of a model's audit log, filtered.

        Args:
            model: the model whose records are read; "" with `store_records`.
            outcome: "allowed", "denied" or "" (both).
            since, until: timezone-aware bounds on the record time.
            page_size: records per page; 0 is the server's default (100).
            store_records: read the records that concern no model instead (erasures of a
                subject's data, and these reads); `model` must be "".
            action: only records of this explanation kind or operation, e.g.
                "feature_attribution", "feedback", "audit/read", "erase_subject".
        """
        if store_records and model:
            raise ValueError("model must be empty when store_records is set")
        if outcome not in OUTCOME:
            raise ValueError(f"outcome must be one of {sorted(OUTCOME)}, not {outcome!r}")
        req = au.QueryAuditRequest(
            model=model,
            purpose=purpose,
            principal=principal,
            role=role,
            decision_id=decision_id,
            outcome=OUTCOME[outcome],
            page_size=page_size,
            page_token=page_token,
            store_records=store_records,
            action=action,
        )
        for field, bound in (("since", since), ("until", until)):
            if bound is not None:
                if bound.tzinfo is None:
                    raise ValueError(f"{field} must be timezone-aware")
                getattr(req, field).FromDatetime(bound)
        return req
