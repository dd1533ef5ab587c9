"""Resolve a model profile's sources to local paths, downloading into a cache once.

The runner calls ``ModelStore.resolve(profile)`` before loading a pipeline; the result (component
name -> local path) goes to ``pipeline.ComposePipeline.load``. Sources:

- ``hf://org/repo`` with ``revision``, ``subfolder``, ``filename`` and ``allowPatterns``: through
  huggingface_hub (``snapshot_download`` of the matching files for folders, ``hf_hub_download``
  for one file) into ``<cache>/hf``, the hub's own cache layout, so a cache filled by
  ``huggingface-cli download`` works too.
- ``s3://bucket/…/model.tar.gz`` (or ``.tgz``/``.tar``): downloaded to the cache, checked against
  ``sha256`` when given, extracted safely (no absolute paths, ``..``, links leaving the folder or
  device files), then renamed into place atomically; later jobs reuse the extracted folder.
  ``subfolder``/``filename`` select inside it, so one tarball can hold every component, as the
  original design stored its model.
- ``s3://bucket/prefix/`` (ending in '/'): every object under the prefix (those matching
  ``allowPatterns`` when given); ``s3://bucket/key``: one
  file (``sha256`` checked).
- ``/local/path``: used in place (``sha256`` checked when the path is a file).
- ``builtin:smoke``: tiny random-weight components built by ``compose_inference.tiny``.

The cache directory comes from ``COMPOSE_MODEL_CACHE`` (a node-local disk or volume). Offline mode
(``COMPOSE_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) uses the cache only. Every failure is
MODEL_LOAD_FAILED with the component and source named. A file lock per cache entry lets several
pods on one node share the cache: Job pods and pool workers starting at once download and extract
an entry once, the others wait and reuse it, and a process with a warm cache makes no request at
all (an S3 source deleted since still loads from the cache).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from compose_api import profiles
from compose_inference import errors, retrying, storage

CACHE_ENV = "COMPOSE_MODEL_CACHE"
OFFLINE_ENVS = ("COMPOSE_OFFLINE", "HF_HUB_OFFLINE")
DEFAULT_CACHE = Path.home() / ".cache" / "compose" / "models"
_TARBALL_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_COMPLETE = ".complete"
_CHUNK = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class StoreSettings:
    cache_dir: Path = DEFAULT_CACHE
    offline: bool = False
    backoff: retrying.Backoff = dataclasses.field(default_factory=retrying.Backoff)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StoreSettings:
        env = os.environ if environ is None else environ
        cache = env.get(CACHE_ENV, "").strip()
        offline = any(
            env.get(name, "").strip().lower() in {"1", "true", "yes", "on"} for name in OFFLINE_ENVS
        )
        return cls(cache_dir=Path(cache) if cache else DEFAULT_CACHE, offline=offline)


class ModelStore:
    """Finds or downloads every component of a profile. Counts downloads (``downloads``)."""

    def __init__(
        self,
        settings: StoreSettings,
        *,
        s3_client: Any | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self._s3 = s3_client
        self._sleep = sleep
        self.downloads = 0

    def resolve(self, profile: profiles.ModelProfile) -> dict[str, Path]:
        """Component name -> local path for every model of ``profile``."""
        return {name: self.resolve_source(name, source) for name, source in profile.models.items()}

    def resolve_source(self, name: str, source: profiles.ModelSource) -> Path:
        label = f"profile.models.{name} ({source.uri})"
        try:
            if source.uri.startswith("hf://"):
                return self._hf(source, label=label)
            if source.uri.startswith("s3://"):
                return self._s3_source(source, label=label)
            if source.uri.startswith("builtin:"):
                return self._builtin(name, source, label=label)
            return self._local(source, label=label)
        except errors.ComposeError:
            raise
        except Exception as error:
            raise errors.ModelLoadFailed(f"{label}: {type(error).__name__}: {error}") from error

    # -- local and builtin ------------------------------------------------------------------

    def _local(self, source: profiles.ModelSource, *, label: str) -> Path:
        path = _select(Path(source.uri), source, label=label)
        if source.sha256 and path.is_file():
            _verify(path, source.sha256, label=label)
        return path

    def _builtin(self, name: str, source: profiles.ModelSource, *, label: str) -> Path:
        kind = source.uri.removeprefix("builtin:")
        if kind != "smoke":
            raise errors.ModelLoadFailed(f"{label}: unknown builtin source (only builtin:smoke)")
        components = self.smoke_components()
        if source.subfolder or source.filename:
            return _select(
                self.settings.cache_dir / "builtin" / "smoke" / "models", source, label=label
            )
        if name not in components:
            known = ", ".join(sorted(components))
            raise errors.ModelLoadFailed(f"{label}: the smoke models have no {name!r} ({known})")
        return components[name]

    def smoke_components(self) -> dict[str, Path]:
        """Build the tiny random-weight components once into the cache; name -> path."""
        from compose_inference import tiny

        entry = self.settings.cache_dir / "builtin" / "smoke"
        final = entry / "models"
        with _locked(entry):
            if not (final / _COMPLETE).exists():
                staging = _staging_dir(entry)
                try:
                    built = tiny.build_tiny_models(staging)
                    index = {key: str(path.relative_to(staging)) for key, path in built.items()}
                    (staging / "components.json").write_text(json.dumps(index, indent=2))
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
                _publish(staging, final)
        index = json.loads((final / "components.json").read_text())
        return {key: final / relative for key, relative in index.items()}

    # -- Hugging Face -----------------------------------------------------------------------

    def _hf(self, source: profiles.ModelSource, *, label: str) -> Path:
        import huggingface_hub
        from huggingface_hub import errors as hf_errors

        repo_id = source.uri.removeprefix("hf://")
        cache = self.settings.cache_dir / "hf"
        offline = self.settings.offline
        try:
            if source.filename:
                file_path = huggingface_hub.hf_hub_download(
                    repo_id,
                    source.filename,
                    subfolder=source.subfolder,
                    revision=source.revision,
                    cache_dir=cache,
                    local_files_only=offline,
                )
                path = Path(str(file_path))
                if source.sha256:
                    _verify(path, source.sha256, label=label)
                return path
            # Only the files the loader reads (allowPatterns under the subfolder): a whole SDXL
            # repository holds every format (fp32, fp16, single files, Flax, ONNX, OpenVINO).
            patterns = source.download_patterns()
            root = huggingface_hub.snapshot_download(
                repo_id,
                revision=source.revision,
                cache_dir=cache,
                allow_patterns=patterns,
                local_files_only=offline,
            )
        except (hf_errors.LocalEntryNotFoundError, hf_errors.CachedRepoTreeNotFoundError) as error:
            where = "offline mode: " if offline else ""
            raise errors.ModelLoadFailed(
                f"{label}: {where}not in the cache {cache} ({_first_line(error)})"
            ) from error
        except (
            hf_errors.RepositoryNotFoundError,
            hf_errors.RevisionNotFoundError,
            hf_errors.EntryNotFoundError,
            hf_errors.GatedRepoError,
        ) as error:
            raise errors.ModelLoadFailed(f"{label}: {_first_line(error)}") from error
        folder = Path(str(root))
        if source.subfolder:
            folder = folder / source.subfolder
        if not folder.exists():
            raise errors.ModelLoadFailed(f"{label}: {source.subfolder!r} not in the snapshot")
        return folder

    # -- S3 ---------------------------------------------------------------------------------

    def _client(self) -> Any:
        if self._s3 is None:
            self._s3 = storage.make_client(read_timeout=300.0)
        return self._s3

    def s3_entry(self, source: profiles.ModelSource) -> Path:
        """The cache folder of an S3 source; its lock file is ``<folder>.lock`` beside it."""
        location = storage.parse_uri(source.uri)
        selection = location.key
        if location.key.endswith("/") and source.allow_patterns is not None:
            # A prefix with a file selection is its own cache entry.
            selection = f"{location.key}?{source.subfolder or ''}:{','.join(source.allow_patterns)}"
        return self.settings.cache_dir / "s3" / location.bucket / _entry_name(selection)

    def _s3_source(self, source: profiles.ModelSource, *, label: str) -> Path:
        location = storage.parse_uri(source.uri)
        entry = self.s3_entry(source)
        with _locked(entry):
            if location.key.endswith("/") or not location.key:
                root = self._s3_prefix(location, entry, source, label=label)
                return _select(root, source, label=label)
            if location.key.endswith(_TARBALL_SUFFIXES):
                root = self._s3_tarball(location, entry, source, label=label)
                return _select(root, source, label=label)
            return self._s3_file(location, entry, source, label=label)

    def _s3_tarball(
        self,
        location: storage.S3Location,
        entry: Path,
        source: profiles.ModelSource,
        *,
        label: str,
    ) -> Path:
        final = entry / "extracted"
        if _complete(final, source.sha256):
            return final
        self._require_online(label, entry)
        archive = entry / f"download-{uuid.uuid4().hex}.part"
        try:
            self._download(location, archive, label=label)
            if source.sha256:
                _verify(archive, source.sha256, label=label)
            staging = _staging_dir(entry)
            try:
                _extract(archive, staging, label=label)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            _publish(staging, final, sha256=source.sha256)
        finally:
            archive.unlink(missing_ok=True)
        return final

    def _s3_file(
        self,
        location: storage.S3Location,
        entry: Path,
        source: profiles.ModelSource,
        *,
        label: str,
    ) -> Path:
        final = entry / "file"
        target = final / PurePosixPath(location.key).name
        if _complete(final, source.sha256) and target.exists():
            return target
        self._require_online(label, entry)
        staging = _staging_dir(entry)
        part = staging / target.name
        try:
            self._download(location, part, label=label)
            if source.sha256:
                _verify(part, source.sha256, label=label)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _publish(staging, final, sha256=source.sha256)
        return target

    def _s3_prefix(
        self,
        location: storage.S3Location,
        entry: Path,
        source: profiles.ModelSource,
        *,
        label: str,
    ) -> Path:
        final = entry / "prefix"
        if _complete(final, None):
            return final
        self._require_online(label, entry)
        staging = _staging_dir(entry)
        try:
            keys = self._list(location, label=label)
            if source.allow_patterns is not None:
                keys = [key for key in keys if source.selects(key[len(location.key) :])]
            if not keys:
                raise errors.ModelLoadFailed(
                    f"{label}: no objects under the prefix"
                    + (" match allowPatterns" if source.allow_patterns is not None else "")
                )
            for key in keys:
                relative = key[len(location.key) :]
                _check_member_name(relative, label=label)
                self._download(
                    storage.S3Location(location.bucket, key), staging / relative, label=label
                )
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _publish(staging, final)
        return final

    def _require_online(self, label: str, entry: Path) -> None:
        if self.settings.offline:
            raise errors.ModelLoadFailed(f"{label}: offline mode and not in the cache ({entry})")

    def _list(self, location: storage.S3Location, *, label: str) -> list[str]:
        def page_through() -> list[str]:
            paginator = self._client().get_paginator("list_objects_v2")
            keys: list[str] = []
            for page in paginator.paginate(Bucket=location.bucket, Prefix=location.key):
                keys.extend(
                    item["Key"]
                    for item in page.get("Contents", [])
                    if not item["Key"].endswith("/")
                )
            return keys

        keys: list[str] = self._with_retries(page_through, label=label)
        return keys

    def _download(self, location: storage.S3Location, target: Path, *, label: str) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)

        def fetch() -> None:
            response = self._client().get_object(Bucket=location.bucket, Key=location.key)
            body = response["Body"]
            try:
                with target.open("wb") as handle:
                    for chunk in iter(lambda: body.read(_CHUNK), b""):
                        handle.write(chunk)
            finally:
                body.close()

        self._with_retries(fetch, label=label)
        self.downloads += 1

    def _with_retries(self, operation: Callable[[], Any], *, label: str) -> Any:
        try:
            return retrying.call(
                operation,
                transient=storage.is_transient,
                backoff=self.settings.backoff,
                sleep=self._sleep,
            )
        except retrying.RetriesExhausted as error:
            raise errors.ModelLoadFailed(
                f"{label}: download failed after {error.attempts} attempts: {error.last}"
            ) from error
        except Exception as error:
            code = storage.error_code(error)
            if code in ("NoSuchKey", "404", "NotFound"):
                raise errors.ModelLoadFailed(f"{label}: object does not exist") from error
            if code == "NoSuchBucket":
                raise errors.ModelLoadFailed(f"{label}: bucket does not exist") from error
            if code in ("AccessDenied", "403"):
                raise errors.ModelLoadFailed(f"{label}: access denied") from error
            raise


# -- helpers (pure file-system work) ----------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, expected: str, *, label: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise errors.ModelLoadFailed(
            f"{label}: sha256 mismatch (expected {expected}, got {actual})"
        )


def _select(root: Path, source: profiles.ModelSource, *, label: str) -> Path:
    path = root
    for part in (source.subfolder, source.filename):
        if part:
            _check_member_name(part, label=label)
            path = path / part
    if not path.exists():
        raise errors.ModelLoadFailed(f"{label}: {path} does not exist")
    return path


def _entry_name(key: str) -> str:
    """A readable, collision-free folder name for an S3 key."""
    stem = key.strip("/").replace("/", "__") or "root"
    return f"{stem[-80:]}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _complete(final: Path, sha256: str | None) -> bool:
    marker = final / _COMPLETE
    if not marker.exists():
        return False
    recorded = marker.read_text().strip()
    return sha256 is None or recorded == sha256


def _staging_dir(entry: Path) -> Path:
    entry.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="staging-", dir=entry))


def _publish(staging: Path, final: Path, *, sha256: str | None = None) -> None:
    """Mark ``staging`` complete and move it to ``final`` in one rename (replacing a stale one)."""
    (staging / _COMPLETE).write_text(sha256 or "")
    if final.exists():
        stale = final.with_name(f"{final.name}.stale-{uuid.uuid4().hex}")
        final.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    staging.rename(final)


def _check_member_name(name: str, *, label: str) -> None:
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or name.startswith("\\"):
        raise errors.ModelLoadFailed(f"{label}: unsafe path {name!r}")


def _extract(archive: Path, destination: Path, *, label: str) -> None:
    """Extract a tarball, refusing members that would land outside ``destination``."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member_name(member.name, label=label)
                if member.issym() or member.islnk():
                    target = PurePosixPath(member.name).parent / member.linkname
                    if member.islnk():
                        target = PurePosixPath(member.linkname)
                    _check_member_name(str(target), label=label)
                elif not (member.isfile() or member.isdir()):
                    raise errors.ModelLoadFailed(
                        f"{label}: unsupported member {member.name!r} (device, fifo or other)"
                    )
            tar.extractall(destination, members=members, filter="data")
    except tarfile.TarError as error:
        raise errors.ModelLoadFailed(f"{label}: corrupt archive: {error}") from error


@contextlib.contextmanager
def _locked(entry: Path) -> Iterator[None]:
    """An exclusive lock on one cache entry, shared with other processes on the node (Job pods
    and pool workers mount the same node-local cache). Whoever holds it first removes what a
    process killed mid-download left behind: every writer works under the lock, so a staging
    folder or partial download found while holding it belongs to no live process."""
    entry.mkdir(parents=True, exist_ok=True)
    with (entry.parent / f"{entry.name}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            _sweep(entry)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sweep(entry: Path) -> None:
    """Remove the leftovers of dead writers in ``entry`` (call with its lock held)."""
    for path in entry.iterdir():
        name = path.name
        if name.startswith("staging-") or ".stale-" in name:
            shutil.rmtree(path, ignore_errors=True)
        elif name.startswith("download-") and name.endswith(".part"):
            path.unlink(missing_ok=True)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
