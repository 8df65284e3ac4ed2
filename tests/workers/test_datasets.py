"""Dataset records: idempotent content-derived ids, validation, arrays round trip."""

from __future__ import annotations

import numpy as np
import pytest

from workers import datasets
from workers.datasets import DatasetError


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
