"""The one request path of every counterfactual method.

`CounterfactualSearch.explain` validates the parameters, merges the
constraints (`counterfactual_constraints`), answers "no counterfactual exists
within the constraints" when the feasible set admits no change, runs the
subclass's search, then re-checks, shortens and selects the answers
(`counterfactual_common`). Subclasses implement only `_search`.

Profile-derived settings (whether training rows may be returned, the distance)
are constructor arguments: the pipeline builds the explainer per request as
``cls(options=CounterfactualOptions(allow_training_rows=profile...))``.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from desiderata.explainers.base import ExplainableModel, ExplainContext, Explainer, Kind
from desiderata.explainers.counterfactual_common import (
    CounterfactualOptions,
    Outcome,
    ReferenceIndex,
    reference_index,
    refine,
    select,
)
from desiderata.explainers.counterfactual_constraints import FeasibleSet, build_feasible_set
from desiderata.explainers.types import CounterfactualParams, CounterfactualResult, Explanation, Quality
from desiderata.server.errors import InvalidArgument

__all__ = ["DEFAULT_COUNT", "MAX_COUNT", "CounterfactualSearch", "Report"]

DEFAULT_COUNT = 3
MAX_COUNT = 20
DISTANCES = ("mad_l1", "l2")

Report = Callable[[np.ndarray], None]
"""Called by a search with its best valid candidates so far, ``(n, n_columns)``."""


class CounterfactualSearch(Explainer):
    """Base of counterfactual methods; see the module docstring.

    Args:
        options: profile-derived settings (training rows, distance, plausibility).
    """

    def __init__(self, options: CounterfactualOptions | None = None) -> None:
        self.options = options or CounterfactualOptions()
        if self.options.distance not in DISTANCES:
            raise InvalidArgument.single("options.distance", f"must be one of {list(DISTANCES)}")
        if self.options.training_row_radius < 0:
            raise InvalidArgument.single("options.training_row_radius", "must be ≥ 0")

    @abstractmethod
    def _search(
        self,
        model: ExplainableModel,
        fs: FeasibleSet,
        outcome: Outcome,
        k: int,
        ctx: ExplainContext,
        report: Report,
    ) -> tuple[np.ndarray, int, bool]:
        """Finds candidates in the feasible set.

        Args:
            model: the served model.
            fs: the feasible set (already known to admit a change).
            outcome: the validity rule.
            k: number of counterfactuals wanted.
            ctx: seed, deadline, cancellation.
            report: called with the best valid candidates found so far.

        Returns:
            ``(candidates (n, n_columns) in the feasible set, model rows evaluated, converged)``.
        """

    def explain(self, model: ExplainableModel, x: np.ndarray, params: Any, ctx: ExplainContext) -> Explanation:
        if not isinstance(params, CounterfactualParams):
            raise TypeError(f"{self.name} needs CounterfactualParams")
        started = time.perf_counter()
        k = params.count or DEFAULT_COUNT
        if not 1 <= k <= MAX_COUNT:
            raise InvalidArgument.single("params.counterfactual.count", f"must be between 1 and {MAX_COUNT}")
        n_classes = model.n_classes
        if params.desired_class is not None and not 0 <= params.desired_class < n_classes:
            raise InvalidArgument.single(
                "params.counterfactual.desired_class", f"must be a class index below {n_classes}"
            )
        x = np.asarray(x, dtype=np.float64)
        reference = model.reference()
        fs = build_feasible_set(model.schema, x, params.constraints, reference)
        p0 = model.predict_proba(x[None, :])[0]
        outcome = Outcome(int(np.argmax(p0)), params.desired_class)
        used: dict[str, Any] = {
            "count": k,
            "desired_class": params.desired_class,
            "original_class": outcome.original,
            "constraints": len(params.constraints),
            "distance": self.options.distance,
            "allow_training_rows": self.options.allow_training_rows,
            "seed": ctx.seed,
        }
        index = (
            reference_index(reference, fs.scale, self.options.off_manifold_quantile) if reference is not None else None
        )

        def answer(result: CounterfactualResult, quality: Quality) -> Explanation:
            return Explanation(Kind.COUNTERFACTUAL, self.name, self.version, used, result, quality)

        if outcome.desired == outcome.original:
            reason = "the instance is already predicted as the desired class"
            return answer(CounterfactualResult((), reason), Quality(model_evaluations=1))
        if not fs.feasible:
            reason = f"no counterfactual exists within the constraints: {fs.reason_none}"
            return answer(CounterfactualResult((), reason), Quality(model_evaluations=1))

        def report(best: np.ndarray) -> None:
            if ctx.progress is None or len(best) == 0:
                return
            cfs, _, _ = select(model, fs, best, outcome, k, self.options, index)
            if cfs:
                ms = (time.perf_counter() - started) * 1e3
                ctx.progress(answer(CounterfactualResult(cfs), Quality(compute_ms=ms, converged=False)))

        pool, evals, converged = self._search(model, fs, outcome, k, ctx, report)
        return self._finish(model, fs, outcome, k, pool, evals, converged, index, started, answer)

    def _finish(
        self,
        model: ExplainableModel,
        fs: FeasibleSet,
        outcome: Outcome,
        k: int,
        pool: np.ndarray,
        evals: int,
        converged: bool,
        index: ReferenceIndex | None,
        started: float,
        answer: Callable[[CounterfactualResult, Quality], Explanation],
    ) -> Explanation:
        warnings: list[str] = []
        pool = fs.finalize(pool) if len(pool) else pool
        if len(pool):
            valid = fs.contains(pool) & outcome.valid(model.predict_proba(pool))
            evals += len(pool)
            pool = np.unique(pool[valid], axis=0)
        if len(pool):
            pool, more = refine(model, fs, pool, outcome, self.options.distance)
            evals += more
        cfs, more, dropped = select(model, fs, pool, outcome, k, self.options, index)
        evals += more
        if dropped:
            warnings.append(f"{dropped} candidate(s) within the training-row radius were withheld")
        if index is None:
            warnings.append("no training reference: plausibility was not measured")
        if 0 < len(cfs) < k:
            warnings.append(f"found {len(cfs)} distinct counterfactual(s) of {k} requested")
        reason = "" if cfs else "the search found no valid counterfactual within the constraints"
        if not cfs and dropped:
            reason += " that is not a training record"
        quality = Quality(
            model_evaluations=evals,
            compute_ms=(time.perf_counter() - started) * 1e3,
            converged=converged and len(cfs) == k,
            warnings=tuple(warnings),
        )
        return answer(CounterfactualResult(cfs, reason), quality)
