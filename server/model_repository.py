"""The model repository: a folder of model versions, loaded at start-up and rescanned while serving.

Each sub-folder is one model version (`desiderata.server.model_handle`): a
``card.yaml`` naming the model and its version, and the artifact it names. At
start-up every folder is loaded, and a broken one stops the boot with a clear
message (or is skipped, logged, with ``models.skip_broken``). A model's
*served* version, the one a request without ``model_version`` gets, is its
highest version in `version_key` order ("2" before "10"); the other loaded
versions answer when asked by name, as when an older decision is explained.

`refresh` rescans the folder while requests are served (``models.reload_interval_s``,
`desiderata.server.model_watch`), the way Triton's poll mode does:

- a new folder is loaded once its files stayed unchanged between two scans, so
  a copy in progress is not read half-written (copying elsewhere and renaming
  into the repository is still the safe way to publish);
- a removed folder's version is unloaded; requests that hold it finish with it;
- **versions are immutable**. A folder whose files change while its card keeps
  the same name and version is refused and the loaded copy keeps serving; so
  is a version that comes back with other bytes than it was served with
  before. Every cache keyed by (model, version) — backgrounds, answers, global
  views, sample-importance indexes — therefore stays right without a purge, and
  a recorded decision is explained with the model that made it;
- a folder that fails to load is logged and refused, never replaces what is
  served, and is tried again only once its files change;
- a scan that would leave no model at all (an unmounted volume) changes nothing.

The served set is swapped as one snapshot: a request sees the old set or the
new one, never a mixture.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from desiderata.explainers.torch_threads import adopt_torch_threads
from desiderata.server.chunk_runner import SEQUENTIAL, ChunkRunner
from desiderata.server.errors import ModelNotFound
from desiderata.server.model_folders import Signature, folder_digest, folder_signature, model_folders, version_key
from desiderata.server.model_handle import ModelHandle, load_model

__all__ = ["BUILTIN_DEMO", "ModelRepository", "RepositoryChange"]

BUILTIN_DEMO = Path(__file__).resolve().parent / "demo"
"""The embedded demo repository (a credit-risk classifier)."""

log = structlog.get_logger("desiderata.models")


@dataclass(frozen=True)
class RepositoryChange:
    """What one `ModelRepository.refresh` changed.

    Attributes:
        loaded: the versions loaded, already served.
        unloaded: ``name/version`` of the versions dropped.
        refused: ``(folder, reason)`` of the folders not loaded.
    """

    loaded: tuple[ModelHandle, ...] = ()
    unloaded: tuple[str, ...] = ()
    refused: tuple[tuple[str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.loaded or self.unloaded or self.refused)


@dataclass(frozen=True)
class _Folder:
    handle: ModelHandle
    signature: Signature
    digest: str

    @property
    def key(self) -> tuple[str, str]:
        return self.handle.name, self.handle.version


@dataclass(frozen=True)
class _Snapshot:
    models: dict[str, dict[str, ModelHandle]]
    served: dict[str, str]

    @staticmethod
    def of(folders: Iterable[_Folder]) -> _Snapshot:
        models: dict[str, dict[str, ModelHandle]] = {}
        for f in folders:
            models.setdefault(f.handle.name, {})[f.handle.version] = f.handle
        return _Snapshot(models, {name: max(v, key=version_key) for name, v in models.items()})


class ModelRepository:
    """The served models, by name and version.

    Args:
        path: the repository folder (one sub-folder per model version).
        skip_broken: at start-up, log and skip models that fail to load instead of raising.
        runner: where every model evaluates the chunks of its large batches.
        fuse_rows: `ModelHandle.fuse_rows` of every model.
        prepare: called with each loaded handle before any request can see it
            (the server sets where its sample-importance indexes persist).

    Raises:
        ValueError: the folder is missing, holds no loadable model, or (without
            `skip_broken`) a model fails to load or two folders hold the same version.
    """

    def __init__(
        self,
        path: Path,
        *,
        skip_broken: bool = False,
        runner: ChunkRunner = SEQUENTIAL,
        fuse_rows: int = 0,
        prepare: Callable[[ModelHandle], None] | None = None,
    ) -> None:
        if not path.is_dir():
            raise ValueError(f"model repository {path} is not a folder")
        self.path = path
        self.runner = runner
        self.fuse_rows = fuse_rows
        self._prepare = prepare
        self._folders: dict[Path, _Folder] = {}
        self._digests: dict[tuple[str, str], str] = {}  # every version served in this process: its files' digest
        self._waiting: dict[Path, Signature] = {}  # changed folders, until a scan finds them unchanged
        self._refused: dict[Path, Signature] = {}  # folders refused with these files, until they change
        self._lock = threading.Lock()
        self._closed = False
        for directory in model_folders(path):
            signature = folder_signature(directory)
            try:
                entry = self._admit(directory, signature, self._folders, None)
            except ValueError as exc:
                if not skip_broken:
                    raise
                self._refused[directory] = signature
                log.error("model_skipped", folder=str(directory), error=str(exc))
                continue
            self._folders[directory] = entry
            self._digests[entry.key] = entry.digest
            log.info("model_loaded", model=entry.handle.name, version=entry.handle.version)
        if not self._folders:
            raise ValueError(f"model repository {path} holds no loadable model")
        self._state = _Snapshot.of(self._folders.values())

    def resolve(self, name: str, version: str = "") -> ModelHandle:
        """The model `name` at `version` (empty: the served version); NOT_FOUND otherwise."""
        state = self._state
        versions = state.models.get(name)
        if versions is None:
            raise ModelNotFound(f"no model named {name!r}")
        if not version:
            return versions[state.served[name]]
        if version not in versions:
            raise ModelNotFound(f"model {name!r} has no version {version!r}")
        return versions[version]

    def versions(self, name: str) -> list[str]:
        """Every loaded version of `name`, in `version_key` order (NOT_FOUND when unknown)."""
        versions = self._state.models.get(name)
        if versions is None:
            raise ModelNotFound(f"no model named {name!r}")
        return sorted(versions, key=version_key)

    def handles(self) -> list[ModelHandle]:
        """Every loaded version of every model."""
        return [h for versions in self._state.models.values() for h in versions.values()]

    def served(self) -> list[ModelHandle]:
        """The served version of each model, by name."""
        state = self._state
        return [state.models[n][state.served[n]] for n in sorted(state.models)]

    def catalog(self) -> list[tuple[ModelHandle, list[str]]]:
        """Each model's served version with all its loaded versions (`version_key` order), by name,
        read from one snapshot (a rescan between two separate reads could drop a model)."""
        state = self._state
        return [
            (state.models[n][state.served[n]], sorted(state.models[n], key=version_key)) for n in sorted(state.models)
        ]

    def refresh(self) -> RepositoryChange:
        """Rescans the folder and serves what changed (see the module notes); safe while serving.

        Loads run on the calling thread (seconds for a large program): call it off the event loop.
        """
        adopt_torch_threads()  # loads check the program by running it
        with self._lock:
            if self._closed:
                return RepositoryChange()
            try:
                listed = model_folders(self.path)
            except OSError as exc:
                log.error("model_scan_failed", path=str(self.path), error=str(exc))
                return RepositoryChange()
            found: dict[Path, Signature] = {}
            for directory in listed:
                try:
                    found[directory] = folder_signature(directory)
                except OSError:  # a file vanished mid-read: in flux, keep what is served from it
                    self._waiting.pop(directory, None)
                    if directory in self._folders:
                        found[directory] = self._folders[directory].signature
            self._waiting = {d: sig for d, sig in self._waiting.items() if d in found}
            self._refused = {d: sig for d, sig in self._refused.items() if d in found}
            folders = {d: f for d, f in self._folders.items() if d in found}
            unloaded = [f.handle for d, f in self._folders.items() if d not in found]
            loaded: list[ModelHandle] = []
            refused: list[tuple[str, str]] = []
            for directory, signature in found.items():
                previous = folders.get(directory)
                if (previous is not None and previous.signature == signature) or (
                    self._refused.get(directory) == signature
                ):
                    self._waiting.pop(directory, None)
                    continue
                if self._waiting.get(directory) != signature:
                    self._waiting[directory] = signature  # load once a scan finds it unchanged
                    continue
                del self._waiting[directory]
                try:
                    entry = self._admit(directory, signature, folders, previous)
                except Exception as exc:  # whatever the files hold, the watcher and the served set survive
                    self._refused[directory] = signature
                    refused.append((str(directory), str(exc)))
                    log.error("model_refused", folder=str(directory), error=str(exc))
                    continue
                self._refused.pop(directory, None)
                folders[directory] = entry
                if previous is None or entry.handle is not previous.handle:
                    loaded.append(entry.handle)
                    self._digests[entry.key] = entry.digest
                    if previous is not None:  # the folder now holds another version
                        unloaded.append(previous.handle)
            if not folders:
                log.error("model_scan_empty", path=str(self.path), detail="no model would be left; nothing changed")
                return RepositoryChange(refused=tuple(refused))
            before = self._state.served
            self._folders = folders
            self._state = _Snapshot.of(folders.values())
            self._log(loaded, unloaded, before)
            return RepositoryChange(tuple(loaded), tuple(f"{h.name}/{h.version}" for h in unloaded), tuple(refused))

    def close(self) -> None:
        """Waits for a running `refresh` to finish; later ones change nothing."""
        with self._lock:
            self._closed = True

    def _admit(
        self, directory: Path, signature: Signature, folders: dict[Path, _Folder], previous: _Folder | None
    ) -> _Folder:
        """The folder's entry once it passes every rule above; ValueError naming the rule otherwise."""
        digest = folder_digest(directory)
        if previous is not None and previous.digest == digest:  # touched, same bytes
            return replace(previous, signature=signature)
        handle = load_model(directory, self.runner, self.fuse_rows)
        entry = _Folder(handle, signature, digest)
        label = f"{handle.name}/{handle.version}"
        for other_dir, other in folders.items():
            if other_dir != directory and other.key == entry.key:
                raise ValueError(f"{directory}: {label} is already served from {other_dir}")
        if self._digests.get(entry.key, digest) != digest:  # changed in place, or back with other bytes
            raise ValueError(
                f"{directory}: {label} was served with other files; versions are immutable, so publish "
                "the change under a new version (what was loaded keeps serving)"
            )
        if self._prepare is not None:
            self._prepare(handle)
        return entry

    def _log(self, loaded: list[ModelHandle], unloaded: list[ModelHandle], before: dict[str, str]) -> None:
        for h in loaded:
            log.info("model_loaded", model=h.name, version=h.version, folder=str(h.directory))
        for h in unloaded:
            log.info("model_unloaded", model=h.name, version=h.version)
        after = self._state.served
        for name in sorted(set(before) | set(after)):
            if before.get(name) != after.get(name):
                log.info("model_served", model=name, version=after.get(name), previous=before.get(name))
