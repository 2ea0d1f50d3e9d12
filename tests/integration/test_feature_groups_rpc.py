"""A model card that declares a feature group, served for real: GetModel lists the group,
every attribution method answers with one attribution for it (named and labelled as the
card says, never its members), exact Shapley equals the brute force over the group,
a tier that redacts a protected member withholds the group, and feedback may name it."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from math import factorial
from pathlib import Path

import numpy as np
import pytest

from desiderata.client import AsyncClient
from desiderata.client._requests import Requests
from desiderata.explainers.background import summarize
from tests.integration.conftest import KEYS, Running, serving, settings_for
from tests.support.tiny_model import INSTANCE, build_tiny_repo

GROUP = {"name": "profile", "display_name": "Age and colour", "features": ["x2", "color"]}
PLAYERS = {"x1", "profile", "flag"}
# tiny's encoding: x1, x2, color (3 one-hot columns), flag.
COLUMNS = {"x1": [0], "profile": [1, 2, 3, 4], "flag": [5]}


@pytest.fixture
async def grouped(tmp_path: Path) -> AsyncIterator[Running]:
    repo = build_tiny_repo(tmp_path / "models", card_overrides={"feature_groups": [GROUP]})
    officer = {"principal": "ann", "role": "domain_expert", "key": "k-ann", "attributes": {"domain": "test"}}
    settings = settings_for(repo, tmp_path / "state", auth={"api_keys": [*KEYS, officer]})
    async with serving(settings) as running:
        yield running


def _brute_force(running: Running, x: np.ndarray) -> dict[str, float]:
    """Exact Shapley over `COLUMNS` with the server's background, one loop per coalition."""
    handle = running.app.pipeline.models.resolve("tiny")
    bg = summarize(handle, running.app.pipeline.settings.background_size)
    names = list(COLUMNS)

    def v(coalition: tuple[str, ...]) -> float:
        rows = bg.x.copy()
        for name in coalition:
            rows[:, COLUMNS[name]] = x[COLUMNS[name]]
        return float(bg.weights @ handle.predict_proba(rows)[:, 1])

    d = len(names)
    phi = {}
    for name in names:
        others = [n for n in names if n != name]
        phi[name] = sum(
            factorial(k) * factorial(d - k - 1) / factorial(d) * (v((*s, name)) - v(s))
            for k in range(d)
            for s in itertools.combinations(others, k)
        )
    return phi


async def test_every_method_attributes_to_the_group(grouped: Running) -> None:
    async with AsyncClient(grouped.address, api_key="k-eng") as client:
        card = await client.get_model("tiny")
        assert [(g.name, g.display_name, list(g.features)) for g in card.feature_groups] == [
            ("profile", "Age and colour", ["x2", "color"])
        ]
        for method in ("exact_shapley", "permutation_shapley", "kernel_shap", "integrated_gradients", "lime"):
            params = Requests.attribution_params(method=method, target_class="yes")
            ex = await client.explain("tiny", INSTANCE, purpose="debugging", params=params)
            got = {a.feature: a for a in ex.feature_attribution.attributions}
            assert set(got) == PLAYERS, method
            assert got["profile"].display_name == "Age and colour"
            if method == "exact_shapley":
                x = grouped.app.pipeline.models.resolve("tiny").schema.encode(INSTANCE)
                want = _brute_force(grouped, x)
                for name, a in got.items():
                    assert a.value == pytest.approx(want[name], abs=1e-6), name
        # Feedback may name the group, as the explanation did.
        fb = await client.submit_feedback(
            "tiny", ex.disclosure.decision_id, purpose="debugging", verdict="disagree", should_not_matter=["profile"]
        )
        assert fb.decision_id


async def test_a_tier_that_redacts_a_protected_member_withholds_the_group(grouped: Running) -> None:
    async with AsyncClient(grouped.address, api_key="k-ann") as officer:
        ex = await officer.explain("tiny", INSTANCE, purpose="transparency")
    shown = {a.feature for a in ex.feature_attribution.attributions}
    assert ex.disclosure.tier == "feature_attribution/summary"
    assert "profile" not in shown and shown <= PLAYERS and shown
    assert "profile" in ex.disclosure.redacted_features
    assert not any("Age and colour" in sentence for sentence in ex.narrative)
