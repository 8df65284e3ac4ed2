"""A bounded property-based fuzz of the three parsers: valid small files with bytes flipped,
overwritten, inserted, deleted or cut off. The only outcomes allowed are an UploadError with a 4xx
status, or a valid dataset (2-D finite arrays with as many label rows as examples).

HDF5 is parsed in a child process (with an address-space limit), so a crash inside libhdf5 fails
this test with the input saved, instead of killing pytest.
"""

from __future__ import annotations

import io
import multiprocessing
import resource

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnnq.service.uploads import ParsedDataset, UploadError, UploadLimits, parse_upload

LIMITS = UploadLimits(max_examples=10_000, max_features=1_000, max_array_bytes=8_000_000, max_classes=50)
FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CHILD_MEMORY = 2 * 1024**3


def _npz(compressed: bool) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(5)
    save = np.savez_compressed if compressed else np.savez
    save(buf, X=rng.random((6, 3)).astype(np.float32), Y=np.array([0, 1, 2, 1, 0, 2]))
    return buf.getvalue()


def _h5(**options) -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("X", data=np.arange(24.0).reshape(8, 3), **options)
        f.create_dataset("Y", data=np.arange(8) % 2)
    return buf.getvalue()


SEEDS = {
    "npz": [_npz(False), _npz(True)],
    "csv": [b"a,b,label\n1.5,2,cat\n3,4e-1,dog\n-5,6,cat\n", b'x,y\r\n"1",0\r\n2,1\r\n3,0\r\n'],
    "h5": [_h5(), _h5(chunks=(2, 3), compression="gzip", shuffle=True, fletcher32=True)],
}


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[pos : pos + len(chunk)] = chunk
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        else:
            del data[pos:]
    return bytes(data)


def _outcome(filename: str, data: bytes) -> tuple:
    """('error', status) or ('ok', problems with the dataset: empty when it is valid)."""
    try:
        parsed = parse_upload(filename, data, LIMITS)
    except UploadError as exc:
        return ("error", exc.status, exc.detail)
    return ("ok", _invalid(parsed))


def _invalid(parsed) -> list[str]:
    if not isinstance(parsed, ParsedDataset):
        return [f"returned {type(parsed).__name__}"]
    X, Y = parsed.X, parsed.Y
    problems = []
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0] or X.shape[0] == 0:
        problems.append(f"shapes X {X.shape}, Y {Y.shape}")
    if not (np.isfinite(X).all() and np.isfinite(Y).all()):
        problems.append("non-finite values")
    if parsed.label_kind not in ("binary", "integer", "onehot", "continuous"):
        problems.append(f"label_kind {parsed.label_kind!r}")
    if parsed.classes is not None and len(parsed.classes) > LIMITS.max_classes:
        problems.append(f"{len(parsed.classes)} classes")
    return problems


def _check(outcome: tuple) -> None:
    if outcome[0] == "error":
        assert 400 <= outcome[1] < 500, outcome
        assert outcome[2] and len(outcome[2]) < 2000
    else:
        assert outcome[1] == [], outcome


@FUZZ
@given(data=mutated(SEEDS["npz"]))
def test_npz_parser_answers_4xx_or_a_valid_dataset(data):
    _check(_outcome("f.npz", data))


@FUZZ
@given(data=mutated(SEEDS["csv"]))
def test_csv_parser_answers_4xx_or_a_valid_dataset(data):
    _check(_outcome("f.csv", data))


def _child(conn) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    while True:
        data = conn.recv_bytes()
        try:
            conn.send(_outcome("f.h5", data))
        except BaseException as exc:  # anything but an UploadError is the finding
            conn.send(("raised", f"{type(exc).__name__}: {exc}"))


class _Parser:
    """One child process that parses HDF5 uploads sent over a pipe; restarted if it dies."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.proc = None

    def parse(self, data: bytes) -> tuple | None:
        if self.proc is None or not self.proc.is_alive():
            self.conn, child_end = self.ctx.Pipe()
            self.proc = self.ctx.Process(target=_child, args=(child_end,), daemon=True)
            self.proc.start()
            child_end.close()
        self.conn.send_bytes(data)
        if not self.conn.poll(60):
            self.proc.kill()
            return None
        try:
            return self.conn.recv()
        except EOFError:
            self.proc.join()
            return None

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


@pytest.fixture(scope="module")
def h5_parser():
    parser = _Parser()
    yield parser
    parser.close()


def test_h5_parser_answers_4xx_or_a_valid_dataset(h5_parser, tmp_path):
    @FUZZ
    @given(data=mutated(SEEDS["h5"]))
    def fuzz(data):
        outcome = h5_parser.parse(data)
        if outcome is None:
            saved = tmp_path / "crash.h5"
            saved.write_bytes(data)
            pytest.fail(f"the parser process died or hung on {saved} (exit code {h5_parser.proc.exitcode})")
        _check(outcome)

    fuzz()
