"""Dataset records: idempotent content-derived ids, validation, arrays round trip, files stored from
elsewhere (the upload sandbox) and previews that read only the rows they show."""

from __future__ import annotations

import numpy as np
import pytest

from dnnq.workers import datasets, keys
from dnnq.workers.datasets import DatasetError


def blobs(m=20, n=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, n)).astype(np.float32)
    Y = (X[:, 0] > 0).astype(np.float32)
    return X, Y


def save(r, store, X, Y, tenant="public", name="d", label_kind="binary", classes=None):
    return datasets.save_dataset(
        r, store, tenant=tenant, name=name, source="upload", X=X, Y=Y, classes=classes, label_kind=label_kind
    )


def test_save_get_load(redis_client, store):
    X, Y = blobs()
    rec = save(redis_client, store, X, Y)
    assert len(rec["id"]) == 24
    assert rec["n_examples"] == 20 and rec["n_features"] == 3 and rec["n_outputs"] == 1
    assert rec["label_kind"] == "binary" and rec["n_classes"] == 2 and rec["classes"] is None
    assert datasets.get_dataset(redis_client, rec["id"]) == rec
    X2, Y2 = datasets.load_arrays(store, rec["id"])
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(Y2, Y.reshape(-1, 1))
    assert rec["sha256"] == __import__("hashlib").sha256(store.get(f"datasets/{rec['id']}.npz")).hexdigest()


def test_identical_upload_same_record_no_rewrite(redis_client, store):
    X, Y = blobs()
    first = save(redis_client, store, X, Y)
    path = store.local_path(f"datasets/{first['id']}.npz")
    mtime = path.stat().st_mtime_ns
    again = save(redis_client, store, X.copy(), Y.copy(), name="another name")
    assert again == first
    assert path.stat().st_mtime_ns == mtime
    page, total = datasets.list_datasets(redis_client, "public", 0, 10)
    assert total == 1 and page == [first]


def test_id_depends_on_tenant_and_content(redis_client, store):
    X, Y = blobs()
    a = save(redis_client, store, X, Y, tenant="a")
    b = save(redis_client, store, X, Y, tenant="b")
    X3 = X.copy()
    X3[0, 0] += 1
    c = save(redis_client, store, X3, Y, tenant="a")
    assert len({a["id"], b["id"], c["id"]}) == 3
    assert datasets.get_dataset(redis_client, a["id"], tenant="b") is None
    assert datasets.list_datasets(redis_client, "a", 0, 10)[1] == 2


def test_softmax_labels(redis_client, store):
    X, _ = blobs(m=9)
    rec = save(redis_client, store, X, np.arange(9) % 3, label_kind="integer", classes=["a", "b", "c"])
    assert rec["n_classes"] == 3 and rec["classes"] == ["a", "b", "c"]
    onehot = np.eye(4)[np.arange(9) % 4]
    rec = save(redis_client, store, X, onehot, label_kind="onehot")
    assert rec["n_outputs"] == 4 and rec["n_classes"] == 4


@pytest.mark.parametrize(
    "X, Y, kind, message",
    [
        (np.ones(5), np.ones(5), "binary", "2-D array"),
        (np.ones((5, 2)), np.ones(4), "binary", "one row per example"),
        (np.ones((5, 2)), np.full(5, 2), "binary", "use 'integer'"),
        (np.ones((5, 2)), np.full(5, 0.5), "integer", "class indices"),
        (np.ones((5, 2)), np.ones((5, 2)), "onehot", "exactly one 1"),
        (np.full((5, 2), np.nan), np.ones(5), "binary", "NaN"),
        (np.ones((5, 2)), np.ones(5), "ordinal", "label_kind must be one of"),
        (np.array([["a", "b"]] * 5), np.ones(5), "binary", "real numbers"),
    ],
)
def test_bad_arrays_refused_and_nothing_written(redis_client, store, X, Y, kind, message):
    with pytest.raises(DatasetError, match=message):
        save(redis_client, store, X, Y, label_kind=kind)
    assert redis_client.keys("dnnq:dataset*") == []


def test_missing_and_malformed_ids(redis_client, store):
    assert datasets.get_dataset(redis_client, "0" * 24) is None
    assert datasets.get_dataset(redis_client, "../x") is None
    with pytest.raises(LookupError, match="missing from the artifact store"):
        datasets.load_arrays(store, "0" * 24)


def test_load_never_unpickles(store):
    import io

    buf = io.BytesIO()
    np.savez(buf, X=np.array([object()], dtype=object), Y=np.zeros(1))
    store.put(f"datasets/{'1' * 24}.npz", buf.getvalue())
    with pytest.raises(ValueError, match="allow_pickle"):
        datasets.load_arrays(store, "1" * 24)


# --- files written elsewhere (the upload sandbox), and previews that read only what they show -----


class CountingStore:
    """The test's store, counting every byte read through open_read."""

    def __init__(self, store):
        self.store, self.bytes_read, self.reads = store, 0, 0

    def open_read(self, key):
        f = self.store.open_read(key)
        real_read = f.read

        def read(n=-1):
            data = real_read(n)
            self.bytes_read += len(data)
            self.reads += 1
            return data

        f.read = read
        return f


def write_file(store, X, Y, classes=None, label_kind="binary"):
    path = store.new_staging_path(".npz")
    with open(path, "xb") as out:
        info = datasets.write_dataset_file(X, Y, classes, label_kind, out)
    return path, info


def test_save_dataset_file_stores_then_records_and_is_idempotent(redis_client, store):
    X, Y = blobs()
    path, info = write_file(store, X, Y)
    assert (info.n_examples, info.n_features, info.n_outputs, info.n_classes) == (20, 3, 1, 2)
    rec = datasets.save_dataset_file(
        redis_client, store, tenant="public", name="d", source="upload:d.npz", path=path, info=info
    )
    assert rec["id"] == datasets.dataset_id_for("public", X, Y.reshape(-1, 1), None, "binary")
    assert not path.exists()  # moved into the store
    assert rec["size_bytes"] == store.local_path(f"datasets/{rec['id']}.npz").stat().st_size
    X2, Y2 = datasets.load_arrays(store, rec["id"])
    np.testing.assert_array_equal(X2, X)
    again_path, again_info = write_file(store, X.copy(), Y.copy())
    again = datasets.save_dataset_file(
        redis_client, store, tenant="public", name="other", source="upload:e.npz", path=again_path, info=again_info
    )
    assert again == rec and again_path.exists()  # the existing record; the caller removes its file
    assert datasets.list_datasets(redis_client, "public", 0, 10)[1] == 1


def test_no_record_when_the_file_cannot_be_stored(redis_client, store, monkeypatch):
    path, info = write_file(store, *blobs())
    monkeypatch.setattr(store, "put_file", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left (simulated)")))
    with pytest.raises(OSError, match="simulated"):
        datasets.save_dataset_file(redis_client, store, tenant="public", name="d", source="s", path=path, info=info)
    assert redis_client.keys("dnnq:*") == []


def test_stored_file_is_uncompressed_c_order_even_for_transposed_input(store):
    import zipfile

    X = np.asfortranarray(np.arange(60, dtype=np.float64).reshape(12, 5))
    path, info = write_file(store, X, np.arange(12) % 3, label_kind="integer")
    with zipfile.ZipFile(path) as zf:
        assert {i.filename: i.compress_type for i in zf.infolist()} == {"X.npy": 0, "Y.npy": 0}
    with open(path, "rb") as f:
        layout = datasets.read_layout(f)
    assert layout["X"].fortran_order is False and layout["X"].shape == (12, 5)
    assert (
        info.content_digest
        == datasets._canonical(np.ascontiguousarray(X), (np.arange(12) % 3).reshape(-1, 1), None, "integer").hex()
    )


def test_preview_reads_only_a_few_kb_of_a_large_dataset(redis_client, store):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(4000, 1000)).astype(np.float32)  # 16 MB stored
    rec = save(redis_client, store, X, (X[:, 0] > 0).astype(np.float32))
    counting = CountingStore(store)
    Xp, Yp = datasets.read_preview(counting, rec["id"], 5, 20)
    np.testing.assert_array_equal(Xp, X[:5, :20])
    np.testing.assert_array_equal(Yp, (X[:5, :1] > 0).astype(np.float32))
    assert counting.bytes_read < 8 * 1024, counting.bytes_read
    counting.bytes_read = 0
    full, _ = datasets.read_preview(counting, rec["id"], 5, None)  # whole rows: 5 x 1000 x 4 bytes
    np.testing.assert_array_equal(full, X[:5])
    assert counting.bytes_read < 20_000 + 8 * 1024, counting.bytes_read


def test_preview_of_a_fortran_order_file_stored_before(store):
    X = np.asfortranarray(np.arange(300, dtype=np.float64).reshape(30, 10))
    import io

    buf = io.BytesIO()
    np.savez(buf, X=X, Y=np.asfortranarray(np.eye(3)[np.arange(30) % 3]))  # as save_dataset once wrote it
    store.put(f"datasets/{'2' * 24}.npz", buf.getvalue())
    Xp, Yp = datasets.read_preview(store, "2" * 24, 5, 4)
    np.testing.assert_array_equal(Xp, X[:5, :4])
    np.testing.assert_array_equal(Yp, np.eye(3)[np.arange(5) % 3])


@pytest.mark.parametrize("case", ["compressed", "truncated", "object", "missing"])
def test_preview_of_a_file_not_in_the_stored_layout(store, case):
    import io

    key = f"datasets/{'3' * 24}.npz"
    buf = io.BytesIO()
    if case == "compressed":
        np.savez_compressed(buf, X=np.ones((5, 2)), Y=np.ones((5, 1)))
    elif case == "object":
        np.savez(buf, X=np.array([[object()]], dtype=object), Y=np.ones((1, 1)))
    else:
        np.savez(buf, X=np.ones((50, 2)), Y=np.ones((50, 1)))
    data = buf.getvalue()
    if case == "truncated":
        data = data[:200] + data[-200:]
    if case != "missing":
        store.put(key, data)
    expected = LookupError if case == "missing" else DatasetError
    with pytest.raises(expected):
        datasets.read_preview(store, "3" * 24, 5, 20)


def test_the_quota_is_checked_again_with_the_record_so_two_uploads_cannot_share_the_room(
    redis_client, store, monkeypatch
):
    """The check before the file is stored reads the sum without a lock; create_dataset.lua checks it again
    with the record. Here the first check is blinded (as when another upload ran between the two): the
    script refuses, and the file stored for it goes to the trash."""
    rng = np.random.default_rng(0)
    first = save(redis_client, store, rng.normal(size=(50, 4)), np.arange(50) % 2)
    quota = first["size_bytes"] + 100
    monkeypatch.setattr(datasets, "_bytes_stored", lambda r, tenant: 0)
    with pytest.raises(datasets.QuotaExceeded) as over:
        datasets.save_dataset(
            redis_client,
            store,
            tenant="public",
            name="e",
            source="upload",
            X=rng.normal(size=(50, 4)),
            Y=np.arange(50) % 2,
            label_kind="binary",
            quota_bytes=quota,
        )
    assert over.value.used == first["size_bytes"] and over.value.quota == quota
    assert datasets.list_datasets(redis_client, "public")[1] == 1
    stored = sorted(p.name for p in (store.root / "datasets").iterdir())
    assert stored == [f"{first['id']}.npz"] and not redis_client.zcard(keys.TRASH)
