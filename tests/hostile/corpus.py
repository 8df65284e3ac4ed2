"""Hostile upload files, generated: HDF5 that reaches outside its bytes or explodes when read, .npz
corruptions and bombs, CSV with odd line endings, long fields and wide headers.

`build_cases(canary, tmp)` is shared by the in-process parser tests (tests/hostile/test_parsers.py)
and the end-to-end suite against a real server. `canary` is a file whose contents must never be
disclosed; the HDF5 cases point at it (external raw storage naming it, an external link and a
virtual dataset whose target file holds its bytes). Each case's `expect` lists the statuses a
server may answer; names starting with `valid_` are uploads that must be accepted (201).
"""

from __future__ import annotations

import io
import pathlib
import struct
import zlib
from dataclasses import dataclass, field

import h5py
import numpy as np

__all__ = ["Case", "build_cases", "zip_archive", "npy_bytes"]

# Over the server's defaults (DNNQ_MAX_FEATURES 1,000,000; DNNQ_MAX_CLASSES 1000).
WIDE_COLUMNS = 1_000_002
MANY_CLASSES = 1_500


@dataclass
class Case:
    name: str
    filename: str
    data: bytes
    form: dict[str, str] = field(default_factory=dict)
    expect: tuple[int, ...] = (422,)


def build_cases(canary: pathlib.Path, tmp: pathlib.Path) -> list[Case]:
    canary, tmp = pathlib.Path(canary), pathlib.Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    return _h5_cases(canary, tmp) + _npz_cases() + _csv_cases()


# --- HDF5 ------------------------------------------------------------------------------------


def _h5(build) -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        build(f)
    return buf.getvalue()


def _secret_h5(canary: pathlib.Path, tmp: pathlib.Path) -> tuple[pathlib.Path, int]:
    """An HDF5 file on the server's disk whose dataset 'secret' holds the canary's bytes."""
    secret = np.frombuffer(canary.read_bytes(), dtype=np.uint8)
    path = tmp / "secret.h5"
    with h5py.File(path, "w") as f:
        f["secret"] = secret.reshape(-1, 1)
    return path, len(secret)


def _h5_cases(canary: pathlib.Path, tmp: pathlib.Path) -> list[Case]:
    secret_path, n = _secret_h5(canary, tmp)
    size = canary.stat().st_size

    def external_storage(f):
        f.create_dataset("X", shape=(size, 1), dtype="u1", external=[(str(canary.resolve()), 0, size)])
        f["Y"] = np.zeros(size)

    def external_link(f):
        f["X"] = h5py.ExternalLink(str(secret_path.resolve()), "/secret")
        f["Y"] = np.zeros(n)

    def dangling_soft_link(f):
        f["X"] = h5py.SoftLink("/nowhere")
        f["Y"] = np.zeros(4)

    def soft_link_to_group(f):
        f.create_group("grp").create_dataset("inner", data=np.ones((4, 2)))
        f["X"] = h5py.SoftLink("/grp")
        f["Y"] = np.zeros(4)

    def virtual_dataset(f):
        layout = h5py.VirtualLayout(shape=(n, 1), dtype="u1")
        layout[:] = h5py.VirtualSource(str(secret_path.resolve()), "secret", shape=(n, 1))
        f.create_virtual_dataset("X", layout)
        f["Y"] = np.zeros(n)

    def chunk_bomb(f):  # ten million one-element chunks, none stored: a ~2 KB file
        f.create_dataset("X", shape=(10_000_000, 1), dtype="f8", chunks=(1, 1))
        f["Y"] = np.zeros(10)

    def overflowing_shape(f):  # 2**64 elements: the element count is 0 in int64 arithmetic
        f.create_dataset("X", shape=(2**32, 2**32), dtype="f8", chunks=(1, 4))
        f["Y"] = np.zeros(4)

    def unknown_filter(f):  # optional, so libhdf5 writes it unfiltered; a reader would look up filter 32998
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((4, 2))
        dcpl.set_filter(32998, h5py.h5z.FLAG_OPTIONAL, (1, 2, 3))
        space = h5py.h5s.create_simple((8, 2))
        h5py.h5d.create(f.id, b"X", h5py.h5t.IEEE_F64LE, space, dcpl=dcpl)
        f["X"][...] = np.ones((8, 2))
        f["Y"] = np.zeros(8)

    def string_dtype(f):
        f["X"] = np.array([[b"a", b"b"], [b"c", b"d"]])
        f["Y"] = np.zeros(2)

    named = [
        ("h5_external_storage", external_storage, (422,)),
        ("h5_external_link", external_link, (422,)),
        ("h5_dangling_soft_link", dangling_soft_link, (422,)),
        ("h5_soft_link_to_group", soft_link_to_group, (422,)),
        ("h5_virtual_dataset", virtual_dataset, (422,)),
        ("h5_chunk_bomb", chunk_bomb, (413, 422)),
        ("h5_overflowing_shape", overflowing_shape, (413,)),
        ("h5_unknown_filter", unknown_filter, (422,)),
        ("h5_string_dtype", string_dtype, (422,)),
    ]
    cases = [
        Case(name, f"{name}.h5", _h5(build), {"x_key": "X", "y_key": "Y"}, expect) for name, build, expect in named
    ]
    cases.append(Case("h5_corrupt_chunk", "h5_corrupt_chunk.h5", _corrupt_chunk_h5(), {}, (422,)))
    return cases


def _corrupt_chunk_h5() -> bytes:
    """A gzip-compressed dataset whose first chunk's deflate stream is overwritten with noise."""
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("X", data=np.arange(4000.0).reshape(1000, 4), chunks=(250, 4), compression="gzip")
        f["Y"] = np.zeros(1000)
    data = bytearray(buf.getvalue())
    with h5py.File(io.BytesIO(bytes(data)), "r") as f:
        info = f["X"].id.get_chunk_info(0)
    start = info.byte_offset + 2  # past the zlib header, into the compressed blocks
    data[start : start + 64] = np.random.default_rng(13).integers(0, 256, 64, dtype=np.uint8).tobytes()
    return bytes(data)


# --- npz -------------------------------------------------------------------------------------


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def _deflate(raw: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(raw) + c.flush()


def zip_archive(members: list[dict]) -> bytes:
    """A zip written by hand, so each field can lie. A member: name, data (the stored bytes), and
    optionally method (0 stored, 8 deflate), crc, file_size, flags."""
    out, central = bytearray(), bytearray()
    for m in members:
        name = m["name"].encode()
        data = m["data"]
        method = m.get("method", 0)
        crc = m.get("crc", zlib.crc32(m.get("raw", data)))
        file_size = m.get("file_size", len(m.get("raw", data)))
        flags = m.get("flags", 0)
        offset = len(out)
        out += (
            struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, flags, method, 0, 0x21, crc, len(data), file_size, len(name), 0)
            + name
            + data
        )
        central += (
            struct.pack(
                "<4s6H3L5H2L",
                b"PK\x01\x02",
                20,
                20,
                flags,
                method,
                0,
                0x21,
                crc,
                len(data),
                file_size,
                len(name),
                0,
                0,
                0,
                0,
                0o644 << 16,
                offset,
            )
            + name
        )
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(out), 0)
    return bytes(out + central + end)


def _deflated_member(name: str, raw: bytes, **overrides) -> dict:
    return {"name": name, "data": _deflate(raw), "raw": raw, "method": 8, **overrides}


def _zeros_bomb(n_bytes: int) -> dict:
    """X.npy of `n_bytes` of float64 zeros, deflated by repeating one fully flushed block: a
    ~1000:1 stream built without compressing (or holding) the whole array."""
    count = n_bytes // 8
    header = _npy_header(f"{{'descr': '<f8', 'fortran_order': False, 'shape': ({count}, 1), }}")
    block = b"\0" * (1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    piece = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)  # history reset: every copy is valid as is
    blocks, rest = divmod(count * 8, len(block))
    crc = zlib.crc32(header)
    for _ in range(blocks):
        crc = zlib.crc32(block, crc)
    tail = c.compress(b"\0" * rest) + c.flush()
    crc = zlib.crc32(b"\0" * rest, crc)
    return {
        "name": "X.npy",
        "data": head + piece * blocks + tail,
        "method": 8,
        "crc": crc,
        "file_size": len(header) + count * 8,
    }


def _npy_header(text: str) -> bytes:
    body = text.encode("latin1")
    pad = 64 - (10 + len(body) + 1) % 64
    body += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body


def _npz_cases() -> list[Case]:
    X, Y = np.arange(12.0).reshape(6, 2), np.array([0.0, 1, 0, 1, 0, 1])
    x_raw, y_raw = npy_bytes(X), npy_bytes(Y)
    y_member = {"name": "Y.npy", "data": y_raw}

    good_x = _deflated_member("X.npy", x_raw)
    broken = bytearray(good_x["data"])
    broken[0] = 0xFF  # first deflate block: BTYPE 11, reserved ("invalid block type")
    malformed = b"\x93NUMPY\x01\x00" + struct.pack("<H", 22) + b"{'descr': '<f8', 'shap\n"
    objects = npy_bytes(np.array([{"a": 1}, {"b": 2}] * 3, dtype=object))
    bomb_bytes = 800 * 1000 * 1000

    npz = {
        "npz_bad_crc": [{**good_x, "crc": zlib.crc32(x_raw) ^ 0xFFFF}, y_member],
        "npz_corrupt_deflate": [{**good_x, "data": bytes(broken)}, y_member],
        "npz_encrypted_flag": [{**good_x, "flags": 0x1}, y_member],
        "npz_unknown_compression_method": [{"name": "X.npy", "data": x_raw, "method": 77}, y_member],
        "npz_malformed_npy_header": [{"name": "X.npy", "data": malformed}, y_member],
        "npz_object_array": [{"name": "X.npy", "data": objects}, y_member],
        "npz_directory_size_lies": [{"name": "X.npy", "data": x_raw, "file_size": len(x_raw) - 48}, y_member],
        "npz_header_disagrees_with_directory": [{"name": "X.npy", "data": x_raw[:-48]}, y_member],
        "npz_truncated_member": [{"name": "X.npy", "data": x_raw[:-40], "raw": x_raw}, y_member],
        "npz_compression_bomb": [_zeros_bomb(bomb_bytes), {"name": "Y.npy", "data": npy_bytes(np.zeros(1))}],
        "npz_too_many_classes": [
            {"name": "X.npy", "data": npy_bytes(np.ones((3, 2)))},
            {"name": "Y.npy", "data": npy_bytes(np.array([0, 1, 5000]))},
        ],
    }
    expect = {"npz_compression_bomb": (413,), "npz_too_many_classes": (413,)}
    return [
        Case(name, f"{name}.npz", zip_archive(members), {}, expect.get(name, (422,))) for name, members in npz.items()
    ]


# --- CSV -------------------------------------------------------------------------------------


def _csv_cases() -> list[Case]:
    rows = [f"{i * 0.5},{i % 3},{i % 2}" for i in range(8)]
    long_field = "1" * 131_073
    classes = "x,label\n" + "".join(f"{i},class{i}\n" for i in range(MANY_CLASSES))
    return [
        Case("valid_csv_cr_only", "valid_cr.csv", ("a,b,y\r" + "\r".join(rows) + "\r").encode(), {}, (201,)),
        Case("valid_csv_crlf", "valid_crlf.csv", ("a,b,y\r\n" + "\r\n".join(rows) + "\r\n").encode(), {}, (201,)),
        Case("csv_field_over_csv_limit", "long.csv", f"a,y\n{long_field},1\n2,0\n".encode(), {}, (422,)),
        Case("csv_quoted_field_over_csv_limit", "longq.csv", f'a,y\n"{long_field}",1\n2,0\n'.encode(), {}, (422,)),
        Case(
            "csv_wide_header",
            "wide.csv",
            ",".join("c" * WIDE_COLUMNS).encode() + b"\n" + b"1," * (WIDE_COLUMNS - 1) + b"1\n",
            {},
            (413, 422),
        ),
        Case("csv_nul_bytes", "nul.csv", b"a,b,y\n1,2\x00,0\n3,4,1\n", {}, (422,)),
        Case("csv_invalid_utf8", "latin.csv", b"a,b,y\n1,2,caf\xe9\n3,4,th\xe9\n", {}, (422,)),
        Case("csv_too_many_classes", "classes.csv", classes.encode(), {}, (413,)),
    ]
