"""Parse uploaded datasets (.npz, .csv, .h5) into examples-first arrays.

Pure functions: the upload's bytes (or the path of a file holding them) in, `ParsedDataset` out, or
`UploadError(status, detail)`: no other exception leaves parse_upload. Nothing here touches Redis.
Sizes are checked from what the file declares BEFORE its arrays are read (zip members' sizes, .npy
headers, HDF5 dataset shapes and chunks, each against the limit and the expansion ratio), so a small
file that expands into a huge array is refused with a 413 without allocating it. Format features
that point outside the upload (HDF5 external storage and links, virtual datasets, filter plugins)
are refused before any data is read. Client data is never unpickled.

The parsers live in service.formats, one module per format; service/sandbox.py runs this in a
child process with hard limits, for what metadata checks cannot foresee (a corrupt file that
crashes libhdf5).
"""

from __future__ import annotations

import os
from typing import Literal, get_args

from dnnq.service.formats.common import (
    ParsedDataset,
    UploadError,
    UploadLimits,
    finish_arrays,
    labels_from,
    short,
    source_size,
)

__all__ = ["LAYOUTS", "Layout", "ParsedDataset", "UploadError", "UploadLimits", "labels_from", "parse_upload"]

Layout = Literal["examples_first", "features_first"]  # X as (m, n_x), or as (n_x, m)
LAYOUTS: tuple[Layout, ...] = get_args(Layout)

_FORMATS = {".npz": "npz", ".csv": "csv", ".h5": "h5", ".hdf5": "h5"}


def parse_upload(
    filename: str,
    source: bytes | os.PathLike,
    limits: UploadLimits,
    *,
    target: str | None = None,
    x_key: str = "X",
    y_key: str = "Y",
    layout: str = "examples_first",
    header: str = "auto",
) -> ParsedDataset:
    """Dispatch on the file extension; `layout="features_first"` accepts X as (n_x, m); `header`
    (auto, yes, no): whether a CSV's first line names its columns (service/formats/csvtext.py).

    `source` is the upload's bytes or a path to them; a path is read by the parser as it goes,
    never whole into memory first.
    """
    if layout not in LAYOUTS:
        raise UploadError(422, f"layout must be 'examples_first' or 'features_first'; got {layout!r}.")
    name = (filename or "").lower()
    kind = next((k for ext, k in _FORMATS.items() if name.endswith(ext)), None)
    if kind is None:
        raise UploadError(422, f"Unsupported file type {filename!r}: upload a .npz, .csv or .h5 file.")
    try:
        size = source_size(source)
    except OSError as exc:
        raise UploadError(422, f"The uploaded file could not be read: {short(exc)}.") from None
    if size == 0:
        raise UploadError(422, "The uploaded file is empty.")
    try:
        return _parse(kind, source, size, limits, target, x_key, y_key, layout, header)
    except UploadError:
        raise
    except MemoryError:
        raise UploadError(
            422, "This file could not be read within the parser's memory limit; upload a smaller dataset."
        ) from None
    except Exception as exc:  # the last net: a parser library's surprise is still the upload's fault
        raise UploadError(
            422,
            f"This .{kind} file could not be read ({type(exc).__name__}: {short(exc)}); "
            "save it again with numpy or h5py, or as comma-separated text.",
        ) from None


def _parse(
    kind: str,
    source: bytes | os.PathLike,
    size: int,
    limits: UploadLimits,
    target: str | None,
    x_key: str,
    y_key: str,
    layout: str,
    header: str = "auto",
) -> ParsedDataset:
    if kind == "csv":
        from dnnq.service.formats.csvtext import read_csv

        return read_csv(source, limits, target, header)
    if kind == "npz":
        from dnnq.service.formats.npz import read_npz

        X, Y = read_npz(source, size, limits, x_key, y_key)
    else:
        from dnnq.service.formats.hdf5 import read_h5

        X, Y = read_h5(source, size, limits, x_key, y_key)
    if layout == "features_first":
        if X.ndim != 2:
            raise UploadError(422, f"layout=features_first needs a 2-D X (n_x, m); got shape {X.shape}.")
        X = X.T
        Y = Y.T if Y.ndim == 2 else Y
    return finish_arrays(X, Y, limits)
