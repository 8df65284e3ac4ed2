"""DatasetCache: a worker's local copies of datasets from an object store, by key and sha256.

A worker that trains many jobs on one dataset downloads it once. Entries are named by the key and
the sha256 of the dataset record, so a changed object is a different entry; a download is checked
against that sha256 before it is kept. The cache is bounded (`max_bytes`): the least recently used
entries go first (an entry's mtime is touched at each use).

Several processes share one cache (a prefork worker's children, two workers on one host): each
entry is filled under an exclusive lock on its own lock file, written to a temporary file and
renamed in, and eviction takes an entry's lock before removing it, so no process opens a half
file or loses one between its check and its open. A reader holds an open descriptor: eviction
after that only unlinks the name.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["DatasetCache"]

_SUFFIX = ".cached"


@contextlib.contextmanager
def _locked(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive flock on `path` (created if absent); yields False when not blocking and it is held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


class _HashingWriter:
    """A binary file that hashes what is written to it."""

    def __init__(self, f: BinaryIO) -> None:
        self._f, self.sha = f, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self._f.write(data)


class DatasetCache:
    def __init__(self, root: Path | str, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes

    def _name(self, key: str, sha256: str) -> str:
        return key.replace("/", "__") + "." + sha256[:64] + _SUFFIX

    def open(self, key: str, sha256: str | None, fill: Callable[[BinaryIO], None]) -> BinaryIO:
        """The cached bytes of `key` open for reading; `fill(out)` writes them when not cached.
        Without a sha256 nothing is kept: the bytes go to an anonymous temporary file."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not sha256:
            tmp = tempfile.TemporaryFile(dir=self.root)  # noqa: SIM115  (the caller closes it)
            fill(tmp)
            tmp.seek(0)
            return tmp
        name = self._name(key, sha256)
        path = self.root / name
        with _locked(self.root / f".{name}.lock"):
            if not path.exists():
                self._fill(path, sha256, fill)
            f = open(path, "rb")  # noqa: SIM115  (the caller closes it)
            os.utime(path)  # least recently used goes first
        self._evict(keep=name)
        return f

    def _fill(self, path: Path, sha256: str, fill: Callable[[BinaryIO], None]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as out:
                writer = _HashingWriter(out)
                fill(writer)  # type: ignore[arg-type]
            if writer.sha.hexdigest() != sha256:
                raise OSError(
                    f"The copy of {path.name} downloaded from the artifact store has sha256 "
                    f"{writer.sha.hexdigest()}, not the dataset record's {sha256}: the stored file changed "
                    "or is damaged."
                )
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def entries(self) -> list[tuple[float, int, Path]]:
        """(mtime, size, path) of every complete entry, oldest first."""
        out = []
        for entry in os.scandir(self.root):
            if entry.name.endswith(_SUFFIX) and not entry.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat()
                    out.append((st.st_mtime, st.st_size, Path(entry.path)))
        return sorted(out)

    def cached_keys(self) -> list[str]:
        """The keys of the complete entries (one per key even when it has several sha256s)."""
        names = {path.name[: -len(_SUFFIX)].rsplit(".", 1)[0] for _, _, path in self.entries()}  # less ".{sha}"
        return sorted(name.replace("__", "/") for name in names)

    def drop(self, key: str) -> int:
        """Remove every entry of `key` and its lock file (its dataset was deleted); how many entries went.
        An entry being filled or opened right now is left for the next call."""
        prefix = key.replace("/", "__") + "."
        dropped = 0
        for _, _, path in self.entries():
            if not path.name.startswith(prefix):
                continue
            lock = self.root / f".{path.name}.lock"
            with _locked(lock, blocking=False) as got:
                if got:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                        dropped += 1
                    with contextlib.suppress(FileNotFoundError):
                        lock.unlink()
        return dropped

    def _evict(self, keep: str) -> None:
        """Remove least recently used entries until the cache fits max_bytes (never `keep`)."""
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if total <= self.max_bytes:
                return
            if path.name == keep:
                continue
            with _locked(self.root / f".{path.name}.lock", blocking=False) as got:
                if got:  # held: another process is filling or opening it right now
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                        total -= size
        self._forget_stale_locks()

    def _forget_stale_locks(self) -> None:
        """Lock files of entries gone for an hour (one empty file per dataset ever used otherwise)."""
        cutoff = time.time() - 3600
        for entry in os.scandir(self.root):
            if entry.name.startswith(".") and entry.name.endswith(".lock"):
                target = self.root / entry.name[1 : -len(".lock")]
                with contextlib.suppress(FileNotFoundError):
                    if not target.exists() and entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
