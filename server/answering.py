"""The explainer step of the request path: admitted calls in, disclosed answers out.

Why a module of its own: Explain computes one admitted call and ExplainBatch
many, and both must go through the same steps, in the same order, for every
instance: the answer cache (raw answers only, looked up after admission, so
noise, disclosure and charging still apply to a hit), the explainer, noise and
disclosure, and a last check that the caller is still there before anything is
charged. What a batch adds is grouping: the instances that miss the cache and
share a method, tier and parameters are handed to the explainer together
(`Explainer.explain_many`), so a method whose model evaluations gain from
larger batches (the gradient methods) evaluates them in shared passes.

Charging, auditing and releasing reservations stay with the caller
(`Pipeline.compute` for one call, `batch_explain` for a batch).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from desiderata.explainers import registry
from desiderata.explainers.base import ExplainContext
from desiderata.explainers.types import Explanation
from desiderata.policy.decision import Decision
from desiderata.policy.guard import Admission, PrivacyGuard
from desiderata.policy.profiles import DisclosureProfile
from desiderata.server.answer_cache import AnswerCache, AnswerKey
from desiderata.server.config import ExplainSettings
from desiderata.server.decision_store import DecisionRecord
from desiderata.server.errors import DesiderataError, InternalError
from desiderata.server.model_handle import ModelHandle
from desiderata.server.served import ExplainCall, ServedExplanation, served_explanation
from desiderata.server.serving import Disclosed, build_explainer, disclose

__all__ = ["Answer", "Prepared", "compute_answers"]

log = structlog.get_logger("desiderata.pipeline")


@dataclass(frozen=True)
class Prepared:
    """What resolve, decide, predict and admit hand to the explainer step."""

    record: DecisionRecord | None
    handle: ModelHandle
    decision: Decision
    profile: DisclosureProfile
    method: str
    params: Any
    x: np.ndarray
    probs: np.ndarray
    admission: Admission


@dataclass(frozen=True)
class Answer:
    """A computed, disclosed explanation whose reservation is not charged yet."""

    raw: Explanation
    shown: Disclosed
    cached: bool


def compute_answers(
    cache: AnswerCache,
    guard: PrivacyGuard,
    settings: ExplainSettings,
    calls: Sequence[ExplainCall],
    prepared: Sequence[Prepared],
    deadline: float | None,
    cancel: threading.Event,
    progress: Callable[[ServedExplanation], None] | None = None,
) -> list[Answer]:
    """Explains (or finds in the answer cache) and discloses admitted calls of one model.

    Releases no reservation: on any failure the caller releases them.

    Args:
        cache: the answer cache.
        guard: noise for noisy tiers.
        settings: explainer limits.
        calls: the calls, one per instance.
        prepared: each call's admission, as `Pipeline.admit` returned it.
        deadline: monotonic deadline of the whole request.
        cancel: set when the caller goes away.
        progress: streamed refinements of a single call (ExplainStream); never for noisy tiers.

    Returns:
        One answer per call, in order.

    Raises:
        DesiderataError: from the explainer (bad parameters, deadline, cancellation).
        InternalError: an explainer failed unexpectedly (logged with its traceback).
    """
    try:
        n = len(calls)
        raws: list[Explanation | None] = [None] * n
        keys: list[AnswerKey] = []
        ctxs: list[ExplainContext] = []
        misses: list[list[int]] = []  # indices that share a method, tier and parameters
        for i, (call, p) in enumerate(zip(calls, prepared, strict=True)):
            seed = p.admission.explainer_seed if p.profile.privacy.noisy else call.seed
            streamed = progress if n == 1 and not p.profile.privacy.noisy else None
            ctxs.append(
                ExplainContext(seed=seed, deadline=deadline, cancel=cancel, progress=_refine(call, p, streamed))
            )
            keys.append(
                cache.key(
                    model=p.handle.name,
                    version=p.handle.version,
                    x=p.x,
                    method=p.method,
                    params=p.params,
                    seed=seed,
                    tier=p.decision.tier,
                    profile=p.profile,
                )
            )
            raws[i] = cache.get(keys[i])
            if raws[i] is None:
                _group(misses, prepared, i)
        cached = [r is not None for r in raws]
        for idx in misses:
            p = prepared[idx[0]]
            explainer = build_explainer(registry.get(p.method), p.profile, settings)
            found = explainer.explain_many(p.handle, [prepared[i].x for i in idx], p.params, [ctxs[i] for i in idx])
            for i, computed in zip(idx, found, strict=True):
                cache.put(keys[i], computed)
                raws[i] = computed
        answers = []
        for call, p, raw, hit in zip(calls, prepared, raws, cached, strict=True):
            if raw is None:
                raise InternalError("an instance left without an answer")
            answers.append(Answer(raw, disclose(raw, p.profile, p.handle.card, call.locale, guard, p.admission), hit))
        ctxs[0].check()  # a caller that went away, or a passed deadline, is not charged
        return answers
    except Exception as exc:
        if isinstance(exc, DesiderataError):
            raise
        log.exception("explainer_failed", method=prepared[0].method, model=prepared[0].handle.name)
        raise InternalError("explainer failed") from exc


def _group(groups: list[list[int]], prepared: Sequence[Prepared], i: int) -> None:
    """Adds instance i to the group of the same method, tier and parameters, or starts one.

    Instances of one batch share these unless the extraction monitor moved some to a stricter tier.
    """
    p = prepared[i]
    for idx in groups:
        q = prepared[idx[0]]
        if (q.method, q.decision.tier, q.params) == (p.method, p.decision.tier, p.params):
            idx.append(i)
            return
    groups.append([i])


def _refine(
    call: ExplainCall, p: Prepared, progress: Callable[[ServedExplanation], None] | None
) -> Callable[[Explanation], None] | None:
    """The explainer's progress callback: a refinement disclosed as the final answer will be."""
    if progress is None:
        return None

    def on_progress(ex: Explanation) -> None:
        shown = disclose(ex, p.profile, p.handle.card, call.locale)
        progress(served_explanation(p.handle, p.probs, ex, shown, p.decision, None, 0.0, p.record))

    return on_progress
