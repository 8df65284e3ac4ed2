"""Fault-injection fixtures: a Redis we can stop and start again on the same port and data dir,
workers and APIs started against it, and small helpers shared by the fault tests.

The session-wide `redis_server` (tests/conftest.py) must never be stopped, so tests that restart
Redis use `own_redis` instead; the others reuse the shared fixtures (`worker`, `live_stack_factory`).
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis

from dnnq.workers import datasets, jobs, keys
from dnnq.workers.redis_server import free_port, start_redis
from dnnq.workers.spec import JobSpec
from tests.conftest import ROOT, WorkerProcess
from tests.service.conftest import (  # noqa: F401  (fixtures re-exported for this directory)
    LiveStack,
    _signal_group,
    live_stack,
    live_stack_env,
    live_stack_factory,
    start_api,
)

TERMINAL = {"succeeded", "failed", "cancelled"}


class RestartableRedis:
    """A real redis-server on a fixed port and data dir (AOF on) that a test may stop and restart."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.port = free_port()
        self.server = start_redis(data_dir, self.port)
        self.url = self.server.url

    def stop(self) -> None:
        """SIGTERM: redis flushes its AOF and exits; the port refuses connections until start()."""
        self.server.stop()

    def kill(self) -> None:
        """SIGKILL: no shutdown work at all (appendfsync everysec may lose the last second)."""
        self.server.proc.kill()
        self.server.proc.wait(10)

    def start(self) -> None:
        self.server = start_redis(self.data_dir, self.port)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)


@pytest.fixture
def own_redis(tmp_path):
    server = RestartableRedis(tmp_path / "own-redis")
    yield server
    server.stop()


def start_worker(
    redis_url: str,
    data_dir: Path,
    log_dir: Path,
    env: dict[str, str] | None = None,
    name: str | None = None,
    wait: float = 60.0,
) -> WorkerProcess:
    """A real `python -m dnnq.workers` (lease 3 s, heartbeat 0.5 s unless `env` says otherwise) against
    `redis_url`; returns once its dnnq:worker:{name} key exists."""
    name = name or f"fault-{uuid.uuid4().hex[:8]}"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DNNQ_")}
    full_env.update(
        DNNQ_REDIS_URL=redis_url,
        DNNQ_DATA_DIR=str(data_dir),
        DNNQ_LEASE_SECONDS="3",
        DNNQ_HEARTBEAT_SECONDS="0.5",
        DNNQ_WORKER_NAME=name,
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    full_env.update(env or {})
    log_path = log_dir / f"worker-{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dnnq.workers"],
            cwd=ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    w = WorkerProcess(proc, name, log_path)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    deadline = time.monotonic() + wait
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"worker {name} exited with {proc.returncode}:\n{w.log()[-4000:]}")
            if r.exists(keys.worker(name)):
                return w
            time.sleep(0.1)
    finally:
        r.close()
    w.stop()
    raise AssertionError(f"worker {name} did not register within {wait} s:\n{w.log()[-4000:]}")


@pytest.fixture
def own_workers():
    """A list the test appends WorkerProcess objects to; each is stopped at teardown."""
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.stop()


def wait_for(predicate, timeout: float, what: str, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def make_dataset(r, store, m: int = 300, n_x: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, n_x)).astype(np.float32)
    Y = (X[:, 0] * X[:, 1] > 0).astype(np.float32)
    return datasets.save_dataset(
        r, store, tenant="public", name="quadrants", source="test", X=X, Y=Y, label_kind="binary"
    )


def create_and_send(r, celery_app, dataset_id: str, hidden=(16, 8), **training) -> str:
    spec = JobSpec(dataset_id=dataset_id, model={"hidden_layers": list(hidden)}, training=training)
    job = jobs.create_job(r, tenant="public", spec=spec.model_dump(), queue="default", dataset_id=dataset_id)
    celery_app.send_task("dnnq.train", args=[job["id"]], queue="default")
    return job["id"]


def epochs_of(r, job_id: str, store=None) -> list[int]:
    """`store`: the workers' artifact store, where a finished job's long history moves (issue 15)."""
    return [e["epoch"] for e in jobs.get_history(r, job_id, store=store)]


def npz_arrays(raw: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def log_events(text: str) -> list[dict]:
    import json

    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out
