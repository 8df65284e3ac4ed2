"""Artifact store: datasets, checkpoints and weights as files, written atomically.

A reader sees either the old file or the new one, never a partial write: the bytes go to a
temporary file in the same directory, are fsync'ed, renamed over the target (os.replace is
atomic on POSIX within one filesystem) and the directory is fsync'ed so the rename survives a
crash.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = ["ArtifactStore", "InvalidKey", "LocalArtifactStore", "open_store", "validate_key"]

# Keys are relative POSIX paths of plain names: "datasets/{id}.npz", "jobs/{id}/weights.npz".
_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class InvalidKey(ValueError):
    pass


@runtime_checkable
class ArtifactStore(Protocol):
    def put(self, key: str, data: bytes) -> str: ...  # atomic; returns sha256 hex
    def get(self, key: str) -> bytes: ...  # KeyError if absent
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def local_path(self, key: str) -> Path | None: ...


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalArtifactStore:
    """ArtifactStore on a local directory (DNNQ_DATA_DIR/artifacts)."""

    def __init__(self, root: Path | str):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def put(self, key: str, data: bytes) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
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

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None


def open_store(settings=None) -> LocalArtifactStore:
    """The artifact store of this process: DNNQ_DATA_DIR/artifacts."""
    from workers.settings import get_settings

    settings = settings or get_settings()
    return LocalArtifactStore(Path(settings.data_dir) / "artifacts")
