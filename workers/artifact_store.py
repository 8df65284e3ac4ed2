"""Artifact store: datasets, checkpoints and weights as files, written atomically.

A reader sees either the old file or the new one, never a partial write: the bytes go to a
temporary file in the same directory, are fsync'ed, renamed over the target (os.replace is
atomic on POSIX within one filesystem) and the directory is fsync'ed so the rename survives a
crash.

Large files (uploaded datasets) never pass through memory: they are written to a staging path
(`new_staging_path`, on the store's filesystem) and moved in with `put_file`; readers take what
they need through `open_read`, a seekable file an object-store backend can serve with range GETs.

Two backends: LocalArtifactStore (a directory, DNNQ_DATA_DIR/artifacts) and ObjectArtifactStore
(workers/object_store.py: S3-compatible storage), chosen by DNNQ_ARTIFACTS_URL in
open_store. Code outside this module uses only the ArtifactStore protocol: `local_path` is None
on an object store, so a caller that uses it keeps a path that works without it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, runtime_checkable

if TYPE_CHECKING:
    from dnnq.workers.settings import WorkerSettings

__all__ = [
    "ArtifactStore",
    "InvalidKey",
    "LocalArtifactStore",
    "StoreConfigError",
    "StoreUnavailable",
    "open_store",
    "validate_key",
]

_CHUNK = 1024 * 1024
STAGING_DIR = ".staging"  # under the root; no key can name it (key parts never start with '.')
STALE_STAGING_SECONDS = 3600  # older than any upload in flight: files left by a process that died

# Keys are relative POSIX paths of plain names: "datasets/{id}.npz", "jobs/{id}/weights.npz".
_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class InvalidKey(ValueError):
    pass


class StoreConfigError(RuntimeError):
    """The artifact store cannot be used as configured (a malformed DNNQ_ARTIFACTS_URL, a missing
    bucket, refused credentials, no answer): the message is one line saying what to fix."""


class StoreUnavailable(OSError):
    """An object-store request failed after its retries; the message is one line naming the store,
    the request and the key."""


@runtime_checkable
class ArtifactStore(Protocol):
    def put(self, key: str, data: bytes) -> str: ...  # atomic; returns sha256 hex
    def get(self, key: str) -> bytes: ...  # KeyError if absent
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> int: ...  # every key under "jobs/{id}/"; returns how many
    def local_path(self, key: str) -> Path | None: ...
    def put_file(self, key: str, path: Path | str) -> str: ...  # atomic; consumes `path`; returns sha256 hex
    def open_read(self, key: str) -> BinaryIO: ...  # seekable, read-only; KeyError if absent
    def new_staging_path(self, suffix: str = "") -> Path: ...  # a fresh local path for an in-flight file
    def stream(self, key: str) -> tuple[int, Iterator[bytes]]: ...  # (size, chunks); KeyError if absent
    def presigned_url(self, key: str, expires_seconds: int) -> str | None: ...  # None: no direct URL
    def open_cached(self, key: str, sha256: str | None = None) -> BinaryIO: ...  # whole object, local copy
    def check(self) -> None: ...  # StoreConfigError saying what to fix when the store is unusable
    @property
    def location(self) -> str: ...  # where the artifacts are, for /readyz and errors


def validate_key(key: str) -> str:
    """Refuse absolute paths, '..', empty parts and odd characters: a key never leaves the root."""
    if not isinstance(key, str) or not key or key.startswith("/") or "\\" in key:
        raise InvalidKey(f"An artifact key must be a relative path like 'jobs/<id>/weights.npz'. Got {key!r} instead.")
    parts = key.split("/")
    for part in parts:
        if part in ("", ".", "..") or not _PART_RE.match(part):
            raise InvalidKey(
                f"An artifact key must be made of plain names (letters, digits, '_', '-', '.'; no '..'). "
                f"Got {key!r} instead."
            )
    return key


def _write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write` fills a temporary file beside `path`, which is fsync'ed and renamed over it: a reader
    sees the old file or the whole new one, never part of it (the caller fsyncs the directory)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalArtifactStore:
    """ArtifactStore on a local directory (DNNQ_DATA_DIR/artifacts)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.staging = self.root / STAGING_DIR
        self._clean_staging()

    def _clean_staging(self) -> None:
        """Remove staging files left by a process that died mid-upload. Every process that opens the
        store does this, so only files too old to belong to a live upload are removed."""
        cutoff = time.time() - STALE_STAGING_SECONDS
        try:
            entries = list(os.scandir(self.staging))
        except FileNotFoundError:
            return
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                pass

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def put(self, key: str, data: bytes) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, lambda f: f.write(data))
        _fsync_dir(path.parent)
        return hashlib.sha256(data).hexdigest()

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under `prefix` (a folder: "jobs/{id}/"), the folder too; the number of
        files removed. A prefix that names nothing removes nothing."""
        if not prefix.endswith("/"):
            raise InvalidKey(f"A prefix to delete must end with '/'. Got {prefix!r} instead.")
        folder = self._path(prefix[:-1])
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return 0
        removed = 0
        for entry in entries:  # keys are plain files; a leftover temporary file of a put goes too
            if entry.is_dir(follow_symlinks=False):
                removed += self.delete_prefix(f"{prefix}{entry.name}/")
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
        with contextlib.suppress(FileNotFoundError, OSError):
            folder.rmdir()  # OSError: a put made a new file meanwhile (its job was deleted: the mover removes it)
        _fsync_dir(folder.parent)
        return removed

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None

    def new_staging_path(self, suffix: str = "") -> Path:
        """A path in the staging directory that nothing uses yet (the caller creates and removes it).
        It is on the store's filesystem, so put_file moves it in with a rename."""
        self.staging.mkdir(mode=0o700, exist_ok=True)
        return self.staging / f"{uuid.uuid4().hex}{suffix}"

    def put_file(self, key: str, path: Path | str) -> str:
        """Move the file at `path` to `key` atomically and return its sha256; `path` is consumed.

        The file is hashed in chunks (never read whole) and fsync'ed, then renamed into place: on
        the same filesystem (the staging directory) that is the whole write. From another
        filesystem it is copied to a temporary file beside the target first, then renamed.
        """
        src = Path(path)
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        with open(src, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
            os.fsync(f.fileno())
        try:
            os.replace(src, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:  # another filesystem: copy below
                raise
            with open(src, "rb") as f:
                _write_atomically(target, lambda out: shutil.copyfileobj(f, out, _CHUNK))
            src.unlink()
        _fsync_dir(target.parent)
        return h.hexdigest()

    def open_read(self, key: str) -> BinaryIO:
        """The stored file, open for reading (seek and read what you need). An object-store backend
        returns a file whose reads are range GETs (as s3fs and smart_open do), so the same reader
        code fetches only the bytes it reads."""
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise KeyError(key) from None

    def stream(self, key: str) -> tuple[int, Iterator[bytes]]:
        """(size, chunks) of the stored file; KeyError if absent (raised here, not mid-stream)."""
        f = self.open_read(key)
        size = os.fstat(f.fileno()).st_size

        def chunks() -> Iterator[bytes]:
            with f:
                while chunk := f.read(_CHUNK):
                    yield chunk

        return size, chunks()

    def presigned_url(self, key: str, expires_seconds: int) -> str | None:
        return None  # a directory has no URL of its own: the API streams it

    def open_cached(self, key: str, sha256: str | None = None) -> BinaryIO:
        return self.open_read(key)  # already local

    def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise StoreConfigError(f"The artifact directory {self.root} is not writable: fix DNNQ_DATA_DIR.")

    @property
    def location(self) -> str:
        return str(self.root)


def open_store(settings: WorkerSettings | None = None) -> ArtifactStore:
    """The artifact store of this process: DNNQ_ARTIFACTS_URL's object store when set (local scratch
    files under DNNQ_DATA_DIR), else the directory DNNQ_DATA_DIR/artifacts.
    StoreConfigError when the URL is malformed."""
    from dnnq.workers.settings import get_settings

    settings = settings or get_settings()
    if settings.artifacts_url:
        from dnnq.workers.object_store import ObjectArtifactStore

        return ObjectArtifactStore(
            settings.artifacts_url,
            Path(settings.data_dir),
            retry_seconds=settings.artifacts_retry_seconds,
            cache_bytes=settings.dataset_cache_bytes,
        )
    return LocalArtifactStore(Path(settings.data_dir) / "artifacts")
