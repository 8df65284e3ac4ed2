"""fit's Gram path (models/gram.py) against the textbook path: the same costs and weights to ~1e-12
in float64, for gd, momentum, l2, lr decay, dropout, mini-batches, validation, checkpoints and resume;
fit's choice of path; the same code on the CuPy stand-in."""

from __future__ import annotations

import numpy as np
import pytest

import dnnq.models.backend as backend
from dnnq.models import Checkpoint, TrainConfig, fit
from dnnq.models.gram import layer1_flops, plan
from tests.models import fake_cupy
from tests.models.conftest import stop_and_resume

CAT_DIMS = [12288, 20, 7, 5, 1]


def wide(m: int = 24, n_x: int = 12288, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-like inputs (n_x, m) in [0, 1) and 0/1 labels: the cat model's shape, few examples."""
    rng = np.random.default_rng(seed)
    X = rng.random((n_x, m))
    return X, (X[:50].sum(axis=0) > X[50:100].sum(axis=0)).astype(np.float64).reshape(1, -1)


def cat_config(**kw) -> TrainConfig:
    base = {"layer_dims": CAT_DIMS, "init": "xavier", "seed": 1, "learning_rate": 0.0075, "epochs": 40}
    return TrainConfig(**{**base, "dtype": "float64", "device": "cpu", **kw})


def assert_close_runs(gram, textbook, rtol: float = 1e-12) -> None:
    assert gram.path == "gram" and textbook.path == "textbook"
    a = np.array([r.loss for r in gram.history])
    b = np.array([r.loss for r in textbook.history])
    assert len(a) == len(b)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=0)
    assert [r.accuracy for r in gram.history] == [r.accuracy for r in textbook.history]
    for key, value in textbook.parameters.items():
        got = gram.parameters[key]
        assert got.shape == value.shape and got.dtype == value.dtype
        scale = float(np.max(np.abs(value)))  # relative to the matrix's size (entries near zero are noise)
        assert float(np.max(np.abs(got - value))) <= rtol * scale, key


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"l2": 0.7},
        {"lr_decay": "inverse_time", "decay_rate": 0.3},
        {"optimizer": "momentum", "beta": 0.9, "l2": 0.1, "lr_decay": "step", "decay_rate": 0.5, "decay_every": 7},
        {"batch_size": 8},  # shuffled mini-batches: C's columns accumulate per example
        {"batch_size": 10, "shuffle": False, "l2": 0.2},  # a short last batch
        {"batch_size": 8, "optimizer": "momentum", "dropout_keep_prob": 0.8},  # dropout acts on hidden layers
    ],
)
def test_the_gram_path_trains_as_the_textbook_path(extra):
    X, Y = wide()
    cfg = cat_config(**extra)
    assert_close_runs(fit(X, Y, cfg, path="gram"), fit(X, Y, cfg, path="textbook"))


def test_validation_metrics_match():
    X, Y = wide(m=30)
    Xv, Yv = wide(m=11, seed=1)
    cfg = cat_config(l2=0.3, epochs=15)
    gram, textbook = (fit(X, Y, cfg, X_val=Xv, Y_val=Yv, path=p) for p in ("gram", "textbook"))
    assert_close_runs(gram, textbook)
    np.testing.assert_allclose(
        [r.val_loss for r in gram.history], [r.val_loss for r in textbook.history], rtol=1e-12, atol=0
    )


def test_fit_chooses_the_gram_path_only_where_it_is_exact_and_cheaper():
    X, Y = wide(m=24)
    chosen = fit(X, Y, cat_config(epochs=20))
    assert fit(X, Y, cat_config(epochs=2)).path == "textbook"  # R R^T costs more than two epochs save
    assert chosen.path == "gram" and "fewer multiply-adds" in chosen.path_reason
    adam = fit(X, Y, cat_config(epochs=3, optimizer="adam"))
    assert adam.path == "textbook" and "adam" in adam.path_reason
    tall = np.random.default_rng(0).random((8, 400))
    narrow = fit(tall, (tall[:1] > 0.5) * 1.0, TrainConfig(layer_dims=[8, 4, 1], epochs=3, device="cpu"))
    assert narrow.path == "textbook" and narrow.path_reason.startswith("not cheaper")
    forced = fit(X, Y, cat_config(epochs=3), path="textbook")
    assert forced.path == "textbook" and forced.path_reason == "the textbook path was asked for"
    with pytest.raises(ValueError, match="not a linear combination of gradients"):
        fit(X, Y, cat_config(epochs=3, optimizer="rmsprop"), path="gram")
    with pytest.raises(ValueError, match="The 'path' parameter must be one of"):
        fit(X, Y, cat_config(epochs=3), path="fast")


def test_the_memory_estimate_bounds_the_gram_path(monkeypatch):
    cfg = cat_config()
    assert plan(cfg, 209, 0, "auto", resuming=False).use
    monkeypatch.setattr(TrainConfig, "estimate_memory_bytes", lambda self, n: 1000)
    refused = plan(cfg, 209, 0, "auto", resuming=False)
    assert not refused.use and "over the job's estimate" in refused.reason
    textbook, gram = layer1_flops(cat_config(epochs=2500), 209, 0, 1)
    assert textbook / gram > 50  # the course's model: the point of the path


@pytest.mark.parametrize("optimizer", ["gd", "momentum"])
def test_checkpoints_form_w1_and_resume_exactly(optimizer):
    X, Y = wide(m=20)
    cfg = cat_config(optimizer=optimizer, l2=0.1, epochs=8, batch_size=8)
    seen: dict[str, Checkpoint] = {}

    def keep(state):
        if state.epoch == 3:
            seen["ckpt"] = state.checkpoint()

    textbook = fit(X, Y, cfg, path="textbook", on_epoch=keep)
    at3 = seen.pop("ckpt")
    gram = fit(X, Y, cfg, path="gram", on_epoch=keep)
    ckpt = seen["ckpt"]
    assert ckpt.parameters["W1"].shape == (20, 12288)  # formed, the textbook's layout
    for key, value in at3.parameters.items():
        np.testing.assert_allclose(ckpt.parameters[key], value, rtol=0, atol=1e-12 * np.max(np.abs(value)))
    for key, value in at3.optimizer_state.items():
        np.testing.assert_allclose(ckpt.optimizer_state[key], value, rtol=0, atol=1e-12 * max(np.max(np.abs(value)), 1))
    assert_close_runs(gram, textbook)
    # resumed from the Gram path's checkpoint (through host arrays), on either path
    for path in ("gram", "textbook"):
        resumed = fit(X, Y, cfg, path=path, checkpoint=Checkpoint.from_arrays(ckpt.to_arrays()))
        assert resumed.path == path
        resumed.path = "gram"  # compared with the textbook run whichever path resumed it
        assert_close_runs(resumed, textbook)


def test_a_stopped_gram_run_resumes_to_the_uninterrupted_run():
    X, Y = wide(m=16)
    cfg = cat_config(optimizer="momentum", epochs=30)
    _, ckpt, resumed = stop_and_resume(X, Y, cfg, at=2)
    whole = fit(X, Y, cfg)
    assert resumed.path == whole.path == "gram" and ckpt.epoch == 2
    assert [r.loss for r in resumed.history[:2]] == [r.loss for r in whole.history[:2]]
    whole.path = "textbook"  # assert_close_runs names the two paths
    assert_close_runs(resumed, whole)


@pytest.mark.parametrize("extra", [{}, {"batch_size": 8, "optimizer": "momentum", "l2": 0.1}])
def test_the_gram_path_on_the_cupy_stand_in(monkeypatch, extra):
    X, Y = wide(m=20, n_x=3000)
    cfg = cat_config(layer_dims=[3000, 20, 7, 5, 1], epochs=6, **extra)
    cpu = fit(X, Y, cfg, path="gram")
    fake_cupy.installed(monkeypatch)
    backend.forget_gpu_check()
    try:
        gpu = fit(X, Y, cat_config(layer_dims=[3000, 20, 7, 5, 1], epochs=6, device="gpu", **extra), path="gram")
    finally:
        backend.forget_gpu_check()
    assert gpu.device.startswith("gpu") and gpu.path == "gram"
    assert all(type(p) is np.ndarray for p in gpu.parameters.values())  # handed back on the host
    # NumPy writes layer 1's product straight into a transposed buffer, a device copies it in: the
    # same sums, not always the same bits
    gpu.path, cpu.path = "gram", "textbook"
    assert_close_runs(gpu, cpu)


def test_float32_stays_close():
    X, Y = wide(m=24)
    cfg = cat_config(dtype="float32", epochs=30)
    assert_close_runs(fit(X, Y, cfg, path="gram"), fit(X, Y, cfg, path="textbook"), rtol=2e-4)


@pytest.mark.slow
def test_the_cat_models_shape_at_full_size():
    """m = 209, n_x = 12288 as in the course (synthetic pixels): 300 full-batch iterations."""
    X, Y = wide(m=209)
    cfg = cat_config(epochs=300)
    gram = fit(X, Y, cfg)
    assert gram.path == "gram"
    assert_close_runs(gram, fit(X, Y, cfg, path="textbook"))


def test_the_worker_setting_reaches_fit(monkeypatch):
    from dnnq.workers.settings import WorkerSettings

    monkeypatch.setenv("DNNQ_FIT_PATH", "textbook")
    assert WorkerSettings().fit_path == "textbook"
    monkeypatch.delenv("DNNQ_FIT_PATH")
    assert WorkerSettings().fit_path == "auto"


def test_scatter_columns_on_every_backend(xp):
    from dnnq.models.backend import scatter_columns

    out = xp.asarray(np.arange(12.0).reshape(2, 6))
    scatter_columns(xp, out, xp.asarray(np.array([4, 1])), xp.asarray(np.array([[-1.0, -2.0], [-3.0, -4.0]])))
    np.testing.assert_array_equal(backend.to_host(out), [[0, -2, 2, 3, -1, 5], [6, -4, 8, 9, -3, 11]])
