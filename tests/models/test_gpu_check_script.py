"""scripts/gpu-check, the one script a GPU session runs, keeps working on CPU-only machines too: it runs
every step, reports each as FAIL with the reason, and never calls skipped CuPy cases a pass."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.models.conftest import NO_GPU

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not NO_GPU, reason="a working CuPy/GPU is present: scripts/gpu-check runs for real there")
def test_gpu_check_without_a_gpu_fails_every_step_and_says_why():
    p = subprocess.run([sys.executable, "scripts/gpu-check"], cwd=ROOT, capture_output=True, text=True, timeout=480)
    assert p.returncode == 1, p.stdout[-3000:]
    summary = p.stdout[p.stdout.index("===== summary") :]
    steps = re.findall(r"^(PASS|FAIL)  (\d\w?) ", summary, flags=re.M)
    assert steps == [("FAIL", "1"), ("FAIL", "2"), ("FAIL", "2b"), ("FAIL", "3"), ("FAIL", "4")], summary
    assert "CuPy cases skipped: CuPy/GPU not available" in summary  # step 1: skips are not a pass
    assert "no GPU is usable" in summary  # step 2: the parity check names the missing device
    # step 3: the bench's refusal: no CUDA, or (without the bench extra, as in CI) no PyTorch at all
    assert "--device gpu needs a CUDA GPU" in summary or "the bench needs PyTorch" in summary
    # step 4: each sweep bench's own one-line refusal
    step4 = next(line for line in summary.splitlines() if line.startswith("FAIL  4 "))
    assert all(f"{bench}: rc=2; no GPU: " in step4 for bench in ("cat", "e2e", "seeds")), step4
