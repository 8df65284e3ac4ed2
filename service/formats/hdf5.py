"""HDF5 (.h5): only the two named datasets are opened, and only after everything that could reach
outside the uploaded bytes (external raw storage, external links, virtual datasets, soft links that
leave the file's datasets, filters run by plugins) or blow up when read (declared size, expansion
ratio, chunk count and chunk size) has been checked from the metadata.

Data is read into preallocated arrays, a bounded number of chunks per read: libhdf5 keeps a few
kilobytes of bookkeeping per chunk a read touches, so one read of millions of tiny chunks is a
memory bomb even when the chunks are empty.
"""

from __future__ import annotations

import io
import itertools
import math
import os

import numpy as np

from dnnq.service.formats.common import UploadError, UploadLimits, check_declared, declared_bytes, short

__all__ = ["read_h5"]

MAX_CHUNKS = 1_000_000  # per dataset; each chunk costs a B-tree entry and a lookup
CHUNKS_PER_READ = 4096  # bounds libhdf5's per-read chunk bookkeeping
MIN_FILE_BYTES_PER_CHUNK = 16  # an allocated chunk costs more than this in the file
MAX_CHUNK_BYTES = 64 * 1024 * 1024  # a chunk larger than this must not be larger than its dataset
MAX_SOFT_LINK_HOPS = 16
_FILTERS = {1: "gzip/deflate", 2: "shuffle", 3: "fletcher32", 32000: "lzf"}
_BROKEN = (
    OSError,
    ValueError,
    KeyError,
    RuntimeError,
    TypeError,
    IndexError,
    OverflowError,
    UnicodeError,
    NotImplementedError,
    MemoryError,
)
_plugins_off = False


def _disable_plugins(h5pl) -> None:
    """No search path, so no filter id in an upload can make libhdf5 dlopen a plugin."""
    global _plugins_off
    if not _plugins_off:
        while h5pl.size() > 0:
            h5pl.remove(0)
        _plugins_off = True


def read_h5(
    source: bytes | os.PathLike, upload_bytes: int, limits: UploadLimits, x_key: str, y_key: str
) -> tuple[np.ndarray, np.ndarray]:
    import h5py
    import h5py.h5pl

    _disable_plugins(h5py.h5pl)
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            f = h5py.File(io.BytesIO(source), "r")
        else:
            f = h5py.File(os.fspath(source), "r", locking=False)
    except _BROKEN:
        raise UploadError(422, "This .h5 file could not be opened as HDF5.") from None
    with f:
        datasets = [(key, _find_dataset(f, key)) for key in (x_key, y_key)]
        info = [(key, ds, _inspect(ds, key)) for key, ds in datasets]
        check_declared([(key, shape, dtype.itemsize) for key, _, (shape, dtype, _) in info], upload_bytes, limits)
        for key, _, (shape, dtype, chunks) in info:
            _check_chunks(key, shape, dtype, chunks, upload_bytes)
        X, Y = (_read(ds, key, shape, dtype, chunks) for key, ds, (shape, dtype, chunks) in info)
    return X, Y


def _find_dataset(f, key: str):
    """Walk `key` link by link from the root, never following an external link: every hop must be a
    hard link, or a soft link that resolves (in this file) to what the path needs there."""
    import h5py

    try:
        obj = _walk(f, key, 0)
    except UploadError:
        raise
    except _BROKEN as exc:
        raise UploadError(422, f"Dataset {key!r} in this .h5 file could not be looked up: {short(exc)}.") from None
    if obj is None:
        raise UploadError(
            422,
            f"This .h5 file has no dataset {key!r} (found {_top_datasets(f)}); "
            "name them with the form fields x_key and y_key.",
        )
    if not isinstance(obj, h5py.Dataset):
        raise UploadError(
            422,
            f"{key!r} in this .h5 file is not a dataset (a group or a type); name a dataset "
            "with the form fields x_key and y_key.",
        )
    return obj


def _walk(f, path: str, hops: int, start=None):
    import h5py

    node = f if start is None or path.startswith("/") else start
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts:
        return node
    for i, part in enumerate(parts):
        if not isinstance(node, h5py.Group):
            return None
        link = node.get(part, getlink=True)
        if link is None:
            return None
        if isinstance(link, h5py.HardLink):
            node = node.get(part)
        elif isinstance(link, h5py.SoftLink):
            if hops >= MAX_SOFT_LINK_HOPS:
                raise UploadError(
                    422,
                    f"{path!r} in this .h5 file goes through more than {MAX_SOFT_LINK_HOPS} "
                    "soft links; store the datasets themselves under the names you upload.",
                )
            target = _walk(f, link.path, hops + 1, start=node)
            if target is None:
                raise UploadError(
                    422,
                    f"{'/'.join(parts[: i + 1])!r} in this .h5 file is a soft link to {link.path!r}, which is "
                    "not in the file; store the dataset itself under that name.",
                )
            node = target
        elif isinstance(link, h5py.ExternalLink):
            raise UploadError(
                422,
                f"{'/'.join(parts[: i + 1])!r} in this .h5 file is an external link to another file; uploads "
                "must hold their data themselves (copy the dataset into the file).",
            )
        else:
            raise UploadError(
                422,
                f"{'/'.join(parts[: i + 1])!r} in this .h5 file is a user-defined link; store "
                "the dataset itself under that name.",
            )
    return node


def _top_datasets(f, most: int = 20) -> list[str]:
    """Names of datasets at the top level, found without following any link out of the file."""
    import h5py

    found = []
    try:
        for name in itertools.islice(f, 1000):
            if isinstance(f.get(name, getlink=True), h5py.HardLink) and f.get(name, getclass=True) is h5py.Dataset:
                found.append(name)
                if len(found) >= most:
                    break
    except _BROKEN:
        pass
    return sorted(found)


def _inspect(ds, key: str) -> tuple[tuple, np.dtype, tuple | None]:
    """(shape, dtype, chunks), refusing storage outside the file and filters outside the allow-list."""
    from h5py import h5d

    try:
        dcpl = ds.id.get_create_plist()
        layout = dcpl.get_layout()
        if layout == h5d.VIRTUAL:
            raise UploadError(
                422,
                f"Dataset {key!r} is a virtual dataset (its data lives in other files); "
                "uploads must hold their data themselves: save a plain dataset.",
            )
        if layout not in (h5d.COMPACT, h5d.CONTIGUOUS, h5d.CHUNKED):
            raise UploadError(
                422, f"Dataset {key!r} has an unsupported storage layout ({layout}); save a plain dataset."
            )
        if dcpl.get_external_count() > 0:
            raise UploadError(
                422,
                f"Dataset {key!r} keeps its data in an external file; uploads must hold "
                "their data themselves: save a plain dataset.",
            )
        for i in range(dcpl.get_nfilters()):
            code = dcpl.get_filter(i)[0]
            if code not in _FILTERS:
                raise UploadError(
                    422,
                    f"Dataset {key!r} uses HDF5 filter {code}, which this service does not run; "
                    f"accepted filters are {', '.join(_FILTERS.values())}. Save it with compression='gzip' or none.",
                )
        shape, chunks = ds.shape, ds.chunks
        dtype = ds.dtype
    except UploadError:
        raise
    except _BROKEN as exc:
        raise UploadError(422, f"Dataset {key!r} in this .h5 file could not be inspected: {short(exc)}.") from None
    if dtype.kind not in "biuf" or dtype.subdtype is not None:
        raise UploadError(
            422,
            f"Dataset {key!r} has dtype {dtype}; only numeric data is accepted "
            "(encode string labels as integers, or upload a CSV).",
        )
    if shape is None:
        raise UploadError(422, f"Dataset {key!r} is empty (no dataspace); it needs at least one example.")
    return tuple(int(d) for d in shape), dtype, None if chunks is None else tuple(int(c) for c in chunks)


def _check_chunks(key: str, shape: tuple, dtype: np.dtype, chunks: tuple | None, upload_bytes: int) -> None:
    if chunks is None:
        return
    if len(chunks) != len(shape) or any(c < 1 for c in chunks):
        raise UploadError(422, f"Dataset {key!r} declares chunks {chunks} for shape {shape}; the file is damaged.")
    n_chunks = math.prod(-(-d // c) for d, c in zip(shape, chunks, strict=True))
    most = min(MAX_CHUNKS, max(CHUNKS_PER_READ, upload_bytes // MIN_FILE_BYTES_PER_CHUNK))
    if n_chunks > most:
        raise UploadError(
            422,
            f"Dataset {key!r} declares {n_chunks} chunks of shape {chunks} in a {upload_bytes}-byte file; "
            f"the limit is {most}. Save it with larger chunks (h5py chunks=True) or none.",
        )
    chunk_bytes = declared_bytes(chunks, dtype.itemsize)
    if chunk_bytes > max(MAX_CHUNK_BYTES, declared_bytes(shape, dtype.itemsize)):
        raise UploadError(
            422,
            f"Dataset {key!r} declares {chunk_bytes}-byte chunks, larger than the dataset itself; save "
            "it with h5py chunks=True or none.",
        )


def _read(ds, key: str, shape: tuple, dtype: np.dtype, chunks: tuple | None) -> np.ndarray:
    out = np.empty(shape, dtype=dtype)
    try:
        if out.size == 0:
            return out
        if chunks is None or out.ndim == 0:
            ds.read_direct(out)
            return out
        for sel in _blocks(shape, chunks):
            ds.read_direct(out, sel, sel)
    except _BROKEN as exc:
        raise UploadError(
            422,
            f"Dataset {key!r} could not be read ({short(exc)}): the file is damaged. Save "
            "it again and upload the new file.",
        ) from None
    return out


def _blocks(shape: tuple, chunks: tuple):
    """Chunk-aligned boxes covering `shape`, each at most CHUNKS_PER_READ chunks, last axis first
    so a box is as contiguous in memory as it can be."""
    grid = [-(-d // c) for d, c in zip(shape, chunks, strict=True)]
    per_box = [1] * len(grid)
    budget = CHUNKS_PER_READ
    for axis in reversed(range(len(grid))):
        per_box[axis] = max(1, min(grid[axis], budget))
        budget = max(1, budget // per_box[axis])
    steps = [range(0, g, p) for g, p in zip(grid, per_box, strict=True)]
    for corner in itertools.product(*steps):
        yield tuple(
            slice(i * c, min(d, (i + p) * c)) for i, p, c, d in zip(corner, per_box, chunks, shape, strict=True)
        )
