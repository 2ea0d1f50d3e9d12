# ruff: noqa: B023  (closures are called within the loop iteration that defines them)
"""In-process attribution benchmark against shap and captum (run on demand).

    python bench/attribution_inprocess.py [--instances 3] [--d 30]

Same model, same 100-row background for every method. At d = 30 exact
Shapley is out of reach, so the reference is an estimate from 1,000
antithetic pairs of orders per background row (`reference_phi`, 0.26% off),
computed independently of the methods under test. Prints wall time (median over the
instances) and relative L1 error against the reference for each method, and
the ratios to desiderata's permutation_shapley.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from desiderata.explainers._attribution import CoalitionGame
from desiderata.explainers.background import Background
from desiderata.explainers.base import ExplainContext
from desiderata.explainers.integrated_gradients import IntegratedGradients
from desiderata.explainers.kernel_shap import KernelShap
from desiderata.explainers.shapley_exact import ExactShapley
from desiderata.explainers.shapley_permutation import PermutationShapley
from desiderata.explainers.types import AttributionParams, AttributionResult
from tests.unit.explainers.attribution_models import Softmax2, TorchModel, numeric

warnings.filterwarnings("ignore")


def mlp(d: int, hidden: int, seed: int) -> TorchModel:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(d, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 1),
    )
    ref = np.random.default_rng(seed).normal(size=(1000, d))
    return TorchModel(Softmax2(net), numeric(d), ref, name=f"mlp{d}")


def reference_phi(
    model: TorchModel, x: np.ndarray, bg: Background, pairs_per_row: int = 1000, seed: int = 12345
) -> np.ndarray:
    """Reference Shapley values at d = 30 or 100, where enumeration is out of reach.

    Written apart from the methods under test (its own row building, no explainer code):
    ``φ = Σ_b w_b φ(b)`` with each single-baseline game's ``φ(b)`` estimated from
    `pairs_per_row` antithetic pairs of uniformly random orders walked with row b. It is
    unbiased, and its error is known: `reference_error` measures it between two seeds
    (0.26% relative L1 at 1,000 pairs per row on the 30-feature MLP, against 0.66–0.80%
    for the old reference's 1,000 antithetic pairs each walked with the whole background,
    at the same 6.2 million model rows).
    """
    game = CoalitionGame(model, x, bg, 1, 1 << 16, ExplainContext())
    d, n_bg = game.d, bg.x.shape[0]
    rng = np.random.default_rng(seed)
    x_in, b_in = game.x_in, game.bg_in
    total = np.zeros((n_bg, d))
    per = max(1, 4096 // (2 * (d + 1)))
    for b in range(n_bg):
        done = 0
        while done < pairs_per_row:
            k = min(per, pairs_per_row - done)
            fwd = rng.permuted(np.tile(np.arange(d), (k, 1)), axis=1)
            orders = np.concatenate([fwd, fwd[:, ::-1]])
            rank = np.argsort(orders, axis=1)
            masks = rank[:, None, :] < np.arange(d + 1)[None, :, None]  # (2k, d+1, d): first j of each order
            rows = np.where(masks, x_in[None, None, :], b_in[b][None, None, :])
            v = game.f(rows.reshape(-1, d)).reshape(2 * k, d + 1)
            marg = np.empty((2 * k, d))
            marg[np.arange(2 * k)[:, None], orders] = np.diff(v, axis=1)
            total[b] += marg.sum(axis=0)
            done += k
    return np.asarray(bg.weights @ (total / (2 * pairs_per_row)))


def reference_error(model: TorchModel, xs: np.ndarray, bg: Background, pairs_per_row: int = 1000) -> float:
    """Mean relative L1 error of `reference_phi`, from two independent seeds (their gap / √2)."""
    gaps = []
    for x in xs:
        a = reference_phi(model, x, bg, pairs_per_row, seed=1)
        b = reference_phi(model, x, bg, pairs_per_row, seed=2)
        gaps.append(float(np.abs(a - b).sum() / np.abs(0.5 * (a + b)).sum()) / np.sqrt(2))
    return float(np.mean(gaps))


def run(
    name: str, fn: Callable[[np.ndarray], np.ndarray], xs: np.ndarray, refs: list[np.ndarray]
) -> tuple[float, float]:
    fn(xs[0])  # warm-up
    times, errs = [], []
    for x, ref in zip(xs, refs, strict=True):
        t = time.perf_counter()
        phi = fn(x)
        times.append((time.perf_counter() - t) * 1e3)
        errs.append(float(np.abs(phi - ref).sum() / np.abs(ref).sum()))
    ms, err = statistics.median(times), float(np.mean(errs))
    print(f"  {name:<44s} {ms:9.1f} ms   rel L1 err {100 * err:6.2f}%")
    return ms, err


def ours(cls: type, model: TorchModel, bg: Background, **kw: float) -> Callable[[np.ndarray], np.ndarray]:
    def f(x: np.ndarray) -> np.ndarray:
        r = (
            cls()
            .explain_with_background(model, x, AttributionParams(target_class=1, **kw), ExplainContext(), bg)
            .result
        )
        assert isinstance(r, AttributionResult)
        return r.values

    return f


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--d", type=int, nargs="*", default=[30, 100])
    args = ap.parse_args()
    torch.set_num_threads(1)
    import shap
    from captum.attr import IntegratedGradients as CaptumIG
    from captum.attr import KernelShap as CaptumKS
    from captum.attr import ShapleyValueSampling

    for d, hidden in [(d, 64 if d <= 30 else 256) for d in args.d]:
        model = mlp(d, hidden, d)
        ref_x = model.reference().x  # type: ignore[union-attr]
        bg = Background.of(ref_x[:100])
        xs = ref_x[500 : 500 + args.instances]
        print(f"\n== {d}-feature MLP, 100-row background, {args.instances} instances ==")
        t = time.perf_counter()
        refs = [reference_phi(model, x, bg) for x in xs]
        print(f"  (reference: 1,000 pairs per background row, {time.perf_counter() - t:.1f} s)")
        f1 = lambda z: model.predict_proba(z)[:, 1]  # noqa: E731
        res = {}
        for tse in (0.05, 0.025, 0.012):
            res[f"perm{tse}"] = run(
                f"desiderata permutation_shapley se={tse}",
                ours(PermutationShapley, model, bg, target_std_error=tse),
                xs,
                refs,
            )
        for rows in (200_000, 800_000):
            res[f"kern{rows}"] = run(
                f"desiderata kernel_shap rows={rows}", ours(KernelShap, model, bg, max_samples=rows), xs, refs
            )
        pe = shap.PermutationExplainer(f1, shap.maskers.Independent(bg.x, max_samples=100))
        for evals in (10 * (2 * d + 1), 40 * (2 * d + 1)):
            res[f"shapperm{evals}"] = run(
                f"shap PermutationExplainer max_evals={evals}",
                lambda x, e=evals: pe(x[None], max_evals=e, silent=True).values[0],
                xs,
                refs,
            )
        ke = shap.KernelExplainer(f1, bg.x)
        for ns in (2000, 4000):
            res[f"shapkern{ns}"] = run(
                f"shap KernelExplainer l1_reg=False n={ns}",
                lambda x, n=ns: ke.shap_values(x[None], nsamples=n, l1_reg=False, silent=True)[0],
                xs,
                refs,
            )
        mod = model.torch_module()
        bgt = torch.tensor(bg.x, dtype=torch.float32)
        svs = ShapleyValueSampling(lambda z: mod(z)[:, 1])  # type: ignore[misc]

        def captum_svs(x: np.ndarray, n: int = 25) -> np.ndarray:
            xt = torch.tensor(x[None], dtype=torch.float32)
            return np.mean(
                [
                    svs.attribute(xt, baselines=bgt[i : i + 1], n_samples=n)[0].detach().numpy()
                    for i in range(0, 100, 10)
                ],
                axis=0,
            )

        res["captum_svs"] = run("captum ShapleyValueSampling (10 bg rows x 25)", captum_svs, xs, refs)
        cks = CaptumKS(lambda z: mod(z)[:, 1])  # type: ignore[misc]

        def captum_ks(x: np.ndarray) -> np.ndarray:
            xt = torch.tensor(x[None], dtype=torch.float32)
            return np.mean(
                [
                    cks.attribute(xt, baselines=bgt[i : i + 1], n_samples=200).detach().numpy()[0]
                    for i in range(0, 100, 10)
                ],
                axis=0,
            )

        res["captum_ks"] = run("captum KernelShap (10 bg rows x 200)", captum_ks, xs, refs)
    # Exact Shapley d = 10 against shap's ExactExplainer.
    model = mlp(10, 64, 10)
    bg = Background.of(model.reference().x[:100])  # type: ignore[union-attr]
    xs = model.reference().x[500 : 500 + args.instances]  # type: ignore[union-attr]
    ex = shap.ExactExplainer(lambda z: model.predict_proba(z)[:, 1], shap.maskers.Independent(bg.x, max_samples=100))
    refs = [ours(ExactShapley, model, bg)(x) for x in xs]
    print("\n== exact Shapley, d = 10, 100-row background ==")
    run("desiderata exact_shapley", ours(ExactShapley, model, bg), xs, refs)
    run("shap ExactExplainer", lambda x: ex(x[None]).values[0], xs, refs)
    print("\n== Integrated Gradients, 50 steps, zero baseline, d = 30 ==")
    model = mlp(30, 64, 30)
    xs = model.reference().x[500 : 500 + max(args.instances, 20)]  # type: ignore[union-attr]
    cig = CaptumIG(model.torch_module())

    def c_ig(x: np.ndarray) -> np.ndarray:
        return (
            cig.attribute(torch.tensor(x[None], dtype=torch.float32), target=1, n_steps=50, method="gausslegendre")[0]
            .detach()
            .double()
            .numpy()
        )

    refs = [c_ig(x) for x in xs]

    def d_ig(x: np.ndarray) -> np.ndarray:
        p = AttributionParams(target_class=1, steps=50, integration_rule="gauss_legendre", baseline="zero")
        r = IntegratedGradients().explain(model, x, p, ExplainContext()).result
        assert isinstance(r, AttributionResult)
        return r.values

    run("desiderata integrated_gradients (in-process)", d_ig, xs, refs)
    run("captum IntegratedGradients", c_ig, xs, refs)


if __name__ == "__main__":
    main()
