"""Model versions published, broken and removed while a real server serves (`models.reload_interval_s`).

The repository starts with the tiny model at version 3. Version 4 (other
weights) is copied in while the server runs: it becomes the served version, 3
still answers by name, and a decision recorded under 3 is explained with 3. A
broken folder is refused and counted while 4 keeps serving; removing 4 serves
3 again. Every step is seen through the public API and the metrics page.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from desiderata.client import AsyncClient
from tests.integration.conftest import Running, scrape, serving, settings_for
from tests.support.tiny_model import INSTANCE, build_tiny_repo, publish


async def _until(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    for _ in range(200):  # at most 20 s; the repository is rescanned every 0.1 s
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never saw: {what}")


def _metric(running: Running, name: str, **labels: str) -> float | None:
    _, samples = scrape(running)
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture(scope="module")
def version_4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_repo(tmp_path_factory.mktemp("v4"), seed=11) / "tiny"


async def test_versions_follow_the_repository_while_serving(tiny_repo: Path, version_4: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    repo.mkdir()
    publish(tiny_repo / "tiny", repo, "3")
    settings = settings_for(
        repo, tmp_path / "state", models={"reload_interval_s": 0.1}, metrics={"enabled": True, "port": 0}
    )
    async with (
        serving(settings) as running,
        AsyncClient(running.address, api_key="k-eng") as eng,
        AsyncClient(running.address, api_key="k-alice") as alice,
    ):
        (summary,) = (await eng.list_models()).models
        assert (summary.version, list(summary.versions)) == ("3", ["3"])
        decision = await eng.predict("tiny", INSTANCE, subject_id="alice")
        assert decision.model_version == "3"
        before = await eng.explain("tiny", INSTANCE, purpose="debugging")

        publish(version_4, repo, "4")

        async def serves_4() -> bool:
            return (await eng.list_models()).models[0].version == "4"

        await _until("version 4 served", serves_4)
        (summary,) = (await eng.list_models()).models
        assert list(summary.versions) == ["3", "4"]
        now = await eng.explain("tiny", INSTANCE, purpose="debugging")
        assert now.model_version == "4"
        assert now.feature_attribution.output != pytest.approx(before.feature_attribution.output)
        older = await eng.explain("tiny", INSTANCE, purpose="debugging", model_version="3")
        assert older.model_version == "3"
        assert older.feature_attribution.output == pytest.approx(before.feature_attribution.output)
        mine = await alice.explain_decision(decision.decision_id, purpose="transparency")
        assert mine.model_version == "3"  # explained with the model that decided
        assert _metric(running, "desiderata_model_reloads_total", outcome="loaded") == 1
        assert _metric(running, "desiderata_model_served_info", model="tiny", version="4") == 1
        assert _metric(running, "desiderata_model_served_info", model="tiny", version="3") is None
        assert _metric(running, "desiderata_model_versions_loaded", model="tiny") == 2

        broken = publish(version_4, repo, "5")
        (broken / "model.pt2").write_bytes(b"not a program")

        async def refused() -> bool:
            return _metric(running, "desiderata_model_reloads_total", outcome="refused") == 1

        await _until("the broken folder refused", refused)
        assert (await eng.explain("tiny", INSTANCE, purpose="debugging")).model_version == "4"

        shutil.rmtree(repo / "tiny-4")

        async def serves_3() -> bool:
            return (await eng.list_models()).models[0].version == "3"

        await _until("version 3 served again", serves_3)
        assert _metric(running, "desiderata_model_reloads_total", outcome="unloaded") == 1
        assert _metric(running, "desiderata_model_served_info", model="tiny", version="3") == 1


async def test_listing_pages_on_past_a_model_unloaded_between_pages(tiny_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    repo.mkdir()
    for name in ("alpha", "beta", "gamma"):
        publish(tiny_repo / "tiny", repo, "1", folder=name, name=name)
    settings = settings_for(repo, tmp_path / "state", models={"reload_interval_s": 0.1})
    async with serving(settings) as running, AsyncClient(running.address, api_key="k-eng") as eng:
        first = await eng.list_models(page_size=1)
        assert [m.name for m in first.models] == ["alpha"] and first.next_page_token == "alpha"
        shutil.rmtree(repo / "alpha")

        async def alpha_gone() -> bool:
            return [m.name for m in (await eng.list_models()).models] == ["beta", "gamma"]

        await _until("alpha unloaded", alpha_gone)
        second = await eng.list_models(page_size=1, page_token=first.next_page_token)
        assert [m.name for m in second.models] == ["beta"] and second.next_page_token == "beta"
        last = await eng.list_models(page_size=1, page_token=second.next_page_token)
        assert [m.name for m in last.models] == ["gamma"] and last.next_page_token == ""


async def test_a_decision_the_loaded_model_does_not_reproduce_is_flagged(
    tiny_repo: Path, version_4: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "models"
    repo.mkdir()
    folder = publish(tiny_repo / "tiny", repo, "3")
    settings = settings_for(repo, tmp_path / "state", metrics={"enabled": True, "port": 0})
    counted = ("desiderata_decisions_not_reproduced_total", (("model", "tiny"), ("version", "3")))
    async with serving(settings) as running, AsyncClient(running.address, api_key="k-eng") as eng:
        decision = await eng.predict("tiny", INSTANCE, subject_id="alice")
        same = await eng.explain_decision(decision.decision_id, purpose="debugging")
        assert not [w for w in same.quality.warnings if "reproduce" in w]
        assert counted not in scrape(running)[1]
    # Between restarts, version 3's files are replaced by other weights under the same version.
    shutil.copyfile(version_4 / "model.pt2", folder / "model.pt2")
    async with serving(settings) as running, AsyncClient(running.address, api_key="k-alice") as alice:
        mine = await alice.explain_decision(decision.decision_id, purpose="transparency")
        assert mine.model_version == "3" and mine.recorded_decision_id == decision.decision_id
        (warning,) = [w for w in mine.quality.warnings if "does not reproduce this decision" in w]
        assert "tiny/3" in warning
        await alice.explain_decision(decision.decision_id, purpose="transparency")
        assert scrape(running)[1][counted] == 2  # once per request, for the model and version that decided
