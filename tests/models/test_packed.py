"""fit_packed(): each trial of a pack trains as its solo fit does (history and weights to ~1e-12 in
float64), with its own learning rate and schedule, l2, dropout, seed and optimizer settings; a
diverging trial leaves the pack alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dnnq.models import TrainConfig, TrainingDiverged, fit
from dnnq.models.packed import fit_packed, pack_key


def data(m: int = 90, n_x: int = 6, classes: int = 0, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_x, m))
    if classes:
        return X, (X[0] > 0).astype(np.int64) + (X[1] > 0.5)
    return X, (X[:1] - 0.5 * X[1:2] > 0).astype(np.float64)


def wide_data_with_validation(seed: int, n_x: int, m: int, m_val: int):
    """(X, Y, {"X_val", "Y_val"}): more features than examples (the Gram path's case), 0/1 targets."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_x, m))
    Y = (X[:1] - X[3:4] > 0).astype(np.float64)
    X_val = rng.standard_normal((n_x, m_val))
    return X, Y, {"X_val": X_val, "Y_val": (X_val[:1] > 0).astype(np.float64)}


def assert_same_as_solo(packed, X, Y, cfg, rtol=1e-12, **kw) -> None:
    solo = fit(X, Y, cfg, path="textbook", **kw)
    assert packed.epochs_completed == solo.epochs_completed
    for field in ("loss", "val_loss"):
        a = [getattr(r, field) for r in packed.history]
        b = [getattr(r, field) for r in solo.history]
        if b[0] is None:
            assert a == b
        else:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=0)
    assert [r.accuracy for r in packed.history] == [r.accuracy for r in solo.history]
    for key, value in solo.parameters.items():
        scale = max(float(np.max(np.abs(value))), 1e-300)
        assert float(np.max(np.abs(packed.parameters[key] - value))) <= rtol * scale, key


BASE = {"layer_dims": [6, 8, 5, 1], "dtype": "float64", "device": "cpu", "epochs": 25}


def test_full_batch_gd_trials_with_their_own_rate_l2_seed_and_schedule():
    X, Y = data()
    configs = [
        TrainConfig(**BASE, learning_rate=0.05, seed=1),
        TrainConfig(**BASE, learning_rate=0.2, l2=0.3, seed=2, init="xavier"),
        TrainConfig(**{**BASE, "epochs": 12}, learning_rate=0.1, seed=3, lr_decay="inverse_time", decay_rate=0.5),
    ]
    results = fit_packed(X, Y, configs)
    assert [r.path for r in results] == ["packed"] * 3
    for result, cfg in zip(results, configs, strict=True):
        assert_same_as_solo(result, X, Y, cfg)


@pytest.mark.parametrize("optimizer", ["momentum", "rmsprop", "adam"])
def test_shuffled_mini_batches_with_dropout_and_validation(optimizer):
    X, Y = data(classes=3)
    Xv, Yv = data(m=30, classes=3, seed=1)
    common = {**BASE, "layer_dims": [6, 8, 5, 3], "output": "softmax", "optimizer": optimizer, "batch_size": 16}
    configs = [
        TrainConfig(**common, learning_rate=0.01, beta=0.8, beta1=0.85, dropout_keep_prob=0.8),
        TrainConfig(**common, learning_rate=0.003, beta2=0.99, l2=0.1, lr_decay="step", decay_rate=0.5, decay_every=5),
    ]
    results = fit_packed(X, Y, configs, X_val=Xv, Y_val=Yv)
    for result, cfg in zip(results, configs, strict=True):
        assert_same_as_solo(result, X, Y, cfg, X_val=Xv, Y_val=Yv)


def test_a_diverging_trial_leaves_the_pack_alone():
    X, _ = data()
    Y = 3 * X[:1] - X[1:2]  # squared error: a too-large rate overflows it
    common = {**BASE, "output": "linear", "hidden_activation": "leaky_relu", "seed": 1}
    configs = [TrainConfig(**common, learning_rate=0.01), TrainConfig(**common, learning_rate=10.0)]
    seen: list[tuple[int, int]] = []
    ok, diverged = fit_packed(X, Y, configs, on_epoch=lambda trial, record: seen.append((trial, record.epoch)))
    assert isinstance(diverged, TrainingDiverged) and "Training diverged at epoch" in str(diverged)
    with pytest.raises(TrainingDiverged) as solo:
        fit(X, Y, configs[1], path="textbook")
    assert diverged.epoch == solo.value.epoch
    assert_same_as_solo(ok, X, Y, configs[0])
    assert (0, 25) in seen and all(epoch < diverged.epoch for trial, epoch in seen if trial == 1)


def test_trials_that_cannot_share_a_pack_are_refused():
    a = TrainConfig(**BASE, batch_size=16, seed=1)
    assert pack_key(a) == pack_key(dataclasses.replace(a, learning_rate=0.5, l2=0.2))
    assert pack_key(a) != pack_key(dataclasses.replace(a, seed=2))  # the shuffle order comes from the seed
    assert pack_key(dataclasses.replace(a, batch_size=None)) == pack_key(
        dataclasses.replace(a, batch_size=None, seed=2)
    )
    X, Y = data()
    with pytest.raises(ValueError, match="cannot share a pack"):
        fit_packed(X, Y, [a, dataclasses.replace(a, layer_dims=[6, 4, 1])])


def test_a_pack_on_the_cupy_stand_in(monkeypatch):
    import dnnq.models.backend as backend
    from tests.models import fake_cupy

    X, Y = data(classes=3)
    common = {**BASE, "layer_dims": [6, 8, 3], "output": "softmax", "optimizer": "adam", "batch_size": 16}
    configs = [TrainConfig(**common, learning_rate=0.01), TrainConfig(**common, learning_rate=0.003, l2=0.1)]
    cpu = fit_packed(X, Y, configs)
    fake_cupy.installed(monkeypatch)
    backend.forget_gpu_check()
    try:
        gpu = fit_packed(X, Y, [dataclasses.replace(c, device="gpu") for c in configs])
    finally:
        backend.forget_gpu_check()
    for a, b in zip(gpu, cpu, strict=True):
        assert a.device.startswith("gpu")
        assert [r.to_dict() for r in a.history] == [r.to_dict() for r in b.history]
        for key, value in b.parameters.items():
            assert type(a.parameters[key]) is np.ndarray
            np.testing.assert_array_equal(a.parameters[key], value)


def test_fits_sharing_a_gram_cache_equal_their_solo_fits_and_reuse_the_data_blocks():
    """A sweep pack's trials, one after another, reuse the data's X X^T and X X_val^T (SharedGram):
    each fit's history and weights equal its own solo fit's, and the blocks are computed once."""
    from dnnq.models.gram import SharedGram

    rng = np.random.default_rng(4)
    X = rng.standard_normal((300, 50))  # wide input: the Gram path
    Y = (X[:1] + X[1:2] > 0).astype(np.float64)
    X_val = rng.standard_normal((300, 20))
    Y_val = (X_val[:1] > 0).astype(np.float64)
    cache = SharedGram()
    base = TrainConfig(layer_dims=[300, 7, 3, 1], epochs=30, optimizer="momentum", dtype="float64", device="cpu")
    for lr, seed, l2 in ((0.05, 1, 0.0), (0.1, 2, 0.01), (0.02, 3, 0.0)):
        cfg = dataclasses.replace(base, learning_rate=lr, seed=seed, l2=l2)
        shared = fit(X, Y, cfg, X_val=X_val, Y_val=Y_val, path="gram", gram_cache=cache)
        solo = fit(X, Y, cfg, X_val=X_val, Y_val=Y_val, path="gram")
        assert shared.path == solo.path == "gram"
        for field in ("loss", "val_loss", "accuracy", "val_accuracy"):
            a, b = [getattr(r, field) for r in shared.history], [getattr(r, field) for r in solo.history]
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)
        for key, value in solo.parameters.items():
            np.testing.assert_allclose(shared.parameters[key], value, rtol=1e-12, atol=1e-300)
    assert cache.hits == 4  # X X^T and X X_val^T made by the first fit, reused by the two others


def test_a_gram_cache_given_other_data_computes_its_own():
    from dnnq.models.gram import SharedGram

    rng = np.random.default_rng(5)
    X1, X2 = rng.standard_normal((200, 30)), rng.standard_normal((200, 30))
    Y = (rng.random((1, 30)) > 0.5).astype(np.float64)
    cfg = TrainConfig(layer_dims=[200, 4, 1], epochs=10, learning_rate=0.05, dtype="float64", device="cpu")
    cache = SharedGram()
    fit(X1, Y, cfg, path="gram", gram_cache=cache)
    shared = fit(X2, Y, cfg, path="gram", gram_cache=cache)
    solo = fit(X2, Y, cfg, path="gram")
    assert cache.hits == 0
    np.testing.assert_allclose([r.loss for r in shared.history], [r.loss for r in solo.history], rtol=1e-12)
    np.testing.assert_allclose(shared.parameters["W1"], solo.parameters["W1"], rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize(
    "optimizer, batch_size, with_val",
    [("gd", None, False), ("momentum", None, True), ("momentum", 16, True), ("gd", 16, False)],
)
def test_a_gram_path_pack_equals_each_trials_solo_gram_fit(optimizer, batch_size, with_val):
    """path="gram": layer 1 in coefficient space for the whole pack (X X^T once); each trial's
    history, weights and checkpoint equal its solo fit(path="gram") to 1e-12 in float64."""
    from dnnq.models.records import EpochState

    rng = np.random.default_rng(7)
    X = rng.standard_normal((120, 40))
    Y = (X[:1] - X[2:3] > 0).astype(np.float64)
    kw = {"X_val": rng.standard_normal((120, 15))} if with_val else {}
    if with_val:
        kw["Y_val"] = (kw["X_val"][:1] > 0).astype(np.float64)
    base = TrainConfig(
        layer_dims=[120, 6, 3, 1], epochs=20, optimizer=optimizer, batch_size=batch_size, seed=4,
        dtype="float64", device="cpu",
    )  # fmt: skip
    seed = (lambda s: 4) if batch_size else (lambda s: s)  # shuffled mini-batches share the seed
    configs = [
        dataclasses.replace(base, learning_rate=0.05, seed=seed(1)),
        dataclasses.replace(base, learning_rate=0.1, l2=0.05, seed=seed(2), dropout_keep_prob=0.8),
        dataclasses.replace(base, learning_rate=0.02, seed=seed(3), lr_decay="inverse_time", decay_rate=0.1),
    ]
    states: dict[int, list[EpochState]] = {0: [], 1: [], 2: []}
    ckpts = {}

    def on_state(trial: int, state: EpochState) -> None:
        states[trial].append(state)
        if state.epoch == 10:  # made inside the callback, as the pack runner's reporter does
            ckpts[trial] = state.checkpoint()

    results = fit_packed(X, Y, configs, path="gram", on_state=on_state, **kw)
    for trial, (packed, cfg) in enumerate(zip(results, configs, strict=True)):
        assert packed.path == "packed-gram" and len(states[trial]) == cfg.epochs
        solo = fit(X, Y, cfg, path="gram", **kw)
        for field in ("loss", "val_loss", "accuracy", "val_accuracy"):
            a, b = [getattr(r, field) for r in packed.history], [getattr(r, field) for r in solo.history]
            if b[0] is None:
                assert a == b
            else:
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)
        for key, value in solo.parameters.items():
            scale = float(np.max(np.abs(value)))
            assert float(np.max(np.abs(packed.parameters[key] - value))) <= 1e-12 * scale, key
        resumed = fit(X, Y, cfg, checkpoint=ckpts[trial], path="gram", **kw)  # the solo fit resumed ends the same
        np.testing.assert_allclose(resumed.parameters["W1"], solo.parameters["W1"], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose([r.loss for r in resumed.history], [r.loss for r in solo.history], rtol=1e-10)


def test_a_trial_that_should_stop_leaves_the_gram_pack_stopped_and_the_others_go_on():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((100, 30))
    Y = (X[:1] > 0).astype(np.float64)
    base = TrainConfig(layer_dims=[100, 5, 1 + 1, 1], epochs=12, learning_rate=0.05, dtype="float64", device="cpu")
    configs = [dataclasses.replace(base, seed=s) for s in (1, 2, 3)]
    seen: list[tuple[int, int]] = []
    results = fit_packed(
        X, Y, configs, path="gram", on_epoch=lambda t, r: seen.append((t, r.epoch)),
        should_stop=lambda t: t == 1 and len([1 for s in seen if s[0] == 1]) >= 4,
    )  # fmt: skip
    assert [r.stopped for r in results] == [False, True, False]
    assert [r.epochs_completed for r in results] == [12, 4, 12]
    solo = fit(X, Y, configs[2], path="gram")
    np.testing.assert_allclose(results[2].parameters["W1"], solo.parameters["W1"], rtol=1e-12, atol=1e-300)
    stopped_solo = fit(X, Y, dataclasses.replace(configs[1], epochs=4), path="gram")
    np.testing.assert_allclose(results[1].parameters["W2"], stopped_solo.parameters["W2"], rtol=1e-12)


def _assert_gram_trial_equals_solo(packed, X, Y, cfg, rtol, **kw) -> None:
    """History (every field) and weights of one packed trial against its solo fit(path="gram")."""
    solo = fit(X, Y, cfg, path="gram", **kw)
    assert packed.path == "packed-gram" and packed.epochs_completed == solo.epochs_completed
    for field in ("loss", "val_loss", "accuracy", "val_accuracy"):
        a, b = [getattr(r, field) for r in packed.history], [getattr(r, field) for r in solo.history]
        if b[0] is None:
            assert a == b
        elif field.endswith("accuracy"):
            np.testing.assert_allclose(a, b, rtol=0, atol=rtol * 100)  # a rounding may flip one borderline answer
        else:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=0)
    for key, value in solo.parameters.items():
        scale = float(np.max(np.abs(value)))
        assert float(np.max(np.abs(packed.parameters[key] - value))) <= rtol * scale, key


@pytest.mark.parametrize(
    "optimizer, batch_size, shared_start, l2, dtype",
    [
        ("gd", None, True, 0.0, "float64"),  # the sweep of learning rates: one product, update in the batch's columns
        ("gd", 16, True, 0.0, "float64"),  # shuffled mini-batches: gathered columns, scattered update
        ("gd", 16, False, 0.0, "float64"),  # differing starts (init), shuffled: the start block per trial
        ("gd", None, True, 0.1, "float64"),  # l2: the dense coefficient gradient, ||W1||^2 through the shared M
        ("gd", 16, False, 0.1, "float64"),  # l2 with differing starts: M per trial
        ("momentum", None, True, 0.1, "float64"),
        ("momentum", 16, False, 0.0, "float64"),
        ("gd", None, True, 0.0, "float32"),
        ("momentum", 16, False, 0.1, "float32"),
    ],
)
def test_each_branch_of_the_stacked_gram_step_equals_the_solo_gram_fits(optimizer, batch_size, shared_start, l2, dtype):
    """Shared or per-trial start block, full batch or shuffled mini-batches, l2 or not, gd or momentum:
    each trial's history and weights equal its solo fit(path="gram") to 1e-12 in float64, 1e-5 in float32."""
    X, Y, kw = wide_data_with_validation(seed=11, n_x=150, m=50, m_val=20)
    base = TrainConfig(
        layer_dims=[150, 6, 4, 1], epochs=15, optimizer=optimizer, batch_size=batch_size, seed=5, l2=l2,
        dtype=dtype, device="cpu",
    )  # fmt: skip
    inits = ("he", "he", "he") if shared_start else ("he", "xavier", "small")
    configs = [
        dataclasses.replace(base, learning_rate=lr, init=init, beta=beta)
        for lr, init, beta in zip((0.01, 0.03, 0.05), inits, (0.9, 0.8, 0.95), strict=True)
    ]
    results = fit_packed(X, Y, configs, path="gram", **kw)
    rtol = 1e-12 if dtype == "float64" else 1e-5
    for packed, cfg in zip(results, configs, strict=True):
        _assert_gram_trial_equals_solo(packed, X, Y, cfg, rtol, **kw)


def test_a_diverging_trial_leaves_the_gram_pack_and_the_others_train_on():
    rng = np.random.default_rng(12)
    X = rng.standard_normal((80, 40))
    Y = X[:1] - 0.5 * X[1:2]
    base = TrainConfig(
        layer_dims=[80, 5, 3, 1], output="linear", hidden_activation="leaky_relu", epochs=20, dtype="float64",
        device="cpu", seed=2,
    )  # fmt: skip
    configs = [dataclasses.replace(base, learning_rate=lr) for lr in (1e-3, 10.0, 3e-3)]
    ok, diverged, other = fit_packed(X, Y, configs, path="gram")
    assert isinstance(diverged, TrainingDiverged)
    with pytest.raises(TrainingDiverged) as solo:
        fit(X, Y, configs[1], path="gram")
    assert diverged.epoch == solo.value.epoch < 20
    for packed, cfg in ((ok, configs[0]), (other, configs[2])):
        _assert_gram_trial_equals_solo(packed, X, Y, cfg, 1e-12)


def test_a_gram_pack_on_the_cupy_stand_in_equals_the_numpy_pack(monkeypatch):
    """The stacked Gram step through the array module it is given (xp), not NumPy by name."""
    import dnnq.models.backend as backend
    from tests.models import fake_cupy

    rng = np.random.default_rng(13)
    X = rng.standard_normal((60, 30))
    Y = (X[:1] > 0).astype(np.float64)
    base = TrainConfig(layer_dims=[60, 5, 3, 1], epochs=8, batch_size=8, dtype="float64", device="cpu", seed=3)
    configs = [dataclasses.replace(base, learning_rate=0.05), dataclasses.replace(base, learning_rate=0.1, l2=0.1)]
    cpu = fit_packed(X, Y, configs, path="gram")
    fake_cupy.installed(monkeypatch)
    backend.forget_gpu_check()
    try:
        gpu = fit_packed(X, Y, [dataclasses.replace(c, device="gpu") for c in configs], path="gram")
    finally:
        backend.forget_gpu_check()
    for a, b in zip(gpu, cpu, strict=True):
        assert a.device.startswith("gpu") and a.path == "packed-gram"
        assert [r.to_dict() for r in a.history] == [r.to_dict() for r in b.history]
        for key, value in b.parameters.items():
            assert type(a.parameters[key]) is np.ndarray
            np.testing.assert_array_equal(a.parameters[key], value)


def _stacked_on_the_stand_in(monkeypatch, configs, X, Y, graphs=True, **kw):
    """fit_packed(path="gram") on the CuPy stand-in (device "gpu"), step graphs on or off; the captures made."""
    import dnnq.models.backend as backend
    from dnnq.models import stepgraph
    from tests.models import fake_cupy

    module = fake_cupy.installed(monkeypatch)
    backend.forget_gpu_check()
    before = module.Graph.captures
    try:
        with stepgraph.switched(graphs):
            results = fit_packed(X, Y, [dataclasses.replace(c, device="gpu") for c in configs], path="gram", **kw)
    finally:
        backend.forget_gpu_check()
    return results, module.Graph.captures - before


def _assert_same_bits(a, b) -> None:
    assert [r.to_dict() for r in a.history] == [r.to_dict() for r in b.history]
    for key, value in b.parameters.items():
        np.testing.assert_array_equal(a.parameters[key], value)


@pytest.mark.parametrize("optimizer", ["gd", "momentum"])
def test_a_full_batch_gram_pack_on_a_gpu_replays_one_captured_step(monkeypatch, optimizer):
    """On a GPU the stacked full-batch step (forward, loss, backward) replays one graph, as a solo fit's
    does; per-trial rates that decay every epoch are written where the graph reads them, not captured
    again; the update stays outside. Every trial's numbers are the kernel-by-kernel pack's, bit for bit."""
    X, Y, val = wide_data_with_validation(seed=21, n_x=60, m=40, m_val=15)
    base = TrainConfig(
        layer_dims=[60, 5, 3, 1], epochs=6, optimizer=optimizer, dtype="float64", device="cpu", seed=4,
        lr_decay="inverse_time", decay_rate=0.5,
    )  # fmt: skip
    configs = [
        dataclasses.replace(base, learning_rate=0.05),
        dataclasses.replace(base, learning_rate=0.1, l2=0.2, beta=0.8),
        dataclasses.replace(base, learning_rate=0.02, init="xavier"),
    ]
    graphed, captures = _stacked_on_the_stand_in(monkeypatch, configs, X, Y, **val)
    eager, none = _stacked_on_the_stand_in(monkeypatch, configs, X, Y, graphs=False, **val)
    assert (captures, none) == (1, 0)
    cpu = fit_packed(X, Y, configs, path="gram", **val)
    for g, e, c in zip(graphed, eager, cpu, strict=True):
        assert g.step_graph == "on: 6 steps replayed from 1 capture"
        assert e.step_graph is None and c.step_graph is None
        _assert_same_bits(g, e)
        _assert_same_bits(g, c)


def test_a_trial_leaving_a_graphed_pack_makes_one_new_capture_for_the_others(monkeypatch):
    """A trial that ends (here after 3 of 6 epochs) shrinks every stacked array: the graph of the old
    size goes and one capture of the new size serves the rest of the run (its first replay checked
    against the same step kernel by kernel, with l2: every gradient the graph holds is its own)."""
    rng = np.random.default_rng(22)
    X = rng.standard_normal((50, 30))
    Y = (X[:1] > 0).astype(np.float64)
    base = TrainConfig(layer_dims=[50, 4, 1], epochs=6, dtype="float64", device="cpu", seed=1)
    configs = [
        dataclasses.replace(base, learning_rate=0.05, epochs=3),
        dataclasses.replace(base, learning_rate=0.1, l2=0.3),
        dataclasses.replace(base, learning_rate=0.2),
    ]
    (short, *rest), captures = _stacked_on_the_stand_in(monkeypatch, configs, X, Y)
    assert captures == 2
    assert short.step_graph == "on: 3 steps replayed from 1 capture"
    assert [r.step_graph for r in rest] == ["on: 6 steps replayed from 2 captures"] * 2
    for packed, cfg in zip([short, *rest], configs, strict=True):
        _assert_same_bits(packed, fit_packed(X, Y, [cfg], path="gram")[0])


@pytest.mark.parametrize("extra", [{"dropout_keep_prob": 0.8}, {"batch_size": 16}])
def test_a_gram_pack_with_dropout_or_mini_batches_runs_kernel_by_kernel(monkeypatch, extra):
    """Dropout draws masks every step and a shuffled batch gathers its columns: neither is captured."""
    rng = np.random.default_rng(23)
    X = rng.standard_normal((40, 48))
    Y = (X[:1] > 0).astype(np.float64)
    base = TrainConfig(layer_dims=[40, 4, 1], epochs=3, dtype="float64", device="cpu", seed=1, **extra)
    configs = [dataclasses.replace(base, learning_rate=lr) for lr in (0.05, 0.1)]
    results, captures = _stacked_on_the_stand_in(monkeypatch, configs, X, Y)
    assert captures == 0 and [r.step_graph for r in results] == [None, None]


def _solo_checkpoint(X, Y, cfg, epoch, **kw):
    """cfg's solo fit(path="gram") checkpoint after ``epoch`` epochs, taken as the reporter takes it."""
    held = {}

    def on_epoch(state) -> None:
        if state.epoch == epoch:
            held["ckpt"] = state.checkpoint()

    fit(X, Y, cfg, path="gram", on_epoch=on_epoch, should_stop=lambda: "ckpt" in held, **kw)
    return held["ckpt"]


def _assert_within(packed, solo, rtol) -> None:
    """History (epoch numbers, accuracies, losses) and weights of one run against another, to rtol."""
    assert [r.epoch for r in packed.history] == [r.epoch for r in solo.history]
    assert [r.accuracy for r in packed.history] == [r.accuracy for r in solo.history]
    for field in ("loss", "val_loss"):
        a, b = [getattr(r, field) for r in packed.history], [getattr(r, field) for r in solo.history]
        if b[0] is None:
            assert a == b
        else:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=0)
    for key, value in solo.parameters.items():
        scale = float(np.max(np.abs(value)))
        assert float(np.max(np.abs(packed.parameters[key] - value))) <= rtol * scale, key


@pytest.mark.parametrize("batch_size, with_val", [(None, True), (16, False)])
def test_a_gd_gram_pack_resumed_from_checkpoints_equals_each_trials_solo_runs(batch_size, with_val):
    """Trials checkpointed at epoch 7 by their solo fits resume as one stacked pack: epoch numbers, the
    decaying learning rates, the shuffle order and each trial's own end go on from epoch 7, and each
    trial's history and weights equal its uninterrupted solo fit's and its solo resumed fit's to 1e-12."""
    X, Y, val = wide_data_with_validation(seed=31, n_x=150, m=50, m_val=20)
    kw = val if with_val else {}
    base = TrainConfig(
        layer_dims=[150, 6, 4, 1], epochs=20, batch_size=batch_size, seed=5, dtype="float64", device="cpu",
        lr_decay="inverse_time", decay_rate=0.2,
    )  # fmt: skip
    configs = [
        dataclasses.replace(base, learning_rate=0.01),
        dataclasses.replace(base, learning_rate=0.03, l2=0.1),
        dataclasses.replace(base, learning_rate=0.05, epochs=12),  # stops at its own end
        dataclasses.replace(base, learning_rate=0.02, init="xavier"),
    ]
    ckpts = [_solo_checkpoint(X, Y, cfg, 7, **kw) for cfg in configs]
    seen: dict[int, list[int]] = {k: [] for k in range(len(configs))}
    results = fit_packed(
        X, Y, configs, path="gram", checkpoints=ckpts, on_state=lambda k, state: seen[k].append(state.epoch), **kw
    )
    for k, (packed, cfg, ckpt) in enumerate(zip(results, configs, ckpts, strict=True)):
        assert packed.path == "packed-gram" and packed.epochs_completed == cfg.epochs
        assert seen[k] == list(range(8, cfg.epochs + 1))
        _assert_within(packed, fit(X, Y, cfg, path="gram", **kw), 1e-12)
        _assert_within(packed, fit(X, Y, cfg, path="gram", checkpoint=ckpt, **kw), 1e-12)


def test_a_pack_resumes_only_gd_trials_checkpointed_at_one_epoch():
    X, Y, _ = wide_data_with_validation(seed=32, n_x=60, m=30, m_val=5)
    base = TrainConfig(layer_dims=[60, 4, 3, 1], epochs=10, seed=2, dtype="float64", device="cpu")
    configs = [dataclasses.replace(base, learning_rate=lr) for lr in (0.05, 0.1)]
    ckpts = [_solo_checkpoint(X, Y, cfg, e) for cfg, e in zip(configs, (4, 6), strict=True)]
    with pytest.raises(ValueError, match=r"checkpoints are at epochs \[4, 6\]"):
        fit_packed(X, Y, configs, path="gram", checkpoints=ckpts)
    momentum = [dataclasses.replace(c, optimizer="momentum") for c in configs]
    same = [_solo_checkpoint(X, Y, cfg, 4) for cfg in momentum]
    with pytest.raises(ValueError, match="optimizer 'gd' only"):
        fit_packed(X, Y, momentum, path="gram", checkpoints=same)
