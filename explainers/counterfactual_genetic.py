"""Black-box counterfactuals by genetic search (CERTIFAI, Sharma et al. 2019).

Needs only `predict_proba`. A population of candidates, all inside the
feasible set, evolves for a number of generations; each generation is one
batched model call. Individuals start as the instance with a random subset of
its actionable features resampled (from the training reference, which keeps
values realistic, or around the instance without one). Fitness is the
distance to the instance for valid individuals (CERTIFAI's 1/d ordering) and
a large constant plus the distance for invalid ones. Each generation keeps an
elite, fills the rest by tournament selection, uniform crossover over whole
features (a one-hot group moves as one) and mutation (revert a feature to the
instance, which favours sparsity, or resample it), then projects and rounds
every child back into the feasible set.
"""

from __future__ import annotations

import numpy as np

from desiderata.explainers.base import Capabilities, ExplainableModel, ExplainContext, Kind
from desiderata.explainers.counterfactual_base import CounterfactualSearch, Report
from desiderata.explainers.counterfactual_common import CounterfactualOptions, Outcome, cost
from desiderata.explainers.counterfactual_constraints import FeasibleSet
from desiderata.explainers.registry import register

__all__ = ["GeneticCounterfactual"]

INVALID_PENALTY = 1e6


class GeneticCounterfactual(CounterfactualSearch):
    """CERTIFAI-style genetic counterfactuals using only `predict_proba`.

    Args:
        options: profile-derived settings.
        population: individuals per generation (rows per model call).
        generations: maximum generations.
        elite: fraction of the population kept unchanged.
        mutation: per-feature mutation probability of a child.
        patience: generations without improvement of the k best before stopping.
    """

    name = "counterfactual_genetic"
    version = "1"
    capabilities = Capabilities(kind=Kind.COUNTERFACTUAL, needs_background=True, streaming=True)

    def __init__(
        self,
        options: CounterfactualOptions | None = None,
        *,
        population: int = 200,
        generations: int = 60,
        elite: float = 0.1,
        mutation: float = 0.15,
        patience: int = 8,
    ) -> None:
        super().__init__(options)
        self.population, self.generations = population, generations
        self.elite, self.mutation, self.patience = elite, mutation, patience

    def _resample(self, fs: FeasibleSet, model: ExplainableModel, n: int, rng: np.random.Generator) -> np.ndarray:
        """n candidate rows whose every actionable feature is drawn anew, ``(n, n_columns)``."""
        ref = model.reference()
        if ref is not None and len(ref.x):
            rows = ref.x[rng.integers(0, len(ref.x), n)].copy()
            numeric = ~(fs.boolean | fs.integer)
            for sl in fs.category_slices:
                numeric[sl] = False
            # jitter continuous values so children are not copies of training rows
            rows[:, numeric] += rng.normal(0.0, 0.1, (n, int(numeric.sum()))) * fs.scale[numeric]
        else:
            rows = fs.x0 + rng.normal(0.0, 1.0, (n, len(fs.x0))) * fs.scale
        return fs.finalize(rows)

    def _search(
        self,
        model: ExplainableModel,
        fs: FeasibleSet,
        outcome: Outcome,
        k: int,
        ctx: ExplainContext,
        report: Report,
    ) -> tuple[np.ndarray, int, bool]:
        rng = ctx.rng()
        n = self.population
        slices = fs.schema.slices
        actionable = np.array([not bool(fs.frozen[sl].all()) for sl in slices])
        d = len(slices)

        def mix(base: np.ndarray, donor: np.ndarray, take: np.ndarray) -> np.ndarray:
            """Rows of base with the features where take ``(n, d)`` is True from donor."""
            out = base.copy()
            for j, sl in enumerate(slices):
                out[take[:, j], sl] = donor[take[:, j], sl]
            return out

        def fitness(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            valid = outcome.valid(model.predict_proba(z))
            return cost(fs, z, self.options.distance) + np.where(valid, 0.0, INVALID_PENALTY), valid

        rate = rng.uniform(0.05, 0.6, (n, 1))
        take = (rng.random((n, d)) < rate) & actionable
        pop = fs.finalize(mix(np.tile(fs.x0, (n, 1)), self._resample(fs, model, n, rng), take))
        fit, valid = fitness(pop)
        evals, best_sum, stalled = n, np.inf, 0
        n_elite = max(1, int(self.elite * n))
        for _ in range(self.generations):
            ctx.check()
            order = np.argsort(fit)
            elite = pop[order[:n_elite]]
            a, b = rng.integers(0, n, (2, n - n_elite))
            pa = pop[np.where(fit[a] < fit[b], a, b)]
            a, b = rng.integers(0, n, (2, n - n_elite))
            pb = pop[np.where(fit[a] < fit[b], a, b)]
            child = mix(pa, pb, rng.random((n - n_elite, d)) < 0.5)
            mutate = (rng.random((n - n_elite, d)) < self.mutation) & actionable
            revert = rng.random((n - n_elite, d)) < 0.5
            child = mix(child, np.tile(fs.x0, (n - n_elite, 1)), mutate & revert)
            child = mix(child, self._resample(fs, model, n - n_elite, rng), mutate & ~revert)
            child = fs.finalize(child)
            child_fit, child_valid = fitness(child)
            evals += len(child)
            pop = np.concatenate([elite, child])
            fit = np.concatenate([fit[order[:n_elite]], child_fit])
            valid = np.concatenate([valid[order[:n_elite]], child_valid])
            top = np.sort(fit)[:k]
            if top.sum() < best_sum * (1 - 1e-3):
                best_sum, stalled = float(top.sum()), 0
                report(pop[valid][np.argsort(fit[valid])[:k]])
            else:
                stalled += 1
            if stalled >= self.patience and valid.sum() >= k:
                break
        order = np.argsort(fit)
        pool = pop[order][valid[order]]
        pool = np.unique(pool, axis=0)
        pool = pool[np.argsort(cost(fs, pool, self.options.distance))][: 8 * k]
        return pool, evals, bool(len(pool) >= k)


register(GeneticCounterfactual)
