"""Precomputed sample-importance indexes: built once per model version,
persisted next to the model, queried in one gradient plus dot products.

Influence for a query x and training point z is a bilinear form of loss
gradients: ``gₓᵀ M g_z`` with M = (H + δI)⁻¹ (influence functions) or
M = Σ_c η_c I at checkpoints (TracIn). With a factor A (A Aᵀ = M, exact or
Arnoldi low-rank) the training side ``B = G A`` is computed once, chunk by
chunk (memory bounded by ``chunk_rows × p``); a query costs one per-sample
gradient, one ``(p × r)`` product and one ``(n × r)`` matrix-vector product.
Self-influence is ``‖B_z‖²``; each point's mean |influence| over a seeded
sample of reference queries is stored for relative ranking.

Sign convention: ``influence(z, x) = gₓᵀ (H + δI)⁻¹ g_z = −I_up,loss(z, x)``:
n times the predicted INCREASE of x's loss if z were removed from training.
Positive points support the prediction.

Files: ``<cache dir>/<method>-<subset>-<params sha>-<settings sha>.npz``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from desiderata.explainers._ihvp import LowRank, arnoldi, inverse_sqrt_factor
from desiderata.explainers._loss_grads import LossGrad, representation
from desiderata.explainers.base import Reference
from desiderata.explainers.influence_config import InfluenceConfig
from desiderata.server.errors import FailedPrecondition

__all__ = [
    "METHODS",
    "Progress",
    "SampleIndex",
    "build_index",
    "load_or_build_index",
    "params_digest",
    "require_checkpoints",
    "robust_threshold",
]

METHODS = ("influence", "tracin", "nearest_neighbours")
Progress = Callable[[str, int, int], None]
"""Called as ``progress(stage, done, total)`` during precomputation."""


def robust_threshold(scores: np.ndarray, k: float) -> float:
    """(median + k · 1.4826 · MAD)³ of the cube roots of the scores: a robust outlier cut.

    Self-influence is a quadratic form of a gradient (roughly a scaled
    chi-square), so its cube root is close to normal (Wilson–Hilferty) and a
    median/MAD cut there behaves. The two obvious scales do not: on the raw
    scale the MAD is tiny and ~27% of the credit data was flagged; on the log
    scale the many well-fitted points (near-zero gradients) stretch the MAD so
    far that nothing was flagged, not even a planted mislabelled row. With
    k = 3.5 on the demo credit data ~1.2% of points are flagged by influence
    (the planted mislabelled row among them) and ~1.4% by neighbour distance.
    """
    roots = np.cbrt(np.maximum(scores, 0.0))
    med = float(np.median(roots))
    mad = float(np.median(np.abs(roots - med))) * 1.4826
    return float((med + k * mad) ** 3)


def params_digest(module: torch.nn.Module) -> str:
    """SHA-256 prefix of the module's parameter names and values (the model version's identity)."""
    h = hashlib.sha256()
    for name, value in module.named_parameters():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class SampleIndex:
    """A precomputed index over the training rows.

    Args:
        method: one of `METHODS`.
        subset: parameter subset ("last_layer" / "all"; "representation" for neighbours).
        train: ``(n, r)`` float32 training-side projections (B = G A), or representations.
        self_influence: ``(n,)`` self-influence (or the neighbour outlier score).
        global_mean_abs: ``(n,)`` mean |influence| of each point over the global queries.
        threshold: outlier cut on `self_influence`.
        meta: build facts (seconds, solver, rank, clipped eigenvalues, key).
        factors: per-gradient-model ``(p, r_c)`` query factors (not for neighbours).
        grads: the gradient models matching `factors` (rebuilt at load, not persisted).
    """

    method: str
    subset: str
    train: np.ndarray
    self_influence: np.ndarray
    global_mean_abs: np.ndarray
    threshold: float
    meta: dict[str, object]
    factors: list[torch.Tensor] = field(default_factory=list)
    grads: list[LossGrad] = field(default_factory=list)
    _sq: np.ndarray | None = field(default=None, repr=False)
    _t: torch.Tensor | None = field(default=None, repr=False)

    @property
    def outliers(self) -> np.ndarray:
        """``(n,)`` bool: self-influence above the robust threshold."""
        return self.self_influence > self.threshold

    def query_vectors(self, module: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Query-side projections ``(m, r)`` of rows ``x`` with labels ``y``."""
        if self.method == "nearest_neighbours":
            return representation(module, x)
        parts = [(g.grads(x, y) @ a).numpy() for g, a in zip(self.grads, self.factors, strict=True)]
        return np.concatenate(parts, axis=1)

    def scores(self, q: np.ndarray) -> np.ndarray:
        """Influence of every training row on each query, ``(m, r)`` → ``(m, n)``.

        The product runs in torch over a view of `train` (no copy): numpy's
        BLAS keeps its own thread pool, which the server's torch thread
        setting does not bound, and on a busy machine its spinning threads
        made this ``(n × r)`` product 30–70× slower (15 ms instead of 0.2 ms
        at n = 10,000).
        """
        qt = torch.as_tensor(np.ascontiguousarray(q, dtype=np.float32))
        dots = np.asarray((qt @ self._train_t().T).numpy(), dtype=np.float64)
        if self.method == "nearest_neighbours":
            # −√max(‖q‖² − 2 q·t + ‖t‖², 0) in place: the same numbers without five (m × n) temporaries,
            # whose allocation dominated the neighbours build (1,024 × 10,000 per chunk).
            d2 = dots
            d2 *= -2.0
            d2 += (q**2).sum(1)[:, None]
            d2 += self._train_sq()[None, :]
            np.maximum(d2, 0.0, out=d2)
            np.sqrt(d2, out=d2)
            return np.negative(d2, out=d2)
        return dots

    def _train_t(self) -> torch.Tensor:
        if self._t is None or self._t.data_ptr() != self.train.__array_interface__["data"][0]:
            self._t = torch.as_tensor(self.train)  # shares memory with the array
        return self._t

    def _train_sq(self) -> np.ndarray:
        if self._sq is None:
            self._sq = (self.train.astype(np.float64) ** 2).sum(1)
        return self._sq

    def save(self, path: Path) -> None:
        """Writes the index atomically (temp file, then rename)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {f"factor_{i}": a.numpy() for i, a in enumerate(self.factors)}
        tmp = path.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp.npz")  # concurrent writers
        arrays.update(
            train=self.train,
            self_influence=self.self_influence,
            global_mean_abs=self.global_mean_abs,
            header=np.array(
                json.dumps(
                    {
                        "method": self.method,
                        "subset": self.subset,
                        "threshold": self.threshold,
                        "meta": self.meta,
                    }
                )
            ),
        )
        np.savez(tmp, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, grads: list[LossGrad]) -> SampleIndex:
        with np.load(path) as f:
            header = json.loads(str(f["header"]))
            factors = [torch.as_tensor(f[f"factor_{i}"]) for i in range(len(grads))]
            return cls(
                header["method"],
                header["subset"],
                f["train"],
                f["self_influence"],
                f["global_mean_abs"],
                float(header["threshold"]),
                dict(header["meta"]),
                factors,
                grads,
            )


def require_checkpoints(method: str, cfg: InfluenceConfig) -> None:
    """TracIn differentiates saved checkpoints: without any listed it cannot be built."""
    if method == "tracin" and not cfg.checkpoints:
        raise FailedPrecondition("tracin needs training checkpoints: list them in influence.yaml")


def _gradient_models(
    module: torch.nn.Module, method: str, subset: str, cfg: InfluenceConfig, model_dir: Path | None
) -> tuple[list[LossGrad], list[float]]:
    """The LossGrads a method differentiates and their weights (TracIn: learning rates)."""
    if method == "influence":
        return [LossGrad(module, subset)], [1.0]
    require_checkpoints(method, cfg)
    grads, rates = [], []
    for ck in cfg.checkpoints:
        path = Path(ck.path) if model_dir is None else model_dir / ck.path
        if not path.is_file():
            raise FailedPrecondition(f"tracin checkpoint {ck.path!r} is missing from the model folder")
        state = torch.load(path, map_location="cpu", weights_only=True)
        grads.append(LossGrad(module, subset, overrides=dict(state)))
        rates.append(ck.learning_rate)
    return grads, rates


def _factors(
    method: str,
    grads: list[LossGrad],
    rates: list[float],
    ref: Reference,
    cfg: InfluenceConfig,
    progress: Progress,
) -> tuple[list[torch.Tensor], dict[str, object]]:
    rng = np.random.default_rng(cfg.seed)
    if method == "tracin":
        p = grads[0].p
        if p <= cfg.tracin_max_dim:
            return [np.sqrt(r) * torch.eye(p, dtype=torch.float64) for r in rates], {"projection": 0}
        proj = torch.as_tensor(rng.standard_normal((p, cfg.tracin_max_dim)) / np.sqrt(cfg.tracin_max_dim))
        return [np.sqrt(r) * proj for r in rates], {"projection": cfg.tracin_max_dim}
    g = grads[0]
    rows = np.arange(len(ref.x))
    if 0 < cfg.hessian_rows < len(rows):
        rows = np.sort(rng.choice(len(rows), cfg.hessian_rows, replace=False))
    hx, hy = ref.x[rows], ref.y[rows]
    solver = cfg.solver
    if solver == "auto":
        solver = "exact" if g.p <= cfg.max_exact_params else "arnoldi"
    # Progress (which is also where a stopping server cancels) after every pass over the
    # rows: each chunk of the exact Hessian, each Hessian-vector product of Arnoldi.
    low: LowRank
    if solver == "exact":
        progress("hessian", 0, len(hx))
        hessian = g.hessian(hx, hy, on_chunk=lambda done: progress("hessian", done, len(hx)))
        low = inverse_sqrt_factor(hessian, cfg.damping)
    else:
        products = [0]

        def hvp(v: torch.Tensor) -> torch.Tensor:
            out = g.hvp(v, hx, hy, cfg.chunk_rows)
            products[0] += 1
            progress("hessian", min(products[0], cfg.arnoldi_iters), cfg.arnoldi_iters)
            return out

        progress("hessian", 0, cfg.arnoldi_iters)
        low = arnoldi(hvp, g.p, cfg.arnoldi_iters, cfg.rank, cfg.damping, rng)
    meta: dict[str, object] = {
        "solver": solver,
        "rank": int(low.factor.shape[1]),
        "negative_eigenvalues": low.negative,
        "top_eigenvalue": float(low.eigenvalues[0]),
    }
    return [low.factor], meta


def build_index(
    module: torch.nn.Module,
    ref: Reference,
    method: str,
    subset: str,
    cfg: InfluenceConfig,
    model_dir: Path | None = None,
    progress: Progress | None = None,
) -> SampleIndex:
    """Computes a method's training-side index (memory bounded by `cfg.chunk_rows`).

    Args:
        module: the served probability-output module.
        ref: the training reference (rows, labels, ids).
        method: "influence", "tracin" or "nearest_neighbours".
        subset: "last_layer" or "all" (ignored by neighbours).
        cfg: the model's influence settings.
        model_dir: folder the checkpoint paths are relative to.
        progress: ``(stage, done, total)`` callback.
    """
    report: Progress = progress or (lambda _s, _d, _t: None)
    started = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    n = len(ref.x)
    nq = min(cfg.global_queries, n)
    query_rows = np.sort(rng.choice(n, nq, replace=False))
    if method == "nearest_neighbours":
        reps = representation(module, ref.x).astype(np.float32)
        idx = SampleIndex(method, "representation", reps, np.zeros(n), np.ones(n), 0.0, {})
        k = min(cfg.neighbours_k, n - 1)
        score = np.empty(n)
        for start in range(0, n, cfg.chunk_rows):
            d = -idx.scores(reps[start : start + cfg.chunk_rows].astype(np.float64))
            nearest = np.sort(np.partition(d, k, axis=1)[:, : k + 1], axis=1)  # the same k + 1 values, sorted
            score[start : start + len(d)] = nearest[:, 1 : k + 1].mean(1)
            report("neighbours", min(start + cfg.chunk_rows, n), n)
        idx.self_influence = score
        idx.global_mean_abs = np.abs(idx.scores(reps[query_rows].astype(np.float64))).mean(0)
        idx.threshold = robust_threshold(score, cfg.outlier_mad_k)
        idx.meta = {"seconds": time.perf_counter() - started, "dim": int(reps.shape[1])}
        return idx
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}")
    grads, rates = _gradient_models(module, method, subset, cfg, model_dir)
    factors, meta = _factors(method, grads, rates, ref, cfg, report)
    width = sum(int(a.shape[1]) for a in factors)
    train = np.empty((n, width), dtype=np.float32)
    col = 0
    for c, (g, a) in enumerate(zip(grads, factors, strict=True)):
        for start, chunk in g.iter_grads(ref.x, ref.y, cfg.chunk_rows):
            train[start : start + len(chunk), col : col + a.shape[1]] = (chunk @ a).numpy()
            report(f"gradients[{c}]", start + len(chunk), n)
        col += int(a.shape[1])
    self_inf = (train.astype(np.float64) ** 2).sum(1)
    idx = SampleIndex(
        method,
        subset,
        train,
        self_inf,
        np.ones(n),
        robust_threshold(self_inf, cfg.outlier_mad_k),
        meta,
        factors,
        grads,
    )
    predicted = np.argmax(grads[-1].predict(ref.x[query_rows]), axis=1)
    q = idx.query_vectors(module, ref.x[query_rows], predicted)
    idx.global_mean_abs = np.abs(idx.scores(q)).mean(0)
    idx.meta.update(
        {
            "seconds": time.perf_counter() - started,
            "p": grads[0].p,
            "width": width,
            "bytes": int(train.nbytes + sum(a.numel() * 8 for a in factors)),
        }
    )
    return idx


def load_or_build_index(
    module: torch.nn.Module,
    ref: Reference,
    method: str,
    subset: str,
    cfg: InfluenceConfig,
    cache_dir: Path | None,
    model_dir: Path | None = None,
    progress: Progress | None = None,
) -> SampleIndex:
    """The persisted index when one matches the parameters and settings, else a fresh one (saved).

    Args:
        cache_dir: e.g. ``<model dir>/.influence``; None keeps the index in memory only.
        (others as `build_index`.)
    """
    if cache_dir is None:
        return build_index(module, ref, method, subset, cfg, model_dir, progress)
    key = f"{method}-{subset}-{params_digest(module)}-{cfg.digest()}-{len(ref.x)}"
    path = cache_dir / f"{key}.npz"
    if path.is_file():
        grads: list[LossGrad] = []
        if method != "nearest_neighbours":
            grads, _ = _gradient_models(module, method, subset, cfg, model_dir)
        return SampleIndex.load(path, grads)
    idx = build_index(module, ref, method, subset, cfg, model_dir, progress)
    idx.meta["key"] = key
    idx.save(path)
    return idx
