"""Step graphs (models/stepgraph.py) with a decaying learning rate, on the CuPy stand-in
(tests/models/fake_cupy.py): the rate lives in device memory that the captured kernels read, so
one capture serves the whole run, with the bits of the kernel-by-kernel run and of the CPU's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import dnnq.models.backend as backend
from dnnq.models import TrainConfig, fit, stepgraph
from tests.models import fake_cupy


@pytest.fixture
def fake_gpu(monkeypatch):
    module = fake_cupy.installed(monkeypatch)
    backend.forget_gpu_check()
    yield module
    backend.forget_gpu_check()


def test_a_replay_reads_a_0d_device_array_as_it_is_then(fake_gpu):
    """What the step relies on, in the stand-in: a kernel captured with a 0-d device array reads the
    array's value at each launch, not the value it had at capture (a Python number stays frozen)."""
    x = fake_gpu.asarray(np.array([1.0, 2.0, 4.0], dtype=np.float32))
    factor, out = fake_gpu.zeros((), dtype=np.float64), fake_gpu.zeros(3, dtype=np.float32)
    factor[...] = 0.5
    stream = fake_gpu.cuda.Stream(non_blocking=True)
    stream.begin_capture()
    fake_gpu.multiply(x, (factor / 2).astype(np.float32), out=out)
    graph = stream.end_capture()
    factor[...] = 3.0  # outside the graph, as stepgraph writes a new rate
    graph.launch()
    np.testing.assert_array_equal(out.get(), [1.5, 3.0, 6.0])


@pytest.mark.parametrize(
    "extra",
    [
        {"batch_size": None, "l2": 0.05},  # full batch: one step an epoch, a new rate every epoch
        {"batch_size": 64, "dtype": "float64"},  # shuffled mini-batches: the gathered batch buffers
    ],
)
def test_one_capture_serves_a_whole_decaying_lr_run(fake_gpu, extra):
    rng = np.random.default_rng(3)
    X = rng.random((20, 300), dtype=np.float32)
    labels = (X[:3].sum(axis=0) > 1.5).astype(np.int64) + (X[3:6].sum(axis=0) > 1.5)
    cfg = TrainConfig(
        layer_dims=[20, 32, 16, 3],
        output="softmax",
        optimizer="gd",
        learning_rate=0.2,
        lr_decay="inverse_time",
        decay_rate=0.5,
        decay_every=1,
        epochs=6,
        seed=4,
        device="gpu",
        **extra,
    )
    captures, launches = fake_gpu.Graph.captures, fake_gpu.Graph.launches
    graphed = fit(X, labels, cfg)
    assert fake_gpu.Graph.captures - captures == 1
    steps = 6 * (1 if cfg.batch_size is None else 300 // 64)  # full batches only; the last, short one is not graphed
    assert graphed.step_graph == f"on: {steps} steps replayed from 1 capture"
    assert fake_gpu.Graph.launches - launches == steps
    with stepgraph.switched(False):
        eager = fit(X, labels, cfg)
    cpu = fit(X, labels, dataclasses.replace(cfg, device="cpu"))
    assert eager.step_graph is None
    for other in (eager, cpu):
        assert [r.to_dict() for r in graphed.history] == [r.to_dict() for r in other.history]
        for key, value in other.parameters.items():
            np.testing.assert_array_equal(graphed.parameters[key], value)
