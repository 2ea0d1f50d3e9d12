"""Per-call latency of ways to run the demo model's ``.pt2`` program.

Why: explanations call the model thousands of times per request (Shapley
sampling, IG steps, counterfactual search), often on tiny batches, so the
fixed per-call cost of the loaded program matters more than its arithmetic.
This compares the eager module with ``torch.export.load(p).module()``,
``torch.export.unflatten``, `desiderata.server.artifact.load_exported_module`
and, optionally, ``torch.compile`` of the loaded module, for batch 1 and 50,
forward only and forward + backward to the input. Run on demand:

    python bench/pt2_latency.py [--model server/demo/credit/model.pt2] [--compile]

Timings are CPU time of the calling thread (one torch thread), so other
processes on a shared machine disturb them less than wall time; the best of
several repeats counts.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from desiderata.server.artifact import load_exported_module
from desiderata.server.demo_model import CreditNet, Probabilities

Model = Callable[[torch.Tensor], torch.Tensor]


def eager_from_program(path: Path) -> torch.nn.Module:
    """The eager demo module with the program's weights.

    Args:
        path: the ``.pt2`` file of a `CreditNet` export.
    """
    state = torch.export.load(path).state_dict
    mean, std = state["net.standardize.mean"], state["net.standardize.std"]
    net = CreditNet(mean, std, n_classes=int(state["net.body.4.bias"].shape[0]))
    module = Probabilities(net)
    module.load_state_dict(state)
    return module.eval()


def per_call_us(model: Model, x: torch.Tensor, *, backward: bool, calls: int, repeats: int = 7) -> float:
    """Best-of-`repeats` mean CPU microseconds per call (this thread).

    Args:
        model: the callable to time.
        x: the input batch.
        backward: also back-propagate P(class 1) to the input.
        calls: calls per repeat.
        repeats: repeats; the fastest counts.
    """
    best = float("inf")
    for rep in range(repeats + 1):
        started = time.thread_time()
        for _ in range(calls):
            if backward:
                xi = x.detach().requires_grad_(True)
                torch.autograd.grad(model(xi)[:, 1].sum(), xi)
            else:
                with torch.no_grad():
                    model(x)
        if rep:  # the first repeat warms up
            best = min(best, (time.thread_time() - started) / calls)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("server/demo/credit/model.pt2"))
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to start)")
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    candidates: dict[str, Model] = {
        "eager": eager_from_program(args.model),
        "export.load().module()": torch.export.load(args.model).module(),
        "export.unflatten": torch.export.unflatten(torch.export.load(args.model)),
        "load_exported_module": load_exported_module(args.model),
    }
    if args.compile:
        started = time.perf_counter()
        compiled = torch.compile(torch.export.load(args.model).module(), dynamic=True)
        for batch in (1, 50):
            xi = torch.zeros(batch, 25, requires_grad=True)
            torch.autograd.grad(compiled(xi)[:, 1].sum(), xi)
        print(f"torch.compile warm-up (both batch sizes, fwd+bwd): {time.perf_counter() - started:.1f}s")
        candidates["torch.compile(module())"] = compiled
    width = int(next(p for p in candidates["eager"].parameters()).shape[1])
    print(f"{'runner':<26}{'b=1 fwd':>10}{'b=1 f+b':>10}{'b=50 fwd':>10}{'b=50 f+b':>10}  (µs per call)")
    for name, model in candidates.items():
        cells = []
        for batch in (1, 50):
            x = torch.randn(batch, width)
            for backward in (False, True):
                cells.append(per_call_us(model, x, backward=backward, calls=args.calls))
        print(f"{name:<26}" + "".join(f"{c:>10.1f}" for c in cells))


if __name__ == "__main__":
    main()
