"""Checks of the harness itself: FLOP counts, the references' sameness, the GPU refusal.

Run with: .venv/bin/python -m pytest bench/tests -q   (not part of tests/: the bench is optional)
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import workloads

ROOT = Path(__file__).resolve().parents[2]


def test_flops_count_forward_dw_and_da_without_da0():
    # [3, 4, 2], m = 5: products of 4x3 and 2x4 weights; forward 2*5*(12+8) = 200, dW 200, dA1 only 2*5*8 = 80
    assert workloads.training_flops([3, 4, 2], 5) == 480.0
    # workload A: 1,007,104 FLOPs per example, worked by hand in the brief's terms
    assert workloads.training_flops([784, 256, 128, 10], 1) == 6 * (784 * 256 + 256 * 128 + 128 * 10) - 2 * 784 * 256


def test_teacher_labels_are_fixed_and_balanced():
    X1, y1 = workloads.teacher_classification(2000, 30, 5, "float32", seed=0)
    X2, y2 = workloads.teacher_classification(2000, 30, 5, "float32", seed=0)
    assert X1.dtype == np.float32 and np.array_equal(X1, X2) and np.array_equal(y1, y2)
    assert np.bincount(y1, minlength=5).min() > 2000 / 5 / 3


def test_torch_full_batch_reference_matches_models_fit():
    pytest.importorskip("torch", reason="PyTorch not installed")
    from bench import ours, torch_ref

    rng = np.random.default_rng(0)
    X = rng.random((40, 12))
    y = (X[:, 0] > 0.5).astype(np.int64)
    case = workloads.Case(
        name="tiny",
        workload="B",
        layer_dims=[12, 6, 3, 1],
        output="sigmoid",
        optimizer="gd",
        learning_rate=0.1,
        batch_size=None,
        epochs=15,
        dtype="float64",
        init="xavier",
        seed=1,
        X=X,
        y=y,
    )
    a, b = ours.train(case), torch_ref.train(case)
    assert len(a["epoch_s"]) == len(b["epoch_s"]) == 15
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-10)
    for k in b["parameters"]:
        np.testing.assert_allclose(a["parameters"][k], b["parameters"][k], rtol=1e-9, atol=1e-12)


def test_gpu_mode_refuses_clearly_without_a_gpu():
    torch = pytest.importorskip("torch", reason="PyTorch not installed")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    p = subprocess.run(
        [sys.executable, "-m", "bench", "--device", "gpu", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert "--device gpu needs a CUDA GPU" in p.stderr and "use --device cpu" in p.stderr


def test_bad_repeats_is_rejected():
    p = subprocess.run(
        [sys.executable, "-m", "bench", "--repeats", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2 and "--repeats must be >= 1. Got 0 instead." in p.stderr


def test_gpu_runs_report_step_graphs_and_the_kernel_by_kernel_time(monkeypatch, capsys, request):
    """On the CuPy stand-in (tests/models/fake_cupy.py): ours.train says whether fit replayed its
    steps from graphs, step_graphs=False trains kernel by kernel (same loss) and leaves the switch as
    it was, and the case report prints both times and the step-graph line."""
    from bench import ours, report
    from dnnq.models import backend, stepgraph
    from tests.models import fake_cupy

    fake_cupy.installed(monkeypatch)
    backend.forget_gpu_check()  # the smoke test runs again, on the stand-in, and after the test on what is there
    request.addfinalizer(backend.forget_gpu_check)
    rng = np.random.default_rng(0)
    X = rng.random((300, 12)).astype(np.float32)
    y = (X[:, 0] * 3).astype(np.int64)
    case = workloads.Case(
        name="tiny-gpu",
        workload="A",
        layer_dims=[12, 8, 3],
        output="softmax",
        optimizer="gd",
        learning_rate=0.1,
        batch_size=64,
        epochs=3,
        dtype="float32",
        init="he",
        seed=1,
        X=X,
        y=y,
    )
    graphed, eager = ours.train(case, "gpu"), ours.train(case, "gpu", step_graphs=False)
    assert graphed["device"] == "gpu:0" and graphed["step_graph"] == "on: 12 steps replayed from 1 capture"
    assert eager["step_graph"] is None and eager["loss"] == graphed["loss"] and stepgraph.enabled()
    torch_like = {"epoch_s": [0.2] * 3, "loss": graphed["loss"], "parameters": graphed["parameters"]}
    fig = report.summarise(case, "gpu", [graphed], [torch_like], [], None, [eager])
    report.print_case(fig)
    out = capsys.readouterr().out
    assert "ours_eager" in out and "step graphs on: 12 steps replayed from 1 capture" in out
    assert set(fig["times"]) == {"ours", "ours_eager", "torch"} and set(fig["ratios"]) == {"torch"}
    assert set(fig["goals"]) == {"torch"} and "sanity" in fig
    plain = report.summarise(case, "cpu", [graphed], [torch_like], [], None)  # no kernel-by-kernel runs
    assert set(plain["ratios"]) == {"torch"} and set(plain["goals"]) == {"torch"} and "ours_eager" not in plain["times"]


def test_torch_reference_times_both_forms_and_keeps_the_faster():
    pytest.importorskip("torch", reason="PyTorch not installed")
    from bench import torch_ref

    rng = np.random.default_rng(0)
    X = rng.random((300, 12)).astype(np.float32)
    case = workloads.Case(
        name="tiny-shuffled",
        workload="A",
        layer_dims=[12, 8, 3],
        output="softmax",
        optimizer="gd",
        learning_rate=0.1,
        batch_size=32,
        epochs=4,
        dtype="float32",
        init="he",
        seed=1,
        X=X,
        y=(X[:, 0] * 3).astype(np.int64),
    )
    run = torch_ref.train(case)
    assert set(run["forms"]) == {"indexed", "gather"}
    assert run["form"] == min(run["forms"], key=run["forms"].get)
    # same permutations from the same generator: the two forms train the same batches
    a, b = (torch_ref.train_form(case, form=form) for form in ("indexed", "gather"))
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)


def test_cat_model_bench_runs_short():
    pytest.importorskip("torch", reason="PyTorch not installed")
    p = subprocess.run(
        [sys.executable, "-m", "bench.cat_model", "--iterations", "3", "--repeats", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert "fit (gram) / PyTorch" in p.stdout and "fit (textbook) / PyTorch" in p.stdout
