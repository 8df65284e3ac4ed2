"""fit's GPU code path, run on the CPU through a CuPy stand-in (tests/models/fake_cupy.py).

No GPU here, so this is what keeps fit's `xp = cupy` path honest: device="gpu" runs the engine,
the optimizers, the flat parameter arrays, the epoch RNG, checkpoints and the memory release with
device arrays that refuse to be mixed with host arrays or turned into NumPy arrays implicitly, as
CuPy's do. Since the stand-in computes with NumPy, a run without dropout must equal the CPU run
bit for bit (the CPU run takes the compiled kernels where they apply, which equal the NumPy
sequence, tests/models/test_fused.py). On a real GPU, scripts/gpu-check runs the CuPy cases of
the numerics tests and compares CuPy with NumPy on the same seeds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

import dnnq.models.backend as backend
from dnnq.models import TrainConfig, fit
from tests.models import fake_cupy
from tests.models.conftest import stop_and_resume

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_gpu(monkeypatch):
    module = fake_cupy.installed(monkeypatch)
    backend.forget_gpu_check()  # the smoke test runs again, on the stand-in
    yield module
    backend.forget_gpu_check()  # and after the test on what is really there


def data(output: str, m: int = 500, n_x: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.random((n_x, m), dtype=np.float32)
    score = X[:5].sum(axis=0) - X[5:10].sum(axis=0)
    if output == "softmax":
        return X, (score > 0.3).astype(np.int64) + (score > -0.3)  # integer labels
    if output == "sigmoid":
        return X, (score > 0).astype(np.float32).reshape(1, -1)
    return X, np.stack([score, 2 * score]).astype(np.float32)  # linear: two targets


def assert_same_run(gpu, cpu) -> None:
    assert [r.to_dict() for r in gpu.history] == [r.to_dict() for r in cpu.history]
    assert gpu.parameters.keys() == cpu.parameters.keys()
    for key, value in cpu.parameters.items():
        assert type(gpu.parameters[key]) is np.ndarray  # handed back on the host
        np.testing.assert_array_equal(gpu.parameters[key], value)


@pytest.mark.parametrize(
    "output, optimizer, hidden, extra",
    [
        ("softmax", "adam", [128], {"l2": 0.01}),  # big enough for every CPU kernel
        ("softmax", "gd", [128, 64], {"lr_decay": "inverse_time", "decay_rate": 0.5}),
        ("sigmoid", "momentum", [16, 8], {"hidden_activation": "tanh"}),
        ("sigmoid", "rmsprop", [16], {"hidden_activation": "leaky_relu", "l2": 0.1}),
        ("linear", "gd", [8], {"hidden_activation": "sigmoid", "batch_size": None, "dtype": "float64"}),
    ],
)
def test_device_gpu_trains_exactly_as_the_cpu_does(fake_gpu, output, optimizer, hidden, extra):
    X, Y = data(output)
    n_y = {"softmax": 3, "sigmoid": 1, "linear": 2}[output]
    settings = {
        "layer_dims": [X.shape[0], *hidden, n_y],
        "output": output,
        "optimizer": optimizer,
        "learning_rate": 1e-3 if optimizer in ("adam", "rmsprop") else 0.05,
        "epochs": 3,
        "batch_size": 128,
        "seed": 2,
        "init": "he",
        **extra,
    }
    val = {"X_val": X[:, :120], "Y_val": Y[..., :120]}
    launches = fake_gpu.Graph.launches
    gpu = fit(X, Y, TrainConfig(**settings, device="gpu"), **val)
    cpu = fit(X, Y, TrainConfig(**settings, device="cpu"), **val)
    assert gpu.device == "gpu:0" and cpu.device == "cpu"
    assert_same_run(gpu, cpu)
    assert gpu.history[-1].loss < gpu.history[0].loss  # it learned
    # every full batch replayed the one captured step (500 examples: 3 of 128 an epoch, or the whole
    # set), gd's decaying learning rate included: the graph reads it from device memory
    replays = 3 if settings["batch_size"] is None else 3 * (500 // 128)
    assert gpu.step_graph == f"on: {replays} steps replayed from 1 capture"
    assert fake_gpu.Graph.launches - launches == replays  # each capture's first replay is its check
    assert cpu.step_graph is None


def small_run(device, **extra):
    X, labels = data("softmax", m=300, n_x=20)
    cfg = TrainConfig(
        layer_dims=[20, 16, 3],
        output="softmax",
        optimizer="adam",
        learning_rate=0.01,
        epochs=2,
        batch_size=64,
        seed=3,
        device=device,
        **extra,
    )
    return fit(X, labels, cfg)


def test_a_step_that_waits_for_the_device_is_not_captured(fake_gpu, monkeypatch):
    """A step that reads a value back (here the batch loss, through float()) cannot be captured:
    CuPy raises during capture. fit then trains kernel by kernel, with the same results, and says why."""
    from dnnq.models.engine import Engine

    output = Engine.output

    def output_and_peek(self, *args):
        AL, loss, correct = output(self, *args)
        float(loss)  # waits for the device
        return AL, loss, correct

    monkeypatch.setattr(Engine, "output", output_and_peek)
    gpu = small_run("gpu")
    assert gpu.step_graph.startswith("off: capture failed: RuntimeError: float() waits for the device")
    assert_same_run(gpu, small_run("cpu"))
    assert not fake_gpu._Stream.null.is_capturing()  # the failed capture was ended


def test_a_replay_that_differs_from_the_step_is_not_used(fake_gpu, monkeypatch):
    """The first replay of each capture is checked against the same step run kernel by kernel; a
    graph that leaves out an operation (here the last: the right answers' count) is dropped."""

    def launch_but_the_last(self, stream=None):
        for operation in self._operations[:-1]:
            operation()

    monkeypatch.setattr(fake_gpu.Graph, "launch", launch_but_the_last)
    gpu = small_run("gpu")
    assert gpu.step_graph == (
        "off: the replay differed from the kernel-by-kernel step (gradients: max |difference| 0; "
        "loss: max |difference| 0; right answers differing: 1); not used"
    )  # the count alone was left out
    assert_same_run(gpu, small_run("cpu"))


@pytest.mark.parametrize(
    "failing_launch, says",
    [
        (1, "off: the first replay failed: RuntimeError: cudaErrorInvalidValue"),
        (4, "off: a replay failed after 3: RuntimeError: cudaErrorInvalidValue"),
    ],
)
def test_a_launch_that_fails_leaves_the_rest_kernel_by_kernel(fake_gpu, monkeypatch, failing_launch, says):
    """CUDA refusing to launch a graph (nothing runs) is not a failed job: that step and the rest run
    kernel by kernel, with the same results."""
    launch, count = fake_gpu.Graph.launch, [0]

    def refuse_one(self, stream=None):
        count[0] += 1
        if count[0] >= failing_launch:
            raise RuntimeError("cudaErrorInvalidValue")
        launch(self, stream)

    monkeypatch.setattr(fake_gpu.Graph, "launch", refuse_one)
    gpu = small_run("gpu")
    assert gpu.step_graph == says
    assert count[0] == failing_launch  # none tried after the failure
    assert_same_run(gpu, small_run("cpu"))


def test_step_graphs_can_be_switched_off(fake_gpu):
    from dnnq.models import stepgraph

    with stepgraph.switched(True):
        launches = fake_gpu.Graph.launches
        with stepgraph.switched(False):
            gpu = small_run("gpu")
        assert gpu.step_graph is None and fake_gpu.Graph.launches == launches
        assert stepgraph.enabled()  # as it was before the block
        with pytest.raises(ZeroDivisionError), stepgraph.switched(False):
            raise ZeroDivisionError
        assert stepgraph.enabled()  # restored when the block raises too
    assert_same_run(gpu, small_run("cpu"))


def test_dropout_and_unshuffled_batches_are_not_graphed(fake_gpu):
    assert small_run("gpu", dropout_keep_prob=0.9).step_graph is None  # masks drawn per step
    assert small_run("gpu", shuffle=False).step_graph is None  # each batch a different slice of X


def test_the_stand_in_captures_as_a_gpu_does(fake_gpu):
    """What stepgraph relies on, in the stand-in: a launch replays the recorded operations on what
    the arrays hold at launch time, with the Python numbers of capture time; waiting for the device
    while capturing raises; and a capture cannot start on the default stream."""
    import cupy

    x = cupy.asarray(np.arange(4, dtype=np.float32))
    y = cupy.empty((4,), dtype=cupy.float32)
    total = cupy.zeros((), dtype=cupy.float64)
    k = 2.0
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        cupy.multiply(x, k, out=y)
        y[0] = -1
        total += cupy.sum(y).astype(cupy.float64)
        with pytest.raises(RuntimeError, match="waits for the device"):
            float(total)
        with pytest.raises(RuntimeError, match="waits for the device"):
            cupy.asarray(np.ones(2))  # a host copy in
        graph = stream.end_capture()
    k = 100.0
    x[...] = cupy.asarray(np.full(4, 10, dtype=np.float32))
    total[...] = 0
    graph.launch()
    assert y.get().tolist() == [-1, 20, 20, 20] and float(total) == 59
    graph.launch()
    assert float(total) == 118  # the accumulation replays too
    with pytest.raises(RuntimeError, match="default"):
        cupy.cuda.Stream.null.begin_capture()


def test_auto_picks_the_working_gpu_and_releases_its_memory(fake_gpu):
    X, Y = data("sigmoid", m=200, n_x=10)
    freed = fake_gpu.get_default_memory_pool().freed
    result = fit(X, Y, TrainConfig(layer_dims=[10, 4, 1], epochs=2, batch_size=64, device="auto"))
    assert result.device == "gpu:0"
    assert fake_gpu.get_default_memory_pool().freed == freed + 1  # released when fit returned
    # this process's pool (nothing alive, nothing kept), and the device's size from memGetInfo
    assert backend.gpu_memory() == backend.GpuMemory(pool_used=0, pool_held=0, device_total=16 << 30)


def test_a_fit_that_fails_mid_training_leaves_the_pool_empty(fake_gpu):
    """fit raising in epoch 2 (here from on_epoch) still lets go of the data, buffers, parameters,
    optimizer state and step graph before it releases the pool: nothing stays in this process."""
    import gc

    gc.collect()  # earlier tests' cycles, so the count below is this fit's alone
    pool = fake_gpu.get_default_memory_pool()
    before = pool.used_bytes()
    X, labels = data("softmax", m=300, n_x=20)
    cfg = TrainConfig(layer_dims=[20, 16, 3], output="softmax", optimizer="adam", epochs=4, batch_size=64, seed=3)

    def fail_in_epoch_2(state):
        assert pool.used_bytes() > before  # training holds device memory
        if state.epoch == 2:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here") as failure:
        fit(X, labels, dataclasses.replace(cfg, device="gpu"), on_epoch=fail_in_epoch_2)
    assert failure.value.__traceback__ is not None  # the traceback is still there to read
    assert pool.used_bytes() == before  # no frame of the traceback holds a device array
    assert pool.total_bytes() == before  # and the pool gave the freed blocks back
    with pytest.raises(ValueError):  # a failure inside the step (a mismatched batch): the same
        fit(X, labels[:10], dataclasses.replace(cfg, device="gpu"))
    assert pool.used_bytes() == before


def test_setup_time_waits_for_the_copies_to_the_device(fake_gpu, monkeypatch):
    """setup_s is read after the device has finished the data's copies (a synchronize), not when
    they were queued."""
    import time as time_module

    from dnnq.models import training

    events: list[str] = []  # inside _TrainingLoop.start: each synchronize and each clock read
    inside = [False]
    stream = fake_gpu._Stream
    synchronize, perf_counter = stream.synchronize, time_module.perf_counter

    def noting_sync(self):
        if inside[0]:
            events.append("sync")
        synchronize(self)

    def noting_clock():
        if inside[0]:
            events.append("clock")
        return perf_counter()

    start = training._TrainingLoop.start

    def start_and_note(*args, **kwargs):
        inside[0] = True
        try:
            return start(*args, **kwargs)
        finally:
            inside[0] = False

    monkeypatch.setattr(stream, "synchronize", noting_sync)
    monkeypatch.setattr(training.time, "perf_counter", noting_clock)
    monkeypatch.setattr(training._TrainingLoop, "start", start_and_note)
    result = small_run("gpu", dropout_keep_prob=0.9)  # no step graph: its checks would sync too
    assert events == ["sync", "clock"]  # the setup clock is read once, after the device is done
    assert result.timings["setup_s"] > 0


def test_dropout_on_the_device_resumes_exactly(fake_gpu):
    """Dropout masks come from the device's generator (not the CPU's), seeded by (seed, epoch) alone:
    a run stopped at epoch 2 and resumed from its checkpoint ends as the uninterrupted run does."""
    X, labels = data("softmax", m=300, n_x=20)
    cfg = TrainConfig(
        layer_dims=[20, 32, 16, 3],
        output="softmax",
        optimizer="adam",
        learning_rate=0.01,
        epochs=4,
        batch_size=64,
        dropout_keep_prob=0.8,
        seed=5,
        device="gpu",
    )
    uninterrupted = fit(X, labels, cfg)
    first, ckpt, resumed = stop_and_resume(X, labels, cfg, at=2)
    assert first.epochs_completed == 2
    for value in ckpt.parameters.values():
        assert type(value) is np.ndarray  # host arrays
    assert_same_run(resumed, uninterrupted)
    cpu = fit(X, labels, dataclasses.replace(cfg, device="cpu"))
    assert [r.loss for r in cpu.history] != [r.loss for r in uninterrupted.history]  # other masks


def test_a_graphed_run_resumes_exactly(fake_gpu):
    """Steps replayed from graphs, stopped after epoch 2 and resumed from the checkpoint (a new fit, so
    a new capture): the same history and parameters as the uninterrupted run, and as the CPU's."""
    X, labels = data("softmax", m=300, n_x=20)
    cfg = TrainConfig(
        layer_dims=[20, 32, 16, 3],
        output="softmax",
        optimizer="gd",
        learning_rate=0.1,
        lr_decay="inverse_time",
        decay_rate=0.3,
        epochs=4,
        batch_size=64,
        seed=5,
        device="gpu",
    )
    uninterrupted = fit(X, labels, cfg)
    first, _, resumed = stop_and_resume(X, labels, cfg, at=2)
    assert first.step_graph == "on: 8 steps replayed from 1 capture"  # 4 full batches an epoch, lr per epoch
    assert resumed.step_graph == "on: 8 steps replayed from 1 capture"
    assert_same_run(resumed, uninterrupted)
    assert_same_run(uninterrupted, fit(X, labels, dataclasses.replace(cfg, device="cpu")))


def test_the_stand_in_refuses_host_arrays_and_implicit_conversion(fake_gpu):
    """The checks this file relies on: a host array mixed in, or an implicit conversion, is an error."""
    import cupy

    device = cupy.asarray(np.ones((2, 2), dtype=np.float32))
    with pytest.raises(TypeError, match="Unsupported type"):
        device + np.ones((2, 2), dtype=np.float32)
    with pytest.raises(TypeError, match="Unsupported type"):
        cupy.matmul(device, np.ones((2, 2), dtype=np.float32))
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(device)
    assert type(cupy.sum(device)) is fake_cupy.DeviceArray and float(cupy.sum(device)) == 4.0
    assert type(np.exp(device)) is fake_cupy.DeviceArray  # NumPy's functions dispatch to the device
    assert backend.get_namespace(device) is cupy and type(backend.to_host(device)) is np.ndarray


def test_gpu_checks_parity_step_runs_on_the_stand_in(fake_gpu, capsys):
    """scripts/gpu-check's step 2 (bench.gpu_parity) end to end, so its first run on a real GPU is not
    also its first run: every check passes (the stand-in computes with NumPy, so differences are 0)."""
    from bench import gpu_parity

    assert gpu_parity.main() == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == 2 and "on gpu:0" in out and "FAIL" not in out


def test_gpu_checks_generator_pool_and_pack_step_runs_on_the_stand_in(fake_gpu, capsys):
    """scripts/gpu-check's step 2b script end to end on the stand-in: the device generators, setup_s, the
    pool after a failed fit, and the sweep pack replaying one captured step, each as the GPU run checks."""
    import runpy

    script = runpy.run_path(str(ROOT / "scripts" / "gpu-check"), run_name="gpu_check")["RNG_CHECK"]
    exec(compile(script, "gpu-check RNG_CHECK", "exec"), {"__name__": "__rng_check__"})
    out = capsys.readouterr().out
    assert "RNG-CHECK PASS" in out, out
    assert "gram pack of 3: step graph on: 5 steps replayed from 1 capture; final losses vs the CPU pack 0.0e+00" in out
