"""LocalArtifactStore: atomic writes, key validation."""

from __future__ import annotations

import hashlib
import os

import pytest

from workers.store import ArtifactStore, InvalidKey, LocalArtifactStore


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
