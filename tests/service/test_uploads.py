"""service.uploads and service.synthetic: pure functions, no server."""

from __future__ import annotations

import io

import h5py
import numpy as np
import pytest

from service.synthetic import generate
from service.uploads import UploadError, UploadLimits, parse_upload

LIMITS = UploadLimits(max_examples=10_000, max_features=5_000, max_array_bytes=10_000_000)


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def h5_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
    return buf.getvalue()


def rejected(*args, **kwargs) -> UploadError:
    with pytest.raises(UploadError) as info:
        parse_upload(*args, **kwargs)
    return info.value


def test_npz_binary_labels_keep_values_and_shape():
    X = np.arange(12.0).reshape(6, 2)
    y = np.array([0, 1, 1, 0, 1, 0])
    parsed = parse_upload("d.npz", npz_bytes(X=X, Y=y), LIMITS)
    assert parsed.X.shape == (6, 2) and parsed.Y.shape == (6, 1)
    np.testing.assert_array_equal(parsed.X, X)
    np.testing.assert_array_equal(parsed.Y[:, 0], y)
    assert parsed.label_kind == "binary" and parsed.classes == [0, 1]


def test_npz_images_are_flattened_per_example():
    X = np.random.default_rng(0).random((4, 3, 3, 2))
    parsed = parse_upload("img.npz", npz_bytes(X=X, Y=np.array([0, 1, 2, 1])), LIMITS)
    assert parsed.X.shape == (4, 18)
    np.testing.assert_array_equal(parsed.X[2], X[2].ravel())
    assert parsed.label_kind == "integer" and parsed.classes == [0, 1, 2]


@pytest.mark.parametrize("dtype, stored", [(np.uint8, np.float32), (np.int16, np.float32), (np.bool_, np.float32),
                                           (np.float32, np.float32), (np.int32, np.float64), (np.float64, np.float64)])
def test_stored_dtype_is_float32_only_where_exact(dtype, stored):
    """0..255 pixels are stored as float32 (8x smaller than float64, every value exact); int32 or
    float64 values keep float64 so nothing is rounded."""
    X = (np.arange(24).reshape(6, 4) * (7 if dtype != np.bool_ else 1) % 256).astype(dtype)
    if dtype == np.int32:
        X[0, 0] = 2**24 + 1  # not representable in float32
    parsed = parse_upload("px.npz", npz_bytes(X=X, Y=np.array([0, 1, 0, 1, 0, 1])), LIMITS)
    assert parsed.X.dtype == stored
    np.testing.assert_array_equal(parsed.X.astype(np.float64), X.astype(np.float64))


def test_features_first_layout_is_transposed():
    X = np.arange(10.0).reshape(2, 5)  # (n_x, m)
    Y = np.array([[0.5, 1.5, 2.5, 3.5, 4.5]])  # (1, m), continuous
    parsed = parse_upload("d.npz", npz_bytes(X=X, Y=Y), LIMITS, layout="features_first")
    assert parsed.X.shape == (5, 2) and parsed.Y.shape == (5, 1)
    np.testing.assert_array_equal(parsed.X, X.T)
    assert parsed.label_kind == "continuous" and parsed.classes is None


def test_onehot_labels_are_recognised():
    Y = np.eye(3)[[0, 2, 1, 2]]
    parsed = parse_upload("d.npz", npz_bytes(X=np.ones((4, 2)), Y=Y), LIMITS)
    assert parsed.label_kind == "onehot" and parsed.classes == [0, 1, 2]


def test_npz_with_pickled_object_array_is_refused_without_unpickling():
    X = np.array([{"a": 1}, {"b": 2}], dtype=object)
    err = rejected("d.npz", npz_bytes(X=X, Y=np.array([0, 1])), LIMITS)
    assert err.status == 422
    assert "pickled objects" in err.detail


def test_npz_zip_bomb_is_413_before_reading():
    buf = io.BytesIO()
    np.savez_compressed(buf, X=np.zeros((2000, 1000)), Y=np.zeros(2000))  # 16 MB of zeros, ~40 KB zipped
    assert len(buf.getvalue()) < 100_000
    err = rejected("bomb.npz", buf.getvalue(), LIMITS)
    assert err.status == 413
    assert "limit is 10000000" in err.detail


def test_npz_missing_array_names_what_was_found():
    err = rejected("d.npz", npz_bytes(features=np.ones((2, 2)), Y=np.ones(2)), LIMITS)
    assert err.status == 422
    assert "no array 'X'" in err.detail and "features" in err.detail


def test_not_a_zip_is_422():
    err = rejected("d.npz", b"hello, not a zip", LIMITS)
    assert err.status == 422 and "not a valid zip" in err.detail


@pytest.mark.parametrize(
    "X, Y, message",
    [
        (np.ones((5, 2)), np.ones(4), "X has 5 examples but Y has 4"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), np.array([0, 1]), "NaN or infinite"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), np.array([0, 1]), "NaN or infinite"),
        (np.ones((0, 2)), np.ones(0), "empty"),
        (np.array([["a", "b"], ["c", "d"]]), np.array([0, 1]), "only numeric arrays"),
    ],
)
def test_bad_arrays_are_422_with_reason(X, Y, message):
    err = rejected("d.npz", npz_bytes(X=X, Y=Y), LIMITS)
    assert err.status == 422
    assert message in err.detail


def test_too_many_features_is_413_naming_the_setting():
    err = rejected("d.npz", npz_bytes(X=np.ones((2, 6000)), Y=np.array([0, 1])), LIMITS)
    assert err.status == 413
    assert "6000 features" in err.detail and "DNNQ_MAX_FEATURES" in err.detail


def test_csv_string_labels_become_classes_and_target_column_is_chosen():
    data = b"label,a,b\ncat,1,2\ndog,3,4\nbird,5,6\ncat,7,8\n"
    parsed = parse_upload("d.csv", data, LIMITS, target="label")
    np.testing.assert_array_equal(parsed.X, [[1, 2], [3, 4], [5, 6], [7, 8]])
    assert parsed.classes == ["bird", "cat", "dog"]
    np.testing.assert_array_equal(parsed.Y[:, 0], [1, 2, 0, 1])
    assert parsed.label_kind == "integer"


def test_csv_default_target_is_last_column_and_numeric_labels_stay_numeric():
    parsed = parse_upload("d.csv", b"x1,x2,y\n0.5,1,0\n2,3,1\n", LIMITS)
    np.testing.assert_array_equal(parsed.X, [[0.5, 1], [2, 3]])
    assert parsed.label_kind == "binary"


@pytest.mark.parametrize(
    "data, target, message",
    [
        (b"a,b,y\n1,hello,0\n", None, "line 2, column 'b': 'hello' is not a number"),
        (b"a,b,y\n1,2\n", None, "line 2 has 2 fields; the header has 3"),
        (b"a,b,y\n", None, "header row and at least one data row"),
        (b"a,b,y\n1,2,0\n", "label", "target column 'label' is not in the header"),
        (b"a,b,y\n1,nan,0\n", None, "NaN or infinite"),
    ],
)
def test_bad_csv_is_422_with_line_and_column(data, target, message):
    err = rejected("d.csv", data, LIMITS, target=target)
    assert err.status == 422
    assert message in err.detail


def test_h5_reads_named_datasets():
    X = np.random.default_rng(1).random((8, 3))
    y = np.arange(8) % 2
    parsed = parse_upload("d.h5", h5_bytes(train_x=X, train_y=y), LIMITS, x_key="train_x", y_key="train_y")
    np.testing.assert_allclose(parsed.X, X)
    assert parsed.label_kind == "binary"


def test_h5_declared_size_checked_before_reading():
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("X", shape=(100_000, 100), dtype="f8", chunks=True, compression="gzip")  # 80 MB, empty
        f.create_dataset("Y", data=np.zeros(100_000))
    assert len(buf.getvalue()) < 2_000_000
    err = rejected("big.h5", buf.getvalue(), LIMITS)
    assert err.status == 413 and "declare" in err.detail


def test_h5_string_dataset_is_refused():
    err = rejected("d.h5", h5_bytes(X=np.array([b"a", b"b"]), Y=np.array([0, 1])), LIMITS)
    assert err.status == 422 and "only numeric" in err.detail


def test_unknown_extension_and_empty_file():
    assert rejected("d.txt", b"1,2", LIMITS).status == 422
    assert "empty" in rejected("d.npz", b"", LIMITS).detail


@pytest.mark.parametrize("name, k", [("moons", 2), ("circles", 2), ("spiral", 4), ("blobs", 5)])
def test_synthetic_generators_are_balanced_and_reproducible(name, k):
    X, y = generate(name, 203, 0.1, seed=7, n_classes=k, n_features=3 if name == "blobs" else 2)
    X2, y2 = generate(name, 203, 0.1, seed=7, n_classes=k, n_features=3 if name == "blobs" else 2)
    assert X.shape == (203, 3 if name == "blobs" else 2) and y.shape == (203,)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    counts = np.bincount(y)
    assert len(counts) == k and counts.max() - counts.min() <= 1
    X3, _ = generate(name, 203, 0.1, seed=8, n_classes=k, n_features=3 if name == "blobs" else 2)
    assert not np.array_equal(X, X3)


def test_circles_radii_separate_the_classes_without_noise():
    X, y = generate("circles", 100, 0.0, seed=0)
    r = np.linalg.norm(X, axis=1)
    np.testing.assert_allclose(r[y == 0], 1.0)
    np.testing.assert_allclose(r[y == 1], 0.5)
