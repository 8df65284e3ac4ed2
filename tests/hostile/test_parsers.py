"""Every hostile corpus case through parse_upload, in this process: each is refused with its
expected status before any data is read (so none can reach the canary or crash libhdf5), and no
detail discloses the canary's contents. valid_* cases parse."""

from __future__ import annotations

import atexit
import pathlib
import shutil
import tempfile

import h5py
import numpy as np
import pytest

from dnnq.service.uploads import ParsedDataset, UploadError, UploadLimits, parse_upload
from tests.hostile.corpus import build_cases

SECRET = "dnnq-canary-7f3e9a1c-do-not-disclose"
# The server's defaults: DNNQ_MAX_EXAMPLES, DNNQ_MAX_FEATURES, 4 x DNNQ_MAX_UPLOAD_BYTES, DNNQ_MAX_CLASSES.
LIMITS = UploadLimits(
    max_examples=10_000_000,
    max_features=1_000_000,
    max_array_bytes=1024**3,
    max_classes=1000,
    max_expansion_ratio=200.0,
)


def _build() -> dict:
    """Built once at collection, so each case is its own test; removed when the session ends."""
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="dnnq-hostile-"))
    atexit.register(shutil.rmtree, tmp, True)
    canary = tmp / "canary.txt"
    canary.write_text((SECRET + "\n") * 8)
    return {case.name: case for case in build_cases(canary, tmp / "built")}


CASES = _build()
NAMES = list(CASES)


@pytest.fixture(scope="module")
def corpus() -> dict:
    return CASES


def test_corpus_covers_every_class_of_hostile_file():
    for needed in [
        "h5_external_storage",
        "h5_external_link",
        "h5_dangling_soft_link",
        "h5_soft_link_to_group",
        "h5_virtual_dataset",
        "h5_chunk_bomb",
        "h5_overflowing_shape",
        "h5_corrupt_chunk",
        "h5_unknown_filter",
        "h5_string_dtype",
        "npz_bad_crc",
        "npz_corrupt_deflate",
        "npz_encrypted_flag",
        "npz_unknown_compression_method",
        "npz_malformed_npy_header",
        "npz_compression_bomb",
        "npz_object_array",
        "npz_directory_size_lies",
        "valid_csv_cr_only",
        "csv_field_over_csv_limit",
        "csv_wide_header",
        "csv_nul_bytes",
        "csv_invalid_utf8",
        "csv_too_many_classes",
    ]:
        assert needed in NAMES


def test_hdf5_cases_really_point_at_the_canary(corpus, tmp_path):
    """Guard the corpus itself: read without our checks, the external-storage case discloses the canary."""
    case = corpus["h5_external_storage"]
    path = tmp_path / case.filename
    path.write_bytes(case.data)
    with h5py.File(path, "r") as f:
        leaked = f["X"][()].tobytes()
    assert SECRET.encode() in leaked
    for name in ("h5_external_link", "h5_virtual_dataset"):
        path = tmp_path / corpus[name].filename
        path.write_bytes(corpus[name].data)
        with h5py.File(path, "r") as f:
            assert SECRET.encode() in f["X"][()].tobytes()


@pytest.mark.parametrize("name", NAMES)
def test_hostile_case_is_refused_with_its_status(corpus, name, tmp_path):
    case = corpus[name]
    for source in (case.data, _as_file(tmp_path, case)):
        if name.startswith("valid_"):
            assert case.expect == (201,)
            parsed = parse_upload(case.filename, source, LIMITS, **case.form)
            assert isinstance(parsed, ParsedDataset)
            assert parsed.X.shape[0] == parsed.Y.shape[0] > 0
            assert np.isfinite(parsed.X).all() and np.isfinite(parsed.Y).all()
            continue
        with pytest.raises(UploadError) as info:
            parse_upload(case.filename, source, LIMITS, **case.form)
        assert info.value.status in case.expect, info.value.detail
        assert SECRET not in info.value.detail and "canary" not in info.value.detail.lower()
        assert len(info.value.detail) < 1000


def _as_file(tmp_path: pathlib.Path, case) -> pathlib.Path:
    path = tmp_path / case.filename
    path.write_bytes(case.data)
    return path


def test_cr_only_csv_reads_every_row(corpus):
    parsed = parse_upload("d.csv", corpus["valid_csv_cr_only"].data, LIMITS)
    assert parsed.X.shape == (8, 2)
    np.testing.assert_array_equal(parsed.X[:, 0], np.arange(8) * 0.5)
    np.testing.assert_array_equal(parsed.Y[:, 0], np.arange(8) % 2)


def test_no_hdf5_plugin_can_load_after_a_parse(corpus):
    with pytest.raises(UploadError):
        parse_upload("f.h5", corpus["h5_unknown_filter"].data, LIMITS)
    assert h5py.h5pl.size() == 0


def test_compression_bomb_is_refused_by_the_ratio_when_under_the_size_limit(corpus):
    case = corpus["npz_compression_bomb"]
    assert len(case.data) < 1_000_000
    with pytest.raises(UploadError) as info:
        parse_upload(case.filename, case.data, LIMITS)
    assert info.value.status == 413
    assert "DNNQ_MAX_EXPANSION_RATIO" in info.value.detail
    # and by the size limit, under a lower one
    small = UploadLimits(10_000_000, 1_000_000, 100_000_000)
    with pytest.raises(UploadError) as info:
        parse_upload(case.filename, case.data, small)
    assert info.value.status == 413 and "limit is 100000000" in info.value.detail


def test_chunk_bomb_under_the_ratio_floor_is_refused_by_its_chunk_count(tmp_path):
    """A few KB declaring 5 MB in five million one-byte chunks: under 64 MiB, so the ratio does
    not apply; the chunk count refuses it before any read."""
    path = tmp_path / "bomb.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("X", shape=(5_000_000, 1), dtype="u1", chunks=(1, 1))
        f["Y"] = np.zeros(5_000_000, dtype="u1")[:3]
    assert path.stat().st_size < 10_000
    with pytest.raises(UploadError) as info:
        parse_upload("bomb.h5", path, LIMITS)
    assert info.value.status == 422
    assert "5000000 chunks" in info.value.detail and "larger chunks" in info.value.detail
