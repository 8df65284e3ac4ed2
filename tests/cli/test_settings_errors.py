"""`dnnq api`, `dnnq up` and `dnnq worker` refuse a bad DNNQ_* setting in one line (exit code 2) that names
the variable, the value given and what is allowed, before anything starts: no pydantic traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dnnq.workers.redis_server import free_port
from tests.conftest import ROOT


def _run(argv: list[str], env: dict[str, str], tmp_path) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("DNNQ_")}
    # A Redis that is not there: a command that got past its settings would fail differently, later.
    full.update(env, DNNQ_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    return subprocess.run(
        [sys.executable, "-m", "dnnq", *argv], env=full, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def _argv(command: str, tmp_path) -> list[str]:
    if command == "api":
        return ["api", "--port", str(free_port())]
    if command == "up":
        return ["up", "--port", str(free_port()), "--data-dir", str(tmp_path / "up")]
    return ["worker"]


@pytest.mark.parametrize("command", ["api", "up", "worker"])
@pytest.mark.parametrize(
    "variable, value, allowed",
    [
        ("DNNQ_RETENTION_DAYS", "-1", "greater than or equal to 0"),
        ("DNNQ_RETENTION_DAYS", "abc", "a valid number"),
        ("DNNQ_MAX_EPOCHS", "0", "greater than or equal to 1"),
    ],
)
def test_bad_setting_refused_in_one_line(command, variable, value, allowed, tmp_path):
    proc = _run(_argv(command, tmp_path), {variable: value}, tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert f"{variable}={value!r}" in lines[0]
    assert allowed in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "up").exists()  # `dnnq up` started nothing: not even its data dir
