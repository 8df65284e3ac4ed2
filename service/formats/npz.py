"""numpy .npz (a zip of .npy members): sizes from the zip directory and each .npy header are checked
before anything is decompressed, and each array is decompressed straight into a preallocated array.

Client data is never unpickled: object dtypes are refused from the header.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from typing import BinaryIO, cast

import numpy as np

from dnnq.service.formats.common import (
    UploadError,
    UploadLimits,
    check_declared,
    declared_bytes,
    open_source,
    short,
)

__all__ = ["read_npz"]

MAX_DIRECTORY_BYTES = 1024 * 1024  # the zip's central directory: a two-array .npz needs a few hundred bytes
READ_BLOCK = 4 * 1024 * 1024  # decompress this much at a time into the preallocated array
_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
_BROKEN = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    KeyError,
    NotImplementedError,
    RuntimeError,
    OverflowError,
    UnicodeError,
    IndexError,
)


def _corrupt(what: str, exc: BaseException) -> UploadError:
    return UploadError(
        422, f"This .npz is damaged ({what}: {short(exc)}); save it again with numpy.savez and upload the new file."
    )


def read_npz(
    source: bytes | os.PathLike, upload_bytes: int, limits: UploadLimits, x_key: str, y_key: str
) -> tuple[np.ndarray, np.ndarray]:
    with open_source(source) as fileobj:
        _check_directory_size(fileobj)
        try:
            zf = zipfile.ZipFile(fileobj)
        except zipfile.BadZipFile:
            raise UploadError(422, "This .npz is not a valid zip archive: save it with numpy.savez.") from None
        except _BROKEN as exc:
            raise _corrupt("zip directory", exc) from None
        with zf:
            members = {info.filename: info for info in zf.infolist()}
            declared = sum(info.file_size for info in members.values())
            if declared > limits.max_array_bytes:
                raise UploadError(
                    413,
                    f"This .npz declares {declared} bytes uncompressed; the limit is "
                    f"{limits.max_array_bytes}. Upload a smaller dataset.",
                )
            wanted = []
            for key in (x_key, y_key):
                member = members.get(f"{key}.npy")
                if member is None:
                    found = sorted(n[:-4] for n in members if n.endswith(".npy"))[:20]
                    raise UploadError(
                        422,
                        f"This .npz has no array {key!r} (found {found}); "
                        f"save it as numpy.savez(f, {x_key}=..., {y_key}=...).",
                    )
                _check_member(member, key)
                wanted.append((key, member, _read_header(zf, member, key)))
            check_declared(
                [(key, shape, dtype.itemsize) for key, _, (shape, _, dtype, _) in wanted], upload_bytes, limits
            )
            X, Y = (_read_data(zf, member, key, *header) for key, member, header in wanted)
    return X, Y


def _check_directory_size(fileobj: BinaryIO) -> None:
    """zipfile builds an object per directory entry: bound the directory before it is parsed.
    zipfile's own private reader of the end record finds the directory's size; without it (another
    Python), no check."""
    end_record = getattr(zipfile, "_EndRecData", None)  # what ZipFile itself uses to find the directory
    size_field = getattr(zipfile, "_ECD_SIZE", None)  # the directory's size in that record
    if end_record is None or size_field is None:
        return
    try:
        record = end_record(fileobj)
    except _BROKEN:
        record = None
    fileobj.seek(0)
    if record is not None and record[size_field] > MAX_DIRECTORY_BYTES:
        raise UploadError(
            422,
            f"This .npz's zip directory is {record[size_field]} bytes (over "
            f"{MAX_DIRECTORY_BYTES}): an .npz holds a few arrays. Save only X and Y with numpy.savez.",
        )


def _check_member(member: zipfile.ZipInfo, key: str) -> None:
    if member.flag_bits & 0x1:
        raise UploadError(422, f"Array {key!r} in this .npz is encrypted; upload an unencrypted numpy.savez file.")
    if member.compress_type not in _METHODS:
        raise UploadError(
            422,
            f"Array {key!r} in this .npz uses zip compression method {member.compress_type}; only stored "
            "and deflate (numpy.savez, numpy.savez_compressed) are accepted.",
        )


def _read_header(zf: zipfile.ZipFile, member: zipfile.ZipInfo, key: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, header_bytes) from the .npy header, checked against the directory."""
    try:
        with zf.open(member) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version in ((2, 0), (3, 0)):  # 3.0 differs only in allowing UTF-8 field names
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unknown .npy format version {version}")
            header_bytes = fh.tell()
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise _corrupt(f"array {key!r}", exc) from None
    except Exception as exc:  # numpy parses the header's dict literal: SyntaxError, TokenError, ValueError...
        raise UploadError(
            422, f"Array {key!r} in this .npz has a bad .npy header ({short(exc)}); save it with numpy.savez."
        ) from None
    if dtype.hasobject:
        raise UploadError(
            422,
            f"Array {key!r} contains pickled objects; this service never unpickles "
            "uploads. Save numeric arrays (e.g. X.astype('float32')).",
        )
    if dtype.kind not in "biuf" or dtype.subdtype is not None:
        raise UploadError(
            422,
            f"{key} has dtype {dtype}; only numeric arrays are accepted "
            "(encode string labels as integers, or upload a CSV).",
        )
    if any(d < 0 for d in shape):
        raise UploadError(
            422, f"Array {key!r} in this .npz declares a negative shape {tuple(shape)}; save it again with numpy.savez."
        )
    data_bytes = declared_bytes(shape, dtype.itemsize)
    if header_bytes + data_bytes != member.file_size:
        raise UploadError(
            422,
            f"Array {key!r} in this .npz declares shape {tuple(shape)} of {dtype} ({data_bytes} bytes) but "
            f"the zip directory says the member is {member.file_size} bytes: the file is damaged or "
            "inconsistent. Save it again with numpy.savez.",
        )
    return tuple(int(d) for d in shape), fortran, dtype, header_bytes


def _read_data(
    zf: zipfile.ZipFile,
    member: zipfile.ZipInfo,
    key: str,
    shape: tuple[int, ...],
    fortran: bool,
    dtype: np.dtype,
    header_bytes: int,
) -> np.ndarray:
    out = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
    raw = (out.T if fortran else out).data.cast("B") if out.size else memoryview(b"")
    try:
        with cast(zipfile.ZipExtFile, zf.open(member)) as fh:  # typed IO[bytes], which has no readinto
            fh.read(header_bytes)
            done = 0
            while done < len(raw):
                n = fh.readinto(raw[done : done + READ_BLOCK])
                if not n:
                    raise EOFError(f"the data ends after {done} of {len(raw)} bytes")
                done += n
            if fh.read(1):  # reading to the end is also what makes zipfile check the CRC
                raise ValueError("data continues after the declared shape")
    except _BROKEN as exc:
        raise _corrupt(f"array {key!r}", exc) from None
    return out
