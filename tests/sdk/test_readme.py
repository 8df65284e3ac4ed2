"""README.md's "The Python SDK" section, run as written against the real stack (every line must run)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"


def _sdk_example() -> str:
    text = README.read_text()
    section = text.split("\n## The Python SDK\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


def test_the_readme_sdk_example_runs(live_stack, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DNNQ_URL": live_stack.base_url, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _sdk_example()], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"<Dataset [0-9a-f]+ 'quadrants': 500 x 2>", lines[0]), lines
    assert any(re.fullmatch(r"succeeded (1\.0|0\.9\d*)", line) for line in lines), lines
    assert "{'W1': (8, 2), 'b1': (8, 1), 'W2': (4, 8), 'b2': (4, 1), 'W3': (1, 4), 'b3': (1, 1)}" in lines
    sweep = r"\{'succeeded': 3\} \{'training.learning_rate': 0\.(01|05|1)\} \d\.\d+(e-\d+)?"
    assert any(re.fullmatch(sweep, line) for line in lines), lines
    assert lines[-1].startswith("404 No job with id ") and (tmp_path / "quadrants.onnx").stat().st_size > 0
