"""Fault 4: a real process writing an artifact through LocalArtifactStore is killed -9 mid-write.
Afterwards the key holds the previous complete content (never a torn file), and the API serves
bytes whose sha256 equals the ETag. (tests/workers/test_store.py has the in-process variants.)"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys

import httpx
import numpy as np
import pytest

from dnnq.workers import jobs
from tests.conftest import ROOT
from tests.faults.conftest import _signal_group, start_api, wait_for

pytestmark = pytest.mark.e2e

# The writer: puts `size` bytes under `key`. With --slow-fsync, os.fsync announces itself and hangs
# (the crash point between writing the temp file and renaming it); without, it writes a big payload.
WRITER = r"""
import os, sys, time
from dnnq.workers.artifact_store import LocalArtifactStore
root, key, size, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if mode == "slow-fsync":
    real_fsync = os.fsync
    def fsync(fd):
        print("fsync", flush=True)
        time.sleep(120)
        real_fsync(fd)
    os.fsync = fsync
print("writing", flush=True)
LocalArtifactStore(root).put(key, os.urandom(size))
print("done", flush=True)
"""


def _npz(seed: int) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    np.savez(buf, W1=rng.normal(size=(8, 2)), b1=np.zeros((8, 1)), W2=rng.normal(size=(1, 8)), b2=np.zeros((1, 1)))
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["slow-fsync", "big-write"])
def test_writer_killed_mid_write_leaves_the_previous_content(mode, redis_client, data_dir, store, redis_url, tmp_path):
    # A succeeded job whose weights.npz is served by the API, written through the state machine.
    rec = jobs.create_job(
        redis_client, tenant="public", spec={"dataset_id": "a" * 24}, queue="default", dataset_id="a" * 24
    )
    job_id, key = rec["id"], f"jobs/{rec['id']}/weights.npz"
    previous = _npz(0)
    sha = store.put(key, previous)
    assert jobs.claim(redis_client, job_id, "t", 60_000)
    assert jobs.finish(redis_client, job_id, "t", "succeeded", artifacts={"npz": sha})
    directory = store.root / "jobs" / job_id

    size = 8 * 1024 * 1024 if mode == "slow-fsync" else 256 * 1024 * 1024
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(store.root), key, str(size), mode],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout.readline().strip() == "writing"
        if mode == "slow-fsync":
            assert proc.stdout.readline().strip() == "fsync"  # the temp file is written, not yet renamed
            temps = [p for p in directory.iterdir() if p.name.endswith(".tmp")]
            assert len(temps) == 1 and temps[0].stat().st_size == size
        else:  # kill as soon as the temp file has started to grow: usually torn in the middle
            wait_for(
                lambda: any(p.name.endswith(".tmp") and p.stat().st_size > 0 for p in directory.iterdir()),
                30,
                "the temp file to appear",
                every=0.001,
            )
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        _signal_group(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL

    # The key is the previous complete content: the rename never happened.
    assert store.get(key) == previous
    assert hashlib.sha256(store.get(key)).hexdigest() == sha
    leftovers = [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]
    if mode == "slow-fsync":
        assert leftovers, "the killed writer's temp file should still be there (it is never served)"

    api, base_url, _ = start_api(redis_url, data_dir, tmp_path / "api.log")
    try:
        with httpx.Client(base_url=base_url, timeout=30) as http:
            resp = http.get(f"/v1/jobs/{job_id}/weights", params={"format": "npz"})
            assert resp.status_code == 200, resp.text
            assert resp.headers["etag"] == f'"{sha}"'
            assert hashlib.sha256(resp.content).hexdigest() == sha
            assert resp.content == previous
            with np.load(io.BytesIO(resp.content), allow_pickle=False) as npz:
                assert npz["W1"].shape == (8, 2)
    finally:
        _signal_group(api, signal.SIGKILL)
        api.wait(10)

    # A later complete write replaces it atomically, temp files notwithstanding.
    newer = _npz(1)
    store.put(key, newer)
    assert store.get(key) == newer
