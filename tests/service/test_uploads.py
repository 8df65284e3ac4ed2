"""service.uploads and service.synthetic: pure functions, no server."""

from __future__ import annotations

import io

import h5py
import numpy as np
import pytest

from dnnq.service.synthetic import generate
from dnnq.service.uploads import UploadError, UploadLimits, parse_upload

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


@pytest.mark.parametrize(
    "dtype, stored",
    [
        (np.uint8, np.float32),
        (np.int16, np.float32),
        (np.bool_, np.float32),
        (np.float32, np.float32),
        (np.int32, np.float64),
        (np.float64, np.float64),
    ],
)
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


# --- sources, layouts and limits of the hardened parsers (issue 13) -------------------------------


def test_a_path_parses_as_its_bytes_do(tmp_path):
    X = np.random.default_rng(2).random((7, 3))
    y = np.arange(7) % 2
    uploads = {
        "d.npz": npz_bytes(X=X, Y=y),
        "d.h5": h5_bytes(X=X, Y=y),
        "d.csv": b"a,b,c,y\n" + b"".join(b"%r,%r,%r,%d\n" % (*row, t) for row, t in zip(X.tolist(), y, strict=True)),
    }
    for name, data in uploads.items():
        path = tmp_path / name
        path.write_bytes(data)
        from_bytes, from_path = parse_upload(name, data, LIMITS), parse_upload(name, path, LIMITS)
        np.testing.assert_array_equal(from_path.X, from_bytes.X)
        np.testing.assert_array_equal(from_path.Y, from_bytes.Y)
        np.testing.assert_allclose(from_path.X, X)


def test_h5_chunked_filtered_data_is_read_box_by_box(monkeypatch):
    """Few chunks per read (the bound on libhdf5's per-read bookkeeping) still reads every value."""
    import dnnq.service.formats.hdf5 as hdf5

    monkeypatch.setattr(hdf5, "CHUNKS_PER_READ", 3)
    X = np.random.default_rng(3).random((50, 7, 3)).astype(np.float32)
    y = np.arange(50) % 3
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("X", data=X, chunks=(4, 2, 2), compression="gzip", shuffle=True, fletcher32=True)
        f.create_dataset("Y", data=y, chunks=(8,), compression="lzf")
    parsed = parse_upload("d.h5", buf.getvalue(), LIMITS)
    np.testing.assert_array_equal(parsed.X, X.reshape(50, -1))
    np.testing.assert_array_equal(parsed.Y[:, 0], y)


def test_h5_datasets_in_groups_and_soft_links_within_the_file_are_followed():
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        g = f.create_group("train")
        g["X"] = np.ones((3, 2))
        g["labels"] = np.array([0, 1, 1])
        g["Y"] = h5py.SoftLink("labels")  # relative: /train/labels
        f["alias"] = h5py.SoftLink("/train")
    parsed = parse_upload("d.h5", buf.getvalue(), LIMITS, x_key="alias/X", y_key="train/Y")
    assert parsed.X.shape == (3, 2)
    np.testing.assert_array_equal(parsed.Y[:, 0], [0, 1, 1])


def test_h5_soft_link_cycle_is_422():
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f["X"] = h5py.SoftLink("/Z")
        f["Z"] = h5py.SoftLink("/X")
        f["Y"] = np.zeros(2)
    err = rejected("d.h5", buf.getvalue(), LIMITS)
    assert err.status == 422 and "soft links" in err.detail


def test_h5_missing_dataset_lists_only_datasets_in_the_file():
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f["train_x"] = np.ones((2, 2))
        f["elsewhere"] = h5py.ExternalLink("/etc/passwd", "/x")
        f.create_group("grp")
    err = rejected("d.h5", buf.getvalue(), LIMITS)
    assert err.status == 422
    assert "no dataset 'X'" in err.detail and "['train_x']" in err.detail


@pytest.mark.parametrize(
    "array",
    [
        np.asfortranarray(np.arange(12.0).reshape(4, 3)),
        np.arange(12.0).reshape(4, 3).astype(">f8"),
        np.arange(12, dtype=np.int16).reshape(4, 3),
    ],
)
def test_npz_fortran_order_and_byte_orders_read_exactly(array):
    parsed = parse_upload("d.npz", npz_bytes(X=array, Y=np.array([0, 1, 0, 1])), LIMITS)
    np.testing.assert_array_equal(parsed.X, np.asarray(array, dtype=np.float64))


def test_npz_compressed_and_version_2_headers_read():
    buf = io.BytesIO()
    X = np.random.default_rng(4).random((5, 4))
    np.savez_compressed(buf, X=X, Y=np.arange(5) % 2)
    np.testing.assert_array_equal(parse_upload("c.npz", buf.getvalue(), LIMITS).X, X)
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for key, a in (("X", X), ("Y", np.arange(5.0) % 2)):
            member = io.BytesIO()
            np.lib.format.write_array(member, a, version=(2, 0))
            zf.writestr(f"{key}.npy", member.getvalue())
    np.testing.assert_array_equal(parse_upload("v2.npz", buf.getvalue(), LIMITS).X, X)


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_csv_line_endings_quotes_and_blank_lines(newline):
    text = newline.join(["a,label,b", '1,"cat, big",2', "", '3,"dog' + newline + 'house",4', "5,cat,6", ""])
    parsed = parse_upload("d.csv", text.encode(), LIMITS, target="label")
    np.testing.assert_array_equal(parsed.X, [[1, 2], [3, 4], [5, 6]])
    assert parsed.classes == ["cat", "cat, big", "dog" + newline + "house"]
    np.testing.assert_array_equal(parsed.Y[:, 0], [1, 2, 0])


def test_csv_rows_over_the_limit_are_413_as_soon_as_counted():
    limits = UploadLimits(max_examples=3, max_features=10, max_array_bytes=10_000_000)
    data = b"a,y\n1,0\n2,1\n3,0\n4,1\nnot,a,row,at,all\n"  # the bad line after the limit is never reached
    err = rejected("d.csv", data, limits)
    assert err.status == 413
    assert "more than 3 examples" in err.detail and "DNNQ_MAX_EXAMPLES" in err.detail


def test_csv_wider_than_the_limit_is_413_at_the_header():
    limits = UploadLimits(max_examples=100, max_features=3, max_array_bytes=10_000_000)
    err = rejected("d.csv", b"a,b,c,d,y\nnot numbers at all\n", limits)
    assert err.status == 413 and "4 features" in err.detail and "DNNQ_MAX_FEATURES" in err.detail


def test_csv_memory_is_a_small_multiple_of_the_body():
    import tracemalloc

    rows = 40_000
    body = b"a,b,c,y\n" + b"".join(b"%d.5,%d,1.25,%d\n" % (i % 97, i % 13, i % 2) for i in range(rows))
    big = UploadLimits(max_examples=1_000_000, max_features=10, max_array_bytes=100_000_000)
    tracemalloc.start()
    parsed = parse_upload("d.csv", body, big)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert parsed.X.shape == (rows, 3)
    assert peak < 5 * len(body), (peak, len(body))


@pytest.mark.parametrize(
    "filename, data, fragment",
    [
        ("d.npz", npz_bytes(X=np.ones((3, 2)), Y=np.array([0, 1, 1500])), "1501 classes"),
        ("d.npz", npz_bytes(X=np.ones((2, 2)), Y=np.eye(1200)[[0, 1]]), "1200 output columns"),
        ("d.csv", b"x,y\n" + b"".join(b"%d,c%d\n" % (i, i) for i in range(1100)), "1001 distinct values or more"),
    ],
)
def test_more_classes_than_the_limit_is_413_naming_the_setting(filename, data, fragment):
    limits = UploadLimits(max_examples=10_000, max_features=5_000, max_array_bytes=100_000_000, max_classes=1000)
    err = rejected(filename, data, limits)
    assert err.status == 413
    assert fragment in err.detail and "DNNQ_MAX_CLASSES" in err.detail


def test_classes_up_to_the_limit_are_accepted():
    limits = UploadLimits(max_examples=10_000, max_features=5_000, max_array_bytes=100_000_000, max_classes=5)
    parsed = parse_upload("d.csv", b"x,y\n" + b"".join(b"%d,c%d\n" % (i, i) for i in range(5)), limits)
    assert parsed.classes == ["c0", "c1", "c2", "c3", "c4"]
    parsed = parse_upload("d.npz", npz_bytes(X=np.ones((2, 1)), Y=np.array([0, 4])), limits)
    assert parsed.classes == [0, 1, 2, 3, 4]


# --- CSV header: read as data, or refused naming the option; never one row lost --------------------


def test_csv_without_header_auto_reads_the_first_line_as_data():
    parsed = parse_upload("d.csv", b"0.5,1,0\n2,3,1\n4,5,0\n", LIMITS)
    np.testing.assert_array_equal(parsed.X, [[0.5, 1], [2, 3], [4, 5]])
    np.testing.assert_array_equal(parsed.Y[:, 0], [0, 1, 0])


def test_csv_without_header_target_is_a_column_number():
    parsed = parse_upload("d.csv", b"1,0.5,2\n0,3,4\n", LIMITS, target="0", header="no")
    np.testing.assert_array_equal(parsed.X, [[0.5, 2], [3, 4]])
    np.testing.assert_array_equal(parsed.Y[:, 0], [1, 0])
    err = rejected("d.csv", b"1,0.5,2\n0,3,4\n", LIMITS, target="label")
    assert err.status == 422
    assert "not a column number from 0 to 2" in err.detail and "header=yes" in err.detail


def test_csv_header_auto_keeps_a_named_header():
    parsed = parse_upload("d.csv", b"x1,x2,y\n0.5,1,0\n2,3,1\n", LIMITS, header="auto")
    np.testing.assert_array_equal(parsed.X, [[0.5, 1], [2, 3]])


def test_csv_header_auto_refuses_a_line_that_may_be_either_naming_the_option():
    # "0,1,label" may be the columns' names or an example of class "label": auto does not guess.
    err = rejected("d.csv", b"0,1,label\n2,3,cat\n4,5,dog\n", LIMITS)
    assert err.status == 422
    assert "line 1 may be a header or an example" in err.detail
    assert "header=yes" in err.detail and "header=no" in err.detail


def test_csv_header_yes_and_no_settle_the_ambiguous_line():
    data = b"0,1,label\n2,3,cat\n4,5,dog\n"
    named = parse_upload("d.csv", data, LIMITS, header="yes")
    np.testing.assert_array_equal(named.X, [[2, 3], [4, 5]])
    assert named.classes == ["cat", "dog"]
    rows = parse_upload("d.csv", data, LIMITS, header="no")
    np.testing.assert_array_equal(rows.X, [[0, 1], [2, 3], [4, 5]])
    assert rows.classes == ["cat", "dog", "label"]


def test_csv_header_yes_takes_a_numeric_first_line_as_names():
    parsed = parse_upload("d.csv", b"1,2,3\n4,5,1\n6,7,0\n", LIMITS, header="yes")
    np.testing.assert_array_equal(parsed.X, [[4, 5], [6, 7]])
    parsed = parse_upload("d.csv", b"1,2,3\n4,5,1\n6,7,0\n", LIMITS, header="yes", target="2")  # the column named "2"
    np.testing.assert_array_equal(parsed.X, [[4, 1], [6, 0]])
    np.testing.assert_array_equal(parsed.Y[:, 0], [5, 7])


def test_csv_header_no_reads_a_lone_line_and_reports_line_numbers_of_data():
    parsed = parse_upload("d.csv", b"\n7,8,1\n", LIMITS, header="no")
    np.testing.assert_array_equal(parsed.X, [[7, 8]])
    err = rejected("d.csv", b"1,2,0\n3,x,1\n", LIMITS, header="no")
    assert err.status == 422 and "line 2, column '1': 'x' is not a number" in err.detail
    err = rejected("d.csv", b"1,2,0\n3,1\n", LIMITS)
    assert err.status == 422 and "line 2 has 2 fields; the first row has 3" in err.detail


def test_csv_header_option_is_checked():
    err = rejected("d.csv", b"1,2,0\n", LIMITS, header="maybe")
    assert err.status == 422 and "header must be 'auto', 'yes' or 'no'" in err.detail


def test_the_upload_route_passes_the_header_option_through_the_sandbox(client):
    data = b"0,1,label\n2,3,cat\n4,5,dog\n"
    files = {"file": ("d.csv", data, "text/csv")}
    refused = client.post("/v1/datasets", files=files)
    assert refused.status_code == 422, refused.text
    assert "header=yes" in refused.json()["detail"]
    as_rows = client.post("/v1/datasets", files=files, data={"header": "no"})
    assert as_rows.status_code == 201, as_rows.text
    assert as_rows.json()["n_examples"] == 3 and as_rows.json()["classes"] == ["cat", "dog", "label"]
    named = client.post("/v1/datasets", files=files, data={"header": "yes"})
    assert named.status_code == 201, named.text
    assert named.json()["n_examples"] == 2
    bad = client.post("/v1/datasets", files=files, data={"header": "maybe"})
    assert bad.status_code == 422, bad.text
