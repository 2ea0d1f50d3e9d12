"""Thin servicers of the v1 API: convert, call the pipeline, convert back.

No policy, privacy or explainer logic lives here; errors raised below are
turned into statuses by the interceptors.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from grpc import aio

from desiderata.policy.model import Consumption
from desiderata.server.batch_explain import explain_batch
from desiderata.server.decision_listing import list_decisions
from desiderata.server.errors import InvalidArgument
from desiderata.server.grpc import convert, render
from desiderata.server.grpc.interceptors import current_principal
from desiderata.server.grpc.policy_servicers import (
    attribution_drift_response,
    feedback_request,
    global_summary_response,
    required,
)
from desiderata.server.pipeline import Pipeline
from desiderata.server.policy_services import PolicyServices
from desiderata.server.served import ServedExplanation
from desiderata.v1 import explanation_service_pb2 as es
from desiderata.v1 import explanation_service_pb2_grpc as es_grpc
from desiderata.v1 import model_service_pb2 as ms
from desiderata.v1 import model_service_pb2_grpc as ms_grpc
from desiderata.v1 import types_pb2 as pb

if TYPE_CHECKING:
    Ctx = aio.ServicerContext[Any, Any]
else:
    Ctx = aio.ServicerContext

__all__ = ["ExplanationServicer", "ModelServicer"]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def _deadline(context: Ctx, default_s: float) -> float:
    remaining = context.time_remaining()
    return time.monotonic() + (default_s if remaining is None else max(float(remaining), 0.0))


class ExplanationServicer(es_grpc.ExplanationServiceServicer):
    """ExplanationService over the pipeline."""

    def __init__(self, pipeline: Pipeline, default_deadline_s: float, services: PolicyServices) -> None:
        self._pipeline = pipeline
        self._default_deadline_s = default_deadline_s
        self._services = services

    async def GetGlobalSummary(self, request: es.GetGlobalSummaryRequest, context: Ctx) -> es.GetGlobalSummaryResponse:
        summary, decision = await self._services.global_summary(
            current_principal.get(),
            required(request.model, "model"),
            request.model_version,
            required(request.purpose, "purpose"),
            _deadline(context, self._default_deadline_s),
        )
        return global_summary_response(self._services, summary, decision)

    async def GetAttributionDrift(
        self, request: es.GetAttributionDriftRequest, context: Ctx
    ) -> es.GetAttributionDriftResponse:
        drift, decision = await self._services.attribution_drift(
            current_principal.get(),
            required(request.model, "model"),
            request.model_version,
            required(request.purpose, "purpose"),
            request.max_decisions,
            _deadline(context, self._default_deadline_s),
        )
        return attribution_drift_response(self._services, drift, decision)

    async def SubmitFeedback(self, request: es.SubmitFeedbackRequest, context: Ctx) -> es.SubmitFeedbackResponse:
        stored, decision = self._services.submit_feedback(current_principal.get(), feedback_request(request))
        out = es.SubmitFeedbackResponse(decision_id=decision.decision_id)
        out.recorded_at.FromDatetime(datetime.fromisoformat(stored.time))
        return out

    async def Explain(self, request: es.ExplainRequest, context: Ctx) -> es.ExplainResponse:
        call = convert.explain_call(
            kind=request.kind,
            purpose=request.purpose,
            consumption=request.consumption,
            params=request.params,
            locale=request.locale,
            model=request.model,
            model_version=request.model_version,
            instance=request.instance,
        )
        served = await self._pipeline.explain(
            current_principal.get(), call, _deadline(context, self._default_deadline_s)
        )
        return es.ExplainResponse(explanation=render.explanation_to_proto(served))

    async def ExplainBatch(self, request: es.ExplainBatchRequest, context: Ctx) -> es.ExplainBatchResponse:
        calls = convert.explain_batch_calls(
            kind=request.kind,
            purpose=request.purpose,
            consumption=request.consumption,
            params=request.params,
            locale=request.locale,
            model=request.model,
            model_version=request.model_version,
            instances=request.instances,
            decision_ids=request.decision_ids,
        )
        served = await explain_batch(
            self._pipeline, current_principal.get(), calls, _deadline(context, self._default_deadline_s)
        )
        return es.ExplainBatchResponse(explanations=[render.explanation_to_proto(s) for s in served])

    async def ExplainDecision(self, request: es.ExplainDecisionRequest, context: Ctx) -> es.ExplainDecisionResponse:
        if not request.decision_id:
            raise InvalidArgument.single("decision_id", "required")
        call = convert.explain_call(
            kind=request.kind,
            purpose=request.purpose,
            consumption=request.consumption,
            params=request.params,
            locale=request.locale,
            decision_id=request.decision_id,
        )
        served = await self._pipeline.explain(
            current_principal.get(), call, _deadline(context, self._default_deadline_s)
        )
        return es.ExplainDecisionResponse(explanation=render.explanation_to_proto(served))

    async def ExplainStream(
        self, request: es.ExplainStreamRequest, context: Ctx
    ) -> AsyncIterator[es.ExplainStreamResponse]:
        r = request.request
        call = convert.explain_call(
            kind=r.kind,
            purpose=r.purpose,
            consumption=r.consumption,
            params=r.params,
            locale=r.locale,
            model=r.model,
            model_version=r.model_version,
            instance=r.instance,
        )
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue[ServedExplanation] = asyncio.Queue()

        def progress(served: ServedExplanation) -> None:
            loop.call_soon_threadsafe(updates.put_nowait, served)

        task = asyncio.ensure_future(
            self._pipeline.explain(
                current_principal.get(), call, _deadline(context, self._default_deadline_s), progress=progress
            )
        )
        iteration = 0
        try:
            while not task.done() or not updates.empty():
                getter = asyncio.ensure_future(updates.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    iteration += 1
                    yield es.ExplainStreamResponse(
                        explanation=render.explanation_to_proto(getter.result()), iteration=iteration
                    )
                else:
                    getter.cancel()
            final = task.result()
        finally:
            if not task.done():
                task.cancel()
        yield es.ExplainStreamResponse(
            explanation=render.explanation_to_proto(final), iteration=iteration + 1, final=True
        )

    async def GetCapabilities(self, request: es.GetCapabilitiesRequest, context: Ctx) -> es.GetCapabilitiesResponse:
        principal = current_principal.get()
        consumption = Consumption.DYNAMIC if request.consumption == pb.CONSUMPTION_DYNAMIC else Consumption.STATIC
        if not request.model:
            raise InvalidArgument.single("model", "required")
        if not request.purpose:
            raise InvalidArgument.single("purpose", "required: the purpose to check capabilities for")
        handle, caps, budget, policy_version = self._services.capabilities(
            principal, request.model, request.model_version, request.purpose, consumption
        )
        out = es.GetCapabilitiesResponse(
            model=handle.name,
            model_version=handle.version,
            role=principal.role,
            policy_version=policy_version,
        )
        if budget is not None:
            out.budget.CopyFrom(render.budget_to_proto(budget))
        for c in caps:
            out.capabilities.add(
                kind=convert.KIND_TO_PROTO[c.kind],
                tier=c.tier,
                methods=c.methods,
                may_submit_instances=c.may_submit_instances,
                narrative_only=c.narrative_only,
                top_k=c.top_k,
            )
        return out


class ModelServicer(ms_grpc.ModelServiceServicer):
    """ModelService over the model repository and decision store."""

    def __init__(self, pipeline: Pipeline, default_deadline_s: float) -> None:
        self._pipeline = pipeline
        self._default_deadline_s = default_deadline_s

    async def ListModels(self, request: ms.ListModelsRequest, context: Ctx) -> ms.ListModelsResponse:
        size = request.page_size or DEFAULT_PAGE_SIZE
        if size > MAX_PAGE_SIZE:
            raise InvalidArgument.single("page_size", f"at most {MAX_PAGE_SIZE}")
        models = self._pipeline.models.catalog()
        # The token is the last name served (names are sorted): the next page starts after it even
        # when that model was unloaded in between (models.reload_interval_s).
        start = bisect.bisect_right([m.name for m, _ in models], request.page_token) if request.page_token else 0
        page = models[start : start + size]
        more = start + size < len(models)
        return ms.ListModelsResponse(
            models=[
                ms.ModelSummary(
                    name=m.name,
                    version=m.version,
                    task=m.card.task,
                    description=m.card.description,
                    versions=versions,
                )
                for m, versions in page
            ],
            next_page_token=page[-1][0].name if more and page else "",
        )

    async def GetModel(self, request: ms.GetModelRequest, context: Ctx) -> ms.GetModelResponse:
        if not request.name:
            raise InvalidArgument.single("name", "required")
        handle = self._pipeline.models.resolve(request.name, request.version)
        return ms.GetModelResponse(card=render.card_to_proto(handle.card))

    async def ListDecisions(self, request: ms.ListDecisionsRequest, context: Ctx) -> ms.ListDecisionsResponse:
        page = list_decisions(
            self._pipeline,
            current_principal.get(),
            model=request.model,
            purpose=request.purpose,
            subject_id=request.subject_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        classes = self._pipeline.models.resolve(request.model).card.class_names
        return ms.ListDecisionsResponse(
            decisions=[
                ms.RecordedDecision(
                    decision_id=rec.decision_id,
                    model=rec.model,
                    model_version=rec.model_version,
                    recorded_at=render.timestamp(rec.created_at),
                    predicted_class=(
                        classes[int(np.argmax(rec.probabilities))] if len(rec.probabilities) == len(classes) else ""
                    ),
                )
                for rec in page.records
            ],
            next_page_token=page.next_page_token,
        )

    async def Predict(self, request: ms.PredictRequest, context: Ctx) -> ms.PredictResponse:
        if not request.model:
            raise InvalidArgument.single("model", "required")
        features = convert.features_from_proto(request.instance)
        rec, handle = await self._pipeline.predict(
            current_principal.get(),
            request.model,
            request.model_version,
            features,
            request.subject_id,
            _deadline(context, self._default_deadline_s),
        )
        return ms.PredictResponse(
            decision_id=rec.decision_id,
            model=rec.model,
            model_version=rec.model_version,
            prediction=render.prediction_to_proto(handle.card, np.asarray(rec.probabilities)),
            recorded_at=render.timestamp(rec.created_at),
        )
