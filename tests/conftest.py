"""Shared fixtures: a real redis-server, a flushed client per test, an artifact store on tmp_path,
a Celery client for sending tasks, and a factory that starts real `python -m dnnq.workers` processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from dnnq.workers import keys
from dnnq.workers.artifact_store import LocalArtifactStore
from dnnq.workers.redis_server import start_redis

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One redis-server for the whole session (AOF in a tmp dir), stopped at the end."""
    with start_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server) -> str:
    return redis_server.url


@pytest.fixture
def redis_client(redis_server):
    """decode_responses client on a database flushed before each test."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def dead_port():
    """A local port that refuses every connection for the whole test: bound, never listening, so no other
    process can take it between choosing it and using it (a free port chosen and let go can be)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """DNNQ_DATA_DIR for this test; workers started by `worker` share it."""
    path = tmp_path / "data"
    path.mkdir()
    return path


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "both_stores: run the test on the local and the S3 artifact store (the artifact_backend fixture)"
    )


def pytest_generate_tests(metafunc):
    """Tests (or modules) marked both_stores run twice: artifact_backend 'local' and 's3'."""
    if "artifact_backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_stores"):
        metafunc.parametrize("artifact_backend", ["local", "s3"], indirect=True)


@pytest.fixture
def artifact_backend(request) -> str:
    """'local' (DNNQ_DATA_DIR/artifacts) unless the test is marked both_stores."""
    return getattr(request, "param", "local")


@pytest.fixture
def artifact_env(request, artifact_backend) -> dict[str, str]:
    """The variables every process of this test gets for its artifact store: none for the local one,
    DNNQ_ARTIFACTS_URL and AWS_* of a fresh bucket on the session's S3 server for 's3'."""
    return request.getfixturevalue("s3_env") if artifact_backend == "s3" else {}


@pytest.fixture
def store(data_dir, artifact_env, tmp_path):
    """The artifact store a worker with DNNQ_DATA_DIR=data_dir uses (data_dir/artifacts), or the test's
    bucket when artifact_backend is 's3' (scratch files of this process in tmp_path, not data_dir)."""
    if artifact_env:
        from dnnq.workers.object_store import ObjectArtifactStore

        return ObjectArtifactStore(artifact_env["DNNQ_ARTIFACTS_URL"], tmp_path / "test-scratch", environ=artifact_env)
    return LocalArtifactStore(data_dir / "artifacts")


@pytest.fixture
def celery_client(redis_client, redis_url):
    """A Celery app configured like the API's, pointing at the test Redis: .send_task("dnnq.train", ...)."""
    from celery import Celery

    from dnnq.workers.celery_app import configure
    from dnnq.workers.settings import WorkerSettings

    app = Celery("dnnq-test")
    configure(app, WorkerSettings(redis_url=redis_url))
    yield app
    app.close()


class WorkerProcess:
    """A real `python -m dnnq.workers` process in its own process group."""

    def __init__(self, proc: subprocess.Popen, name: str, log_path: Path):
        self.proc = proc
        self.name = name
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole group (main process and its pool children): a crash, nothing cleaned up."""
        self._signal_group(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL the group if it lingers."""
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self._signal_group(signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(10)

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
            os.killpg(self.proc.pid, sig)  # the group we created with start_new_session


@pytest.fixture
def worker(redis_client, redis_url, data_dir, tmp_path, artifact_env):
    """Factory: worker(env={...}, queues="default", name=None, wait=30.0) -> WorkerProcess.

    Starts `python -m dnnq.workers` against the test Redis and data_dir with a short lease (3 s) and
    heartbeat (0.5 s), waits until its dnnq:worker:{name} key appears, stops it at teardown.
    `env` overrides or adds environment variables (e.g. {"DNNQ_CHECKPOINT_EVERY": "1"}).
    """
    started: list[WorkerProcess] = []

    def start(
        env: dict[str, str] | None = None, queues: str = "default", name: str | None = None, wait: float = 30.0
    ) -> WorkerProcess:
        name = name or f"test-{uuid.uuid4().hex[:8]}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("DNNQ_")}
        full_env.update(
            {
                "DNNQ_REDIS_URL": redis_url,
                "DNNQ_DATA_DIR": str(data_dir),
                "DNNQ_LEASE_SECONDS": "3",
                "DNNQ_HEARTBEAT_SECONDS": "0.5",
                "DNNQ_WORKER_NAME": name,
                "DNNQ_QUEUES": queues,
                "PYTHONUNBUFFERED": "1",
                # One BLAS thread: the test machine has few cores and a worker must not starve the others.
                "OMP_NUM_THREADS": "1",
                "OPENBLAS_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1",
                **artifact_env,
            }
        )
        full_env.update(env or {})
        log_path = tmp_path / f"worker-{name}.log"
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
        started.append(w)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"worker {name} exited with {proc.returncode}:\n{w.log()[-4000:]}")
            if redis_client.exists(keys.worker(name)):
                return w
            time.sleep(0.1)
        w.stop()
        pytest.fail(f"worker {name} did not register dnnq:worker:{name} within {wait} s:\n{w.log()[-4000:]}")

    yield start
    for w in started:
        w.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One moto S3 server (`python -m moto.server`) on loopback for the session (tests/s3.py)."""
    from tests.s3 import MotoServer

    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server) -> dict[str, str]:
    """DNNQ_ARTIFACTS_URL and AWS_* for a fresh bucket of this test on the session's S3 server."""
    return s3_server.env(s3_server.create_bucket())
