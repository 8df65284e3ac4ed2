"""A predict body whose .npy header declares a shape numpy cannot build (a zero
dimension beside one past int64's range, more than 64 dimensions) is a 4xx, never a 500."""

from __future__ import annotations

import io
import zipfile

import pytest

from dnnq.service.errors import Problem
from dnnq.service.routes.predict import _read_npy, _read_npz_x
from dnnq.service.settings import ApiSettings

LIMIT = 8 * 1024 * 1024

SHAPES = [
    "(4611686018427387904, 0)",  # 2**62 rows of nothing: reshape's "array is too big"
    "(9223372036854775808, 0)",  # 2**63: "Maximum allowed dimension exceeded"
    "(1, 0, 4611686018427387904)",
    "(" + "1, " * 65 + ")",  # 65 dimensions: "maximum supported dimension for an ndarray is 64"
    "(" + "1, " * 62 + "0, 4611686018427387904)",
]


def npy_member(shape: str) -> bytes:
    d = "{'descr': '<f8', 'fortran_order': False, 'shape': " + shape + ", }"
    d += " " * (64 - (10 + len(d) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(d).to_bytes(2, "little") + d.encode()


@pytest.mark.parametrize("shape", SHAPES)
def test_unbuildable_npy_shape_is_a_4xx(shape):
    with pytest.raises(Problem) as caught:
        _read_npy(npy_member(shape), LIMIT)
    assert 400 <= caught.value.status < 500


@pytest.mark.parametrize("shape", SHAPES)
def test_unbuildable_npz_shape_is_a_4xx(shape):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("X.npy", npy_member(shape))
    with pytest.raises(Problem) as caught:
        _read_npz_x(buf.getvalue(), ApiSettings())
    assert 400 <= caught.value.status < 500


def test_ordinary_shapes_still_read():
    import numpy as np

    for a in (np.ones((3, 4)), np.ones(4), np.ones((2, 2, 2)), np.ones((1,) * 31 + (4,))):
        out = io.BytesIO()
        np.save(out, a)
        assert _read_npy(out.getvalue(), LIMIT).size == a.size
