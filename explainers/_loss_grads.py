"""Per-sample loss gradients, Hessians and Hessian-vector products of a served
module, as functions of a flat vector over a chosen parameter subset.

Sample-importance methods (influence functions, TracIn) all need the gradient
of the training loss of single examples with respect to (some of) the model's
parameters. The served module maps float32 encoded rows to class
PROBABILITIES, so the loss is the cross-entropy ``−log p[y]``. The code is
written against any ``nn.Module`` with named parameters, through
``torch.func.functional_call``: it works on eager modules and on the
``GraphModule`` that ``torch.export.load(...).module()`` returns. Per-sample
gradients use ``vmap(grad(...))``; the label enters through ``gather`` (a
vmapped tensor cannot index).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.func import functional_call, grad, jacrev, vmap

from desiderata.server.errors import InvalidArgument

__all__ = ["SUBSETS", "LossGrad", "hessian_chunk_rows", "representation", "select_subset"]

SUBSETS = ("last_layer", "all")
LOG_FLOOR = 1e-30
"""Probabilities are floored before the log so a saturated output stays finite."""


def select_subset(names: list[str], subset: str) -> list[str]:
    """Parameter names of a subset, in module order.

    Args:
        names: the module's parameter names in `named_parameters()` order.
        subset: "all", or "last_layer": every parameter whose owning module
            (the name without its last dotted component) is the owner of the
            final parameter, e.g. ``["2.weight", "2.bias"]``.
    """
    if not names:
        raise InvalidArgument.single("params.parameter_subset", "the model has no parameters")
    if subset == "all":
        return list(names)
    if subset != "last_layer":
        raise InvalidArgument.single("params.parameter_subset", f"must be one of {list(SUBSETS)}")
    owner = names[-1].rpartition(".")[0]
    return [n for n in names if n.rpartition(".")[0] == owner]


class LossGrad:
    """The mean cross-entropy of a probability-output module over a flat subset θ.

    Args:
        module: maps ``(n, n_columns)`` rows to ``(n, n_classes)`` probabilities.
        subset: "last_layer" or "all" (see `select_subset`).
        dtype: floating type of every computation (float64 for precise solves).
        overrides: parameter values replacing the module's (e.g. a checkpoint).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        subset: str = "last_layer",
        dtype: torch.dtype = torch.float64,
        overrides: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.module = module
        self.dtype = dtype
        named = {k: v.detach() for k, v in module.named_parameters()}
        if overrides:
            unknown = sorted(set(overrides) - set(named))
            if unknown:
                raise ValueError(f"checkpoint names parameters the module lacks: {unknown}")
            named.update({k: v.detach() for k, v in overrides.items()})
        self.names = select_subset(list(named), subset)
        state: dict[str, torch.Tensor] = {k: v.to(dtype) for k, v in named.items()}
        for k, b in module.named_buffers():
            state[k] = b.to(dtype) if b.is_floating_point() else b
        self._fixed = {k: v for k, v in state.items() if k not in self.names}
        self.shapes = [state[n].shape for n in self.names]
        self.numels = [state[n].numel() for n in self.names]
        self.theta = torch.cat([state[n].reshape(-1) for n in self.names])
        """The flat parameter subset at the module's values, shape ``(p,)``."""
        self._copy: tuple[torch.nn.Module, list[torch.Tensor]] | None = None
        self._copy_lock = threading.Lock()

    @property
    def p(self) -> int:
        """Number of parameters in the subset."""
        return int(self.theta.numel())

    def _params(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        out = dict(self._fixed)
        for name, chunk, shape in zip(self.names, torch.split(theta, self.numels), self.shapes, strict=True):
            out[name] = chunk.reshape(shape)
        return out

    def _as_tensors(
        self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.as_tensor(x, dtype=self.dtype), torch.as_tensor(y, dtype=torch.long)

    def _loss_one(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        probs = functional_call(self.module, self._params(theta), (x.unsqueeze(0),))
        return -torch.log(probs[0].gather(0, y.reshape(1)).clamp_min(LOG_FLOOR)).sum()

    def _loss_sum(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        probs = functional_call(self.module, self._params(theta), (x,))
        return -torch.log(probs.gather(1, y.reshape(-1, 1)).clamp_min(LOG_FLOOR)).sum()

    def losses(self, x: np.ndarray, y: np.ndarray, theta: torch.Tensor | None = None) -> np.ndarray:
        """Per-row losses ``−log p[y]``, ``(n, n_columns), (n,)`` → ``(n,)``."""
        xt, yt = self._as_tensors(x, y)
        with torch.no_grad():
            probs = functional_call(self.module, self._params(self.theta if theta is None else theta), (xt,))
            return (-torch.log(probs.gather(1, yt.reshape(-1, 1)).clamp_min(LOG_FLOOR))).reshape(-1).numpy()

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities at the (possibly overridden) parameters, ``(n, n_columns)`` → ``(n, k)``."""
        with torch.no_grad():
            xt = torch.as_tensor(x, dtype=self.dtype)
            probs = functional_call(self.module, self._params(self.theta), (xt,))
            return np.asarray(probs.double().numpy(), dtype=np.float64)

    def grads(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Per-sample loss gradients, ``(n, n_columns), (n,)`` → ``(n, p)``."""
        xt, yt = self._as_tensors(x, y)
        if xt.ndim != 2 or yt.shape != (xt.shape[0],):
            raise ValueError(f"expected rows (n, d) and labels (n,), got {tuple(xt.shape)}, {tuple(yt.shape)}")
        if xt.shape[0] == 1:
            return self._one_row(xt, yt)
        out: torch.Tensor = vmap(grad(self._loss_one), in_dims=(None, 0, 0))(self.theta, xt, yt)
        return out

    def _one_row(self, xt: torch.Tensor, yt: torch.Tensor) -> torch.Tensor:
        """The gradient of one row (a served query), ``(1, p)``: the same numbers as the vmapped path.

        A row's gradient is that of the summed loss, so plain autograd does:
        over a private copy of the module at this object's dtype and values,
        with the subset's parameters as leaves, which skips both vmap's set-up
        and ``functional_call``'s per-call re-parametrisation (7 ms → under
        1 ms on the demo MLP). A module that cannot be copied uses
        ``functional_call``.
        """
        with torch.enable_grad():  # like torch.func.grad, also inside a caller's no_grad block
            copied = self._module_copy()
            if copied is None:
                theta = self.theta.clone().requires_grad_(True)
                (one,) = torch.autograd.grad(self._loss_sum(theta, xt, yt), theta)
                return one.unsqueeze(0)
            module, leaves = copied
            probs = module(xt)
            loss = -torch.log(probs.gather(1, yt.reshape(-1, 1)).clamp_min(LOG_FLOOR)).sum()
            parts = torch.autograd.grad(loss, leaves)
        return torch.cat([g.reshape(-1) for g in parts]).unsqueeze(0)

    def _module_copy(self) -> tuple[torch.nn.Module, list[torch.Tensor]] | None:
        with self._copy_lock:
            if self._copy is None:
                try:
                    module = copy.deepcopy(self.module)
                except Exception:
                    return None
                values = self._params(self.theta)
                module.requires_grad_(False)
                with torch.no_grad():
                    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
                        if name in values:
                            tensor.data = values[name].clone()
                named = dict(module.named_parameters())
                self._copy = (module, [named[n].requires_grad_(True) for n in self.names])
            return self._copy

    def iter_grads(self, x: np.ndarray, y: np.ndarray, chunk: int = 1024) -> Iterator[tuple[int, torch.Tensor]]:
        """Per-sample gradients ``(≤chunk, p)`` of successive row chunks, with their start row."""
        for start in range(0, len(x), chunk):
            yield start, self.grads(x[start : start + chunk], y[start : start + chunk])

    def hessian(
        self, x: np.ndarray, y: np.ndarray, chunk: int = 0, on_chunk: Callable[[int], None] | None = None
    ) -> torch.Tensor:
        """Exact Hessian of the MEAN loss over the rows, ``(p, p)``.

        Args:
            x, y: rows ``(n, n_columns)`` and labels ``(n,)``.
            chunk: rows per reverse-over-reverse pass; 0 sizes it from p (`hessian_chunk_rows`).
            on_chunk: called with the rows done after every pass (progress, cancellation).
        """
        chunk = chunk or hessian_chunk_rows(self.p)
        total = torch.zeros(self.p, self.p, dtype=self.dtype)
        for start in range(0, len(x), chunk):
            xt, yt = self._as_tensors(x[start : start + chunk], y[start : start + chunk])
            total += jacrev(jacrev(self._loss_sum))(self.theta, xt, yt)
            if on_chunk is not None:
                on_chunk(min(start + chunk, len(x)))
        return total / len(x)

    def hvp(self, v: torch.Tensor, x: np.ndarray, y: np.ndarray, chunk: int = 2048) -> torch.Tensor:
        """Hessian of the MEAN loss over the rows times ``v`` (reverse-over-reverse), ``(p,)``.

        Reverse-over-reverse rather than forward mode: torch's forward-mode
        decompositions still go through the deprecated ``torch.jit.script``.
        """
        out = torch.zeros(self.p, dtype=self.dtype)
        for start in range(0, len(x), chunk):
            xt, yt = self._as_tensors(x[start : start + chunk], y[start : start + chunk])
            out += grad(lambda t, a=xt, b=yt: grad(self._loss_sum)(t, a, b) @ v)(self.theta)
        return out / len(x)


def hessian_chunk_rows(p: int) -> int:
    """Rows per exact-Hessian pass for p parameters: about 2^17 row-parameters, 16–2,048 rows.

    The pass holds p gradients of every row's intermediates, so large chunks stop
    fitting in cache: for the demo's 1,954 parameters, 1,024 rows took 13.5 s in
    chunks of 2,048, 7.7 s in chunks of 512 and 4.8–5.9 s in chunks of 32–64.
    """
    return max(16, min(2048, (1 << 17) // max(p, 1)))


def representation(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """The input of the module's last layer (its penultimate representation).

    Works on eager modules (a forward pre-hook on the layer owning the final
    parameters) and on exported ``GraphModule``s (the first argument of the
    graph node consuming the final weight). Falls back to the encoded rows
    when neither is found.

    Args:
        module: the served module.
        x: encoded rows, ``(n, n_columns)``.

    Returns:
        ``(n, h)`` float64 representations.
    """
    names = [n for n, _ in module.named_parameters()]
    first = next(iter(module.parameters()), None)
    xt = torch.as_tensor(x, dtype=torch.float32 if first is None else first.dtype)
    if not names:
        return np.asarray(x, dtype=np.float64)
    owner, _, _ = names[-1].rpartition(".")
    captured: list[torch.Tensor] = []
    if isinstance(module, torch.fx.GraphModule):
        target_names = {n for n in names if n.rpartition(".")[0] == owner}
        consumer = None
        for node in module.graph.nodes:
            if node.op == "call_function" and any(
                getattr(a, "op", "") == "get_attr" and a.target in target_names for a in node.args
            ):
                consumer = node
                break
        if consumer is not None and isinstance(consumer.args[0], torch.fx.Node):
            wanted = consumer.args[0]

            class _Capture(torch.fx.Interpreter):
                def run_node(self, n: torch.fx.Node) -> object:
                    value = super().run_node(n)
                    if n is wanted and isinstance(value, torch.Tensor):
                        captured.append(value)
                    return value

            with torch.no_grad():
                _Capture(module).run(xt)
    else:
        layer = module.get_submodule(owner) if owner else module
        if layer is not module:
            handle = layer.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
            try:
                with torch.no_grad():
                    module(xt)
            finally:
                handle.remove()
    if captured and captured[0].ndim == 2 and captured[0].shape[0] == len(x):
        return captured[0].detach().double().numpy()
    return np.asarray(x, dtype=np.float64)
