"""Fixtures of the server unit tests."""

from __future__ import annotations

import numpy as np
import pytest

import desiderata.server.global_views as views_module


@pytest.fixture
def explained(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows explained by each call of `local_attributions` the row cache makes."""
    calls: list[int] = []
    real = views_module.local_attributions

    def counting(*args: object, **kw: object) -> np.ndarray:
        out = real(*args, **kw)  # type: ignore[arg-type]
        calls.append(len(out))
        return out

    monkeypatch.setattr(views_module, "local_attributions", counting)
    return calls
