"""The demo model's network and its deterministic fit (Adam, or DP-SGD via Opacus).

Kept apart from `desiderata.server.training` (which handles data, files and
the card) so the network and the optimisation loop can be read and tested on
their own. The network is ``standardise → 32 → ReLU → 32 → ReLU → classes``;
the standardisation is a fixed first layer (means and standard deviations of
the training rows held as buffers), so the exported program takes the raw
encoded row and explanations are expressed in the caller's units. The
exported module returns softmax probabilities; training uses the logits.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "CreditNet",
    "FitResult",
    "Probabilities",
    "Standardize",
    "deterministic_torch",
    "fit_mlp",
    "roc_auc",
]

_Loader = DataLoader[tuple[torch.Tensor, ...]]

_BATCH = 64
_LR = 1e-3
_DP_LR = 5e-3
_DP_MAX_GRAD_NORM = 1.0


class Standardize(nn.Module):
    """Fixed ``(x - mean) / std`` with the statistics as buffers (never trained).

    Args:
        mean: per-column mean of the training rows.
        std: per-column standard deviation; zeros are replaced by one.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("std", torch.where(std > 0, std, torch.ones_like(std)).detach().clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class CreditNet(nn.Module):
    """The MLP producing class logits from an encoded row.

    Args:
        mean: per-column mean of the training rows (standardisation).
        std: per-column standard deviation of the training rows.
        n_classes: number of output classes.
        hidden: width of both hidden layers.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, n_classes: int = 2, hidden: int = 32) -> None:
        super().__init__()
        n_columns = int(mean.shape[0])
        self.standardize = Standardize(mean, std)
        self.body = nn.Sequential(
            nn.Linear(n_columns, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(self.standardize(x))
        return out


class Probabilities(nn.Module):
    """Softmax over a logit module: what the served artifact computes.

    Args:
        net: module mapping rows to logits.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=-1)


@dataclass(frozen=True)
class FitResult:
    """A fitted probability module.

    Args:
        module: plain (unwrapped) eager module in eval mode returning probabilities.
        epsilon: privacy loss spent (DP training only).
        seconds: wall time of the optimisation loop.
    """

    module: Probabilities
    epsilon: float | None
    seconds: float


@contextmanager
def deterministic_torch() -> Iterator[None]:
    """One thread and deterministic algorithms for the block; restores the caller's settings."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det)
        torch.set_num_threads(threads)


def fit_mlp(
    x: np.ndarray,
    y: np.ndarray,
    *,
    seed: int,
    epochs: int,
    dp_epsilon: float | None = None,
    dp_delta: float | None = None,
) -> FitResult:
    """Fits the MLP on encoded rows; deterministic for a given seed on one machine.

    Args:
        x: encoded training rows, ``(n, n_columns)``.
        y: class index per row, ``(n,)``.
        seed: seeds initialisation, batch order and DP noise.
        epochs: passes over the rows.
        dp_epsilon: target ε; when set, trains with DP-SGD through Opacus.
        dp_delta: δ of DP training (required with `dp_epsilon`).
    """
    if epochs < 1:
        raise ValueError("epochs must be at least 1")
    if dp_epsilon is not None and dp_delta is None:
        raise ValueError("DP training needs a delta")
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.int64)
    n_classes = int(yt.max().item()) + 1
    with deterministic_torch():
        torch.manual_seed(seed)
        net = CreditNet(xt.mean(dim=0), xt.std(dim=0), n_classes=n_classes)
        generator = torch.Generator().manual_seed(seed)
        loader = DataLoader(TensorDataset(xt, yt), batch_size=_BATCH, shuffle=True, generator=generator)
        started = time.perf_counter()
        epsilon: float | None = None
        if dp_epsilon is not None and dp_delta is not None:
            epsilon = _train_dp(net, loader, epochs, dp_epsilon, dp_delta, seed)
            # A fresh module with the trained weights: nothing of Opacus (hooks,
            # per-sample gradient attributes) reaches the exported program.
            plain = CreditNet(net.standardize.mean, net.standardize.std, n_classes=n_classes)
            plain.load_state_dict(net.state_dict())
            net = plain
        else:
            _train(net, torch.optim.Adam(net.parameters(), lr=_LR), loader, epochs)
        seconds = time.perf_counter() - started
    return FitResult(Probabilities(net).eval(), epsilon, seconds)


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, loader: _Loader, epochs: int) -> None:
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        for xb, yb in loader:
            if len(xb) == 0:  # Poisson sampling may draw an empty batch
                continue
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(xb), yb).backward()
            optimizer.step()


def _train_dp(net: CreditNet, loader: _Loader, epochs: int, epsilon: float, delta: float, seed: int) -> float:
    """DP-SGD on `net` in place (its parameters are the wrapped module's); returns ε spent."""
    from opacus import PrivacyEngine  # heavy import, only for DP runs

    optimizer = torch.optim.Adam(net.parameters(), lr=_DP_LR)
    with warnings.catch_warnings():
        # Opacus warns that its RNG is not cryptographically secure: true, and
        # intended here (seeded, reproducible); secure_mode is for production DP.
        warnings.filterwarnings("ignore", message=r".*[Ss]ecure RNG turned off.*")
        # The RDP accountant warns when the best Rényi order is its largest one:
        # the ε it reports is then a valid but looser upper bound, which is safe.
        warnings.filterwarnings("ignore", message=r"Optimal order is the largest alpha.*")
        # Opacus' per-sample-gradient hooks on the first layer fire with the
        # gradient of its output only (the data needs no gradient): what it needs.
        warnings.filterwarnings("ignore", message=r"Full backward hook is firing.*")
        engine = PrivacyEngine(accountant="rdp")
        private, dp_optimizer, dp_loader = engine.make_private_with_epsilon(
            module=net,
            optimizer=optimizer,
            data_loader=loader,
            target_epsilon=epsilon,
            target_delta=delta,
            epochs=epochs,
            max_grad_norm=_DP_MAX_GRAD_NORM,
            noise_generator=torch.Generator().manual_seed(seed + 1),
        )
        _train(private, dp_optimizer, dp_loader, epochs)
        spent = float(engine.get_epsilon(delta))
    private.remove_hooks()
    return spent


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the Mann–Whitney statistic with midranks for ties.

    Args:
        y: binary labels (1 = positive).
        score: score per row, larger meaning more likely positive.
    """
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = score[order]
    i = 0
    while i < len(score):
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both classes")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
