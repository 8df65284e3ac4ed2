"""`dnnq api` and `dnnq worker` as separate processes against one Redis (how compose runs them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from dnnq.workers import keys
from dnnq.workers.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def _spawn(argv, env, log_path):
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "dnnq", *argv],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_api_and_worker_commands_serve_a_job(redis_client, redis_url, data_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DNNQ_")}
    env.update(DNNQ_REDIS_URL=redis_url, DNNQ_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    worker = _spawn(["worker", "--queues", "default", "--name", "cli-worker"], env, tmp_path / "worker.log")
    api = _spawn(["api", "--port", str(port)], env, tmp_path / "api.log")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert api.poll() is None, (tmp_path / "api.log").read_text()
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail("not ready:\n" + (tmp_path / "api.log").read_text() + (tmp_path / "worker.log").read_text())
        record = redis_client.hgetall(keys.worker("cli-worker"))
        assert record["queues"] == "default"
        assert int(record["pid"]) == worker.pid  # `dnnq worker` became the Celery worker (exec)
        assert "no API keys set" in (tmp_path / "api.log").read_text()

        dataset = httpx.post(f"{url}/v1/datasets/synthetic", json={"name": "blobs", "n_samples": 100}, timeout=30)
        assert dataset.status_code in (200, 201), dataset.text
        job = httpx.post(
            f"{url}/v1/jobs",
            json={"dataset_id": dataset.json()["id"], "model": {"output": "softmax"}, "training": {"epochs": 5}},
            timeout=30,
        )
        assert job.status_code == 202, job.text
        for _ in range(200):
            status = httpx.get(f"{url}/v1/jobs/{job.json()['id']}", params={"history": "none"}).json()["status"]
            if status in ("succeeded", "failed"):
                break
            time.sleep(0.2)
        assert status == "succeeded"
    finally:
        for proc in (api, worker):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in (api, worker):
            try:
                # uvicorn re-raises the signal after its graceful shutdown: -SIGTERM is a clean stop too
                assert proc.wait(30) in (0, -signal.SIGTERM), (proc.args, proc.returncode)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
