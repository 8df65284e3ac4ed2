"""The sweep benches of issue 17 (bench.cat_model, bench.sweep_e2e, bench.sweep_seeds, scripts/gpu-check's
step 4), run short on the CPU: their figures make sense, losses agree where they must, and --device gpu
without a usable GPU refuses in one line with exit status 2.

Run with: .venv/bin/python -m pytest bench/tests -q   (not part of tests/: the bench is optional)
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def figures(p: subprocess.CompletedProcess) -> dict:
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def gpu_usable() -> bool:
    from dnnq.models.backend import DeviceUnavailable, select_device

    try:
        select_device("gpu")
    except DeviceUnavailable:
        return False
    return True


@pytest.mark.parametrize("module", ["bench.cat_model", "bench.sweep_e2e", "bench.sweep_seeds"])
def test_device_gpu_without_a_gpu_refuses_in_one_line(module):
    if gpu_usable():
        pytest.skip("a usable GPU (CuPy) is present: --device gpu would run")
    p = run("-m", module, "--device", "gpu", timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("no GPU: "), p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""


def test_cat_model_json_figures_on_the_cpu():
    pytest.importorskip("torch", reason="PyTorch not installed")
    fig = figures(run("-m", "bench.cat_model", "--iterations", "3", "--repeats", "1", "--json"))
    assert fig["device"] == fig["torch_device"] == "cpu" and fig["iterations"] == 3
    assert all(len(t) == 1 and t[0] > 0 for t in fig["times_s"].values())
    assert fig["gram_over_torch"] > 0 and fig["textbook_over_torch"] > 0
    assert fig["paths"] == {"gram": "gram", "textbook": "textbook"}
    # the Gram path is exact in exact arithmetic: the textbook path's costs to 1e-12, PyTorch's to rounding
    assert fig["costs_max_rel_diff"]["gram_vs_textbook"] <= 1e-12
    assert fig["costs_max_rel_diff"]["gram_vs_torch"] <= 1e-12
    if fig["data"].startswith("real cat set"):
        assert round(fig["costs_at_0_100"][0], 6) == 0.771749  # the course's first cost


def test_sweep_seeds_quick_float64_packed_solo_and_pytorch_agree():
    pytest.importorskip("torch", reason="PyTorch not installed")
    fig = figures(run("-m", "bench.sweep_seeds", "--quick", "--case", "sgd", "--dtype", "float64", "--json"))
    assert fig["examples"] == 1024 and fig["epochs"] == 1 and fig["repeats"] == 1 and fig["seeds"] == list(range(1, 9))
    assert fig["order"].startswith("unshuffled")
    [case] = fig["cases"]
    assert case["case"] == "A-sgd"
    assert all(len(t) == 1 and t[0] > 0 for t in case["times_s"].values())
    assert case["solo_over_packed"] > 0 and case["torch_over_packed"] > 0 and case["torch_over_solo"] > 0
    losses = case["final_losses"]
    assert all(len(v) == 8 for v in losses.values())
    assert len(set(losses["solo"])) == 8  # 8 seeds, 8 different trainings
    assert case["max_rel_diff"]["packed_vs_solo"] <= 1e-12 and case["packed_equals_solo"]
    assert case["max_rel_diff"]["torch_vs_solo"] <= 1e-12


def test_sweep_seeds_rejects_a_bad_size():
    p = run("-m", "bench.sweep_seeds", "--examples", "0", timeout=60)
    assert p.returncode == 2 and "--examples must be >= 1 and <= 60000. Got 0 instead." in p.stderr


def test_gpu_check_sweep_step_without_a_gpu_says_why_per_bench():
    if gpu_usable():
        pytest.skip("a usable GPU (CuPy) is present: the step would run")
    p = run("scripts/gpu-check", "--only-sweeps", timeout=120)
    assert p.returncode == 1
    [line] = [x for x in p.stdout.splitlines() if x.startswith(("PASS", "FAIL"))]
    assert line.startswith("FAIL  4 sweep benches on gpu: ")
    for name in ("cat", "e2e", "seeds"):
        assert f"{name}: rc=2; no GPU: " in line


@pytest.mark.slow
def test_gpu_check_sweep_step_runs_on_the_cpu():
    pytest.importorskip("torch", reason="PyTorch not installed")
    p = run(
        "scripts/gpu-check", "--only-sweeps", "--sweep-device", "cpu", "--sweep-iterations", "2", "--sweeps",
        "cat,seeds", timeout=400,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:]
    [line] = [x for x in p.stdout.splitlines() if x.startswith(("PASS", "FAIL"))]
    assert line.startswith("PASS  4 sweep benches on cpu: cat 2 it: ") and "costs equal: True" in line
    assert "A-sgd 8 seeds 1024x1 ep" in line and "A-adam 8 seeds 1024x1 ep" in line


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sweep_e2e_short_packed_solo_and_pytorch():
    """The whole service (dnnq up, a worker, HTTP): minutes on a busy 2-core machine."""
    pytest.importorskip("torch", reason="PyTorch not installed")
    fig = figures(run("-m", "bench.sweep_e2e", "--epochs", "2", "--repeats", "1", "--json", timeout=850))
    assert fig["device"] == fig["torch_device"] == "cpu" and fig["trials"] == 8
    assert fig["solo_median_s"] > 0 and fig["packed_median_s"] > 0 and fig["torch_median_s"] > 0
    assert fig["speedup"] > 0 and fig["torch_over_packed"] > 0
    assert fig["final_losses_equal"] and fig["final_losses_max_rel_diff"]["packed_vs_solo"] <= 1e-12
    assert fig["final_losses_max_rel_diff"]["torch_vs_solo"] <= 1e-12  # same init, same data, same steps


def test_gpu_forms_run_on_the_cupy_stand_in(monkeypatch, request):
    """The --device gpu code of the cat and seed benches, in process on the CuPy stand-in
    (tests/models/fake_cupy.py): the refusal lets a usable GPU through, fit's Gram and textbook paths and
    fit_packed run on "gpu", and their losses equal the CPU's (the stand-in's arithmetic is NumPy's)."""
    pytest.importorskip("torch", reason="PyTorch not installed")
    import numpy as np

    from bench import cat_model, devices, sweep_seeds, workloads
    from dnnq.models import backend
    from tests.models import fake_cupy

    fake_cupy.installed(monkeypatch)
    backend.forget_gpu_check()
    request.addfinalizer(backend.forget_gpu_check)
    assert devices.refusal("gpu") is None and devices.refusal("cpu") is None
    rng = np.random.default_rng(0)
    X = rng.random((40, 12))
    common = {"learning_rate": 0.1, "init": "xavier", "seed": 1, "X": X, "epochs": 4, "dtype": "float64"}
    cat = workloads.Case(
        name="tiny-cat", workload="B", layer_dims=[12, 6, 3, 1], output="sigmoid", optimizer="gd", batch_size=None,
        y=(X[:, 0] > 0.5).astype(np.int64), **common,
    )  # fmt: skip
    for path in ("gram", "textbook"):
        on_gpu, on_cpu = cat_model.fit_run(cat, path, "gpu"), cat_model.fit_run(cat, path, "cpu")
        assert on_gpu["path"] == path
        np.testing.assert_allclose(on_gpu["history"], on_cpu["history"], rtol=1e-12)
    seeds = workloads.Case(
        name="tiny-A", workload="A", layer_dims=[12, 8, 3], output="softmax", optimizer="adam", batch_size=16,
        y=(X[:, 0] * 3).astype(np.int64), **common,
    )  # fmt: skip
    configs = sweep_seeds.fit_configs(seeds, "gpu")
    assert {c.device for c in configs} == {"gpu"} and {c.shuffle for c in configs} == {False}
    _, packed = sweep_seeds.run_packed(seeds, configs)
    _, solo = sweep_seeds.run_solo(seeds, configs)
    _, cpu = sweep_seeds.run_solo(seeds, sweep_seeds.fit_configs(seeds, "cpu"))
    np.testing.assert_allclose(packed, solo, rtol=1e-12)
    np.testing.assert_allclose(solo, cpu, rtol=1e-12)
