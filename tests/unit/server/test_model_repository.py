"""The model repository rescanned while serving: which version is served, and every refusal rule.

Folders are copies of the tiny test model with their card's version rewritten;
`rescan` calls `refresh` twice, as a new folder is loaded only once a scan
finds it unchanged.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from desiderata.server.errors import ModelNotFound
from desiderata.server.model_folders import folder_signature, version_key
from desiderata.server.model_repository import ModelRepository, RepositoryChange
from tests.support.tiny_model import build_tiny_repo, edit_card, publish


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with other weights (a different program), as a folder."""
    return build_tiny_repo(tmp_path_factory.mktemp("other"), seed=11) / "tiny"


def rescan(repo: ModelRepository) -> RepositoryChange:
    first = repo.refresh()
    assert not first.loaded, "a changed folder was loaded before a scan found it unchanged"
    return repo.refresh()


@pytest.fixture
def tiny_source(tiny_repo: Path) -> Path:
    return tiny_repo / "tiny"


def test_version_order_is_numeric() -> None:
    given = ["1.10", "10", "1.9", "2", "01", "1", "1.0.0-rc1", "2024-06-01"]
    assert sorted(given, key=version_key) == ["01", "1", "1.0.0-rc1", "1.9", "1.10", "2", "10", "2024-06-01"]


def test_the_highest_version_is_served_whatever_the_folder_order(tiny_source: Path, tmp_path: Path) -> None:
    publish(tiny_source, tmp_path, "10", folder="a")
    publish(tiny_source, tmp_path, "9", folder="b")  # the last folder: what used to be served
    repo = ModelRepository(tmp_path)
    assert repo.resolve("tiny").version == "10"
    assert repo.versions("tiny") == ["9", "10"]
    assert repo.resolve("tiny", "9").version == "9"


def test_a_new_version_is_served_once_its_folder_stops_changing(tiny_source: Path, tmp_path: Path) -> None:
    publish(tiny_source, tmp_path, "3")
    repo = ModelRepository(tmp_path)
    old = repo.resolve("tiny")
    publish(tiny_source, tmp_path, "4")
    change = rescan(repo)
    assert [f"{h.name}/{h.version}" for h in change.loaded] == ["tiny/4"]
    assert not change.unloaded and not change.refused
    assert repo.resolve("tiny").version == "4"
    assert repo.resolve("tiny", "3") is old  # the older version still answers, the same loaded copy
    assert not repo.refresh(), "an unchanged repository changed something"


def test_a_removed_version_is_unloaded_and_its_holders_finish(tiny_source: Path, tmp_path: Path) -> None:
    publish(tiny_source, tmp_path, "3")
    folder = publish(tiny_source, tmp_path, "4")
    repo = ModelRepository(tmp_path)
    held = repo.resolve("tiny")
    shutil.rmtree(folder)
    change = repo.refresh()  # removals need no quiet scan
    assert change.unloaded == ("tiny/4",)
    assert repo.resolve("tiny").version == "3"
    with pytest.raises(ModelNotFound, match="no version '4'"):
        repo.resolve("tiny", "4")
    assert held.predict_proba(np.zeros((1, held.schema.n_columns))).shape == (1, 2)


def test_a_version_changed_in_place_is_refused_and_keeps_serving(tiny_source: Path, tmp_path: Path) -> None:
    folder = publish(tiny_source, tmp_path, "3")
    original = (folder / "card.yaml").read_bytes()
    repo = ModelRepository(tmp_path)
    served = repo.resolve("tiny")
    edit_card(folder, description="retrained without a new version")
    change = rescan(repo)
    assert len(change.refused) == 1 and "immutable" in change.refused[0][1]
    assert repo.resolve("tiny") is served
    assert not repo.refresh(), "a refused folder was tried again before its files changed"
    (folder / "card.yaml").write_bytes(original)  # the same bytes back: accepted without a reload
    assert not rescan(repo)
    assert repo.resolve("tiny") is served


def test_a_folder_may_move_to_a_new_version(tiny_source: Path, tmp_path: Path) -> None:
    folder = publish(tiny_source, tmp_path, "3", folder="tiny")
    repo = ModelRepository(tmp_path)
    edit_card(folder, version="4")  # one folder per model, updated to the next version
    change = rescan(repo)
    assert [h.version for h in change.loaded] == ["4"] and change.unloaded == ("tiny/3",)
    assert repo.versions("tiny") == ["4"]


def test_a_version_back_with_other_bytes_is_refused(tiny_source: Path, other_weights: Path, tmp_path: Path) -> None:
    publish(tiny_source, tmp_path, "3")
    folder = publish(tiny_source, tmp_path, "4")
    repo = ModelRepository(tmp_path)
    first = repo.resolve("tiny", "4")
    x = np.full((1, first.schema.n_columns), 0.5)
    shutil.rmtree(folder)
    repo.refresh()
    publish(other_weights, tmp_path, "4")
    change = rescan(repo)
    assert "served with other files" in change.refused[0][1]
    assert repo.resolve("tiny").version == "3"
    shutil.rmtree(folder)
    publish(tiny_source, tmp_path, "4")  # the bytes it was served with: welcome back
    change = rescan(repo)
    assert [h.version for h in change.loaded] == ["4"]
    np.testing.assert_array_equal(repo.resolve("tiny").predict_proba(x), first.predict_proba(x))


def test_a_broken_folder_is_refused_until_it_is_fixed(tiny_source: Path, tmp_path: Path) -> None:
    publish(tiny_source, tmp_path, "3")
    repo = ModelRepository(tmp_path)
    broken = publish(tiny_source, tmp_path, "4")
    (broken / "model.pt2").write_bytes(b"not a program")
    change = rescan(repo)
    assert len(change.refused) == 1 and "model.pt2" in change.refused[0][1]
    assert repo.versions("tiny") == ["3"]
    shutil.copyfile(tiny_source / "model.pt2", broken / "model.pt2")
    assert [h.version for h in rescan(repo).loaded] == ["4"]


def test_two_folders_of_one_version(tiny_source: Path, tmp_path: Path) -> None:
    publish(tiny_source, tmp_path, "3", folder="a")
    publish(tiny_source, tmp_path, "3", folder="b")
    with pytest.raises(ValueError, match="already served from"):
        ModelRepository(tmp_path)
    repo = ModelRepository(tmp_path, skip_broken=True)
    assert repo.resolve("tiny").directory.name == "a"
    publish(tiny_source, tmp_path, "3", folder="c")
    refused = rescan(repo).refused  # b was refused at start-up and is not tried again
    assert [Path(f).name for f, _ in refused] == ["c"] and "already served from" in refused[0][1]


def test_a_scan_that_would_leave_nothing_changes_nothing(tiny_source: Path, tmp_path: Path) -> None:
    folder = publish(tiny_source, tmp_path, "3")
    repo = ModelRepository(tmp_path)
    shutil.rmtree(folder)
    assert not repo.refresh()
    assert repo.resolve("tiny").version == "3"


def test_hidden_files_are_not_part_of_a_version(tiny_source: Path, tmp_path: Path) -> None:
    folder = publish(tiny_source, tmp_path, "3")
    before = folder_signature(folder)
    (folder / ".influence").mkdir(exist_ok=True)
    (folder / ".influence" / "index.npz").write_bytes(b"written by the server")
    (folder / ".card.yaml.swp").write_bytes(b"an editor's")
    assert folder_signature(folder) == before


def test_readers_never_see_a_half_swapped_repository(tiny_source: Path, tmp_path: Path) -> None:
    publish(tiny_source, tmp_path, "3")
    repo = ModelRepository(tmp_path)
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                assert repo.resolve("tiny").version in {"3", "4"}
                assert [h.version for h in repo.served()] in (["3"], ["4"])
            except BaseException as exc:  # reported below, on the test thread
                errors.append(exc)
                return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(3):
            folder = publish(tiny_source, tmp_path, "4")
            assert rescan(repo).loaded
            shutil.rmtree(folder)
            assert repo.refresh().unloaded
    finally:
        done.set()
        reader.join()
    assert not errors, errors


def test_a_closed_repository_stops_rescanning(tiny_source: Path, tmp_path: Path) -> None:
    publish(tiny_source, tmp_path, "3")
    repo = ModelRepository(tmp_path)
    repo.close()
    publish(tiny_source, tmp_path, "4")
    assert not repo.refresh() and not repo.refresh()
    assert repo.versions("tiny") == ["3"]


def test_model_check_says_which_version_is_served_and_refuses_twins(
    tiny_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from desiderata.server.cli import main

    publish(tiny_source, tmp_path, "10")
    publish(tiny_source, tmp_path, "9")
    assert main(["model", "check", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["OK", "OK", "serves"]
    assert out[-1] == "serves tiny 10 (loaded: 9, 10)"
    publish(tiny_source, tmp_path, "9", folder="tiny-9-copy")
    assert main(["model", "check", str(tmp_path)]) == 1
    assert "tiny 9 is already in" in capsys.readouterr().out
