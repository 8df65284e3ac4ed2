"""LocalArtifactStore: atomic writes, key validation, moving staged files in, reading back."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from dnnq.workers.artifact_store import STALE_STAGING_SECONDS, ArtifactStore, InvalidKey, LocalArtifactStore


def test_put_get_exists_delete(tmp_path):
    store = LocalArtifactStore(tmp_path)
    assert isinstance(store, ArtifactStore)
    sha = store.put("jobs/abc/weights.npz", b"hello")
    assert sha == hashlib.sha256(b"hello").hexdigest()
    assert store.get("jobs/abc/weights.npz") == b"hello"
    assert store.exists("jobs/abc/weights.npz")
    assert store.local_path("jobs/abc/weights.npz") == tmp_path.resolve() / "jobs/abc/weights.npz"
    store.put("jobs/abc/weights.npz", b"new")
    assert store.get("jobs/abc/weights.npz") == b"new"
    store.delete("jobs/abc/weights.npz")
    store.delete("jobs/abc/weights.npz")  # idempotent
    assert not store.exists("jobs/abc/weights.npz")
    assert store.local_path("jobs/abc/weights.npz") is None
    with pytest.raises(KeyError):
        store.get("jobs/abc/weights.npz")


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "../x", "jobs/../../x", "jobs//x", "jobs/./x", "a\\b", "jobs/x y", ".hidden/x/.."]
)
def test_bad_keys_refused(tmp_path, key):
    store = LocalArtifactStore(tmp_path)
    with pytest.raises(InvalidKey, match="artifact key"):
        store.put(key, b"x")
    with pytest.raises(InvalidKey):
        store.get(key)


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    store = LocalArtifactStore(tmp_path)
    store.put("datasets/d.npz", b"old contents")

    def broken_fsync(fd):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        store.put("datasets/d.npz", b"new contents that never land")
    monkeypatch.undo()
    assert store.get("datasets/d.npz") == b"old contents"
    assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == ["d.npz"]


def test_failed_first_write_leaves_nothing(tmp_path, monkeypatch):
    store = LocalArtifactStore(tmp_path)
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("crash before rename")))
    with pytest.raises(OSError, match="crash before rename"):
        store.put("jobs/j/checkpoint.npz", b"partial")
    monkeypatch.undo()
    assert not store.exists("jobs/j/checkpoint.npz")
    assert list((tmp_path / "jobs" / "j").iterdir()) == []


# --- put_file / open_read / staging ------------------------------------------------------------


def test_put_file_moves_the_staged_file_in_and_hashes_it(tmp_path):
    store = LocalArtifactStore(tmp_path)
    staged = store.new_staging_path(".npz")
    assert staged.parent == store.staging and not staged.exists()
    assert store.new_staging_path(".npz") != staged
    data = os.urandom(3 * 1024 * 1024 + 17)  # several hashing chunks and a partial one
    staged.write_bytes(data)
    inode = staged.stat().st_ino
    sha = store.put_file("datasets/d.npz", staged)
    assert sha == hashlib.sha256(data).hexdigest()
    assert not staged.exists()  # consumed
    assert store.local_path("datasets/d.npz").stat().st_ino == inode  # a rename, not a copy
    with store.open_read("datasets/d.npz") as f:
        f.seek(3 * 1024 * 1024)
        assert f.read(17) == data[3 * 1024 * 1024 :]
    with pytest.raises(KeyError):
        store.open_read("datasets/absent.npz")
    with pytest.raises(InvalidKey):
        store.put_file("../escape.npz", staged)


def test_put_file_from_another_filesystem_copies_then_renames(tmp_path, monkeypatch):
    store = LocalArtifactStore(tmp_path / "root")
    src = tmp_path / "elsewhere.bin"
    src.write_bytes(b"payload" * 1000)
    real_replace = os.replace
    calls = []

    def cross_device(a, b):
        calls.append(str(a))
        if str(a) == str(src):
            raise OSError(18, "Invalid cross-device link")  # EXDEV
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", cross_device)
    sha = store.put_file("datasets/e.npz", src)
    assert sha == hashlib.sha256(b"payload" * 1000).hexdigest()
    assert store.get("datasets/e.npz") == b"payload" * 1000
    assert not src.exists() and len(calls) == 2  # refused rename, then the temp file's rename
    assert sorted(p.name for p in (tmp_path / "root" / "datasets").iterdir()) == ["e.npz"]


def test_failed_put_file_leaves_the_old_file(tmp_path, monkeypatch):
    store = LocalArtifactStore(tmp_path)
    store.put("datasets/d.npz", b"old contents")
    staged = store.new_staging_path()
    staged.write_bytes(b"new contents")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(5, "I/O error (simulated)")))
    with pytest.raises(OSError, match="simulated"):
        store.put_file("datasets/d.npz", staged)
    monkeypatch.undo()
    assert store.get("datasets/d.npz") == b"old contents"
    assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == ["d.npz"]


def test_stale_staging_files_are_removed_at_start(tmp_path):
    store = LocalArtifactStore(tmp_path)
    stale, fresh = store.new_staging_path(".upload"), store.new_staging_path(".upload")
    stale.write_bytes(b"left by a dead process")
    fresh.write_bytes(b"an upload in flight")
    old = time.time() - STALE_STAGING_SECONDS - 60
    os.utime(stale, (old, old))
    LocalArtifactStore(tmp_path)  # another process opening the same store
    assert not stale.exists() and fresh.exists()
