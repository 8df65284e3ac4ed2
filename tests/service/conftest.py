"""Service fixtures.

- `api_settings` / `app` / `client`: the app in-process (FastAPI TestClient) on the real test Redis
  (tests/conftest.py `redis_server`), data in a tmp dir. Celery messages go to that Redis; no worker runs.
- `live_stack`: the whole service for real: Redis, a `python -m dnnq.workers` process and a uvicorn
  subprocess serving `service.app:create_app` on a free 127.0.0.1 port. Yields a `LiveStack`
  (base_url, env, client()). Other suites reuse it: override the `live_stack_env` fixture (e.g.
  {"DNNQ_API_KEYS": "alice:k1,bob:k2"}) or call `live_stack_factory(env={...}, workers=0)`.
- The artifact store is the local directory unless a test is marked `both_stores` (tests/conftest.py):
  it then runs twice, the second time with the API, its workers and the `store` fixture on one fresh
  bucket of the session's S3 server (moto, tests/s3.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from dnnq.workers.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def api_settings(redis_client, redis_url, data_dir):
    from dnnq.service.settings import ApiSettings

    # TestClient sends `Host: testserver`; with API keys off the API answers only IP addresses, localhost
    # and the names listed here (service/guards.py: DNS rebinding)
    return ApiSettings(redis_url=redis_url, data_dir=data_dir, allowed_hosts="testserver")


@pytest.fixture
def app(api_settings):
    from dnnq.service.app import create_app

    return create_app(api_settings)


@pytest.fixture
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c


@dataclass
class LiveStack:
    """A running API (+ workers) against the test Redis and data dir."""

    base_url: str
    env: dict[str, str]
    redis_url: str
    data_dir: Path
    api: subprocess.Popen
    log_path: Path
    workers: list = field(default_factory=list)

    def client(self, **kwargs) -> httpx.Client:
        kwargs.setdefault("timeout", 30.0)
        return httpx.Client(base_url=self.base_url, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.api.poll() is None:
            _signal_group(self.api, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.api.wait(10)
        _signal_group(self.api, signal.SIGKILL)
        if self.api.poll() is None:
            self.api.wait(10)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def start_api(
    redis_url: str, data_dir: Path, log_path: Path, env: dict[str, str] | None = None, wait: float = 30.0
) -> tuple[subprocess.Popen, str, dict[str, str]]:
    """uvicorn --factory service.app:create_app on a free port; returns (process, base_url, DNNQ env)."""
    port = free_port()
    dnnq_env = {"DNNQ_REDIS_URL": redis_url, "DNNQ_DATA_DIR": str(data_dir), **(env or {})}
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DNNQ_")}
    full_env.update(dnnq_env, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "dnnq.service.app:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1.0).status_code == 200:
                return proc, base_url, dnnq_env
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    _signal_group(proc, signal.SIGKILL)
    raise RuntimeError(f"uvicorn did not answer /healthz within {wait} s:\n{log_path.read_text()[-4000:]}")


@pytest.fixture
def live_stack_factory(redis_client, redis_url, data_dir, worker, tmp_path, artifact_env):
    """Factory: live_stack_factory(env=None, workers=1, worker_env=None) -> LiveStack.

    `env` goes to the API and the workers (limits, keys); `worker_env` to the workers only. The
    artifact store is the test's (`artifact_env`: the local directory, or a bucket on the test S3
    server when the test is marked both_stores).
    Everything started is stopped at teardown (workers by the `worker` fixture).
    """
    stacks: list[LiveStack] = []

    def start(
        env: dict[str, str] | None = None, workers: int = 1, worker_env: dict[str, str] | None = None
    ) -> LiveStack:
        log_path = tmp_path / f"api-{len(stacks)}.log"
        env = {**artifact_env, **(env or {})}
        proc, base_url, dnnq_env = start_api(redis_url, data_dir, log_path, env)
        stack = LiveStack(base_url, dnnq_env, redis_url, data_dir, proc, log_path)
        stacks.append(stack)
        for _ in range(workers):
            stack.workers.append(worker(env={**env, **(worker_env or {})}))
        return stack

    yield start
    for stack in stacks:
        stack.stop()


@pytest.fixture
def live_stack_env() -> dict[str, str]:
    """Extra DNNQ_* variables for `live_stack`; override this fixture in a test module to change them."""
    return {}


@pytest.fixture
def live_stack(live_stack_factory, live_stack_env) -> LiveStack:
    """Redis + one worker + uvicorn, all real; stopped after the test."""
    return live_stack_factory(env=live_stack_env)
