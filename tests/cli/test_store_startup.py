"""`dnnq api` and `dnnq worker` refuse to start, with one line saying what to fix, when the artifact
store cannot be used: a malformed DNNQ_ARTIFACTS_URL, a missing bucket, a dead endpoint."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dnnq.workers.redis_server import free_port
from tests.conftest import ROOT


def _run(command: str, env: dict[str, str], redis_url: str, tmp_path) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("DNNQ_", "AWS_"))}
    full.update(env, DNNQ_REDIS_URL=redis_url, DNNQ_DATA_DIR=str(tmp_path / "data"))
    argv = ["api", "--port", str(free_port())] if command == "api" else ["worker"]
    return subprocess.run(
        [sys.executable, "-m", "dnnq", *argv], env=full, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("command", ["api", "worker"])
@pytest.mark.parametrize(
    "case, fix",
    [
        ("malformed", "is not an object-store URL: use s3://bucket/prefix"),
        ("no_bucket", "does not exist in the artifact store"),
        ("dead_endpoint", "does not answer: check AWS_ENDPOINT_URL"),
    ],
)
def test_refuses_to_start_with_one_line(command, case, fix, s3_server, redis_url, tmp_path, dead_port):
    env = s3_server.env("absent-bucket")
    if case == "malformed":
        env["DNNQ_ARTIFACTS_URL"] = "http://absent-bucket/dnnq"
    elif case == "dead_endpoint":
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{dead_port}"
    proc = _run(command, env, redis_url, tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert fix in lines[0]
    assert not (tmp_path / "data" / "artifacts").exists()
