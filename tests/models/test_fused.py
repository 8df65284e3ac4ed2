"""models.fused: the compiled CPU kernels give the NumPy sequences' results bit for bit, so whether
a kernel runs (big arrays, Numba present) or NumPy does never changes what fit returns."""

import math

import numpy as np
import pytest

from dnnq.models import TrainConfig, fit, fused
from dnnq.models.flat import flat_layout, flat_views, flatten_params
from dnnq.models.optimizers import make_optimizer

from .conftest import stop_and_resume

needs_numba = pytest.mark.skipif(not fused.available(), reason="numba not installed (or cannot compile here)")

N = fused.MIN_ELEMENTS + 7  # big enough for the kernels, and not a multiple of any vector width


@pytest.fixture
def kernels_on():
    fused.set_enabled(True)
    yield
    fused.set_enabled(True)


def _arrays(dtype, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(N).astype(dtype)
    grads = [(rng.standard_normal(N) * 10.0 ** rng.integers(-6, 1, N)).astype(dtype) for _ in range(4)]
    return p, grads


@needs_numba
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["gd", "momentum", "rmsprop", "adam"])
def test_optimizer_kernel_is_bit_identical_to_numpy(name, dtype, kernels_on):
    p0, grads = _arrays(dtype)
    layout = [("p", 0, (N,))]
    results = {}
    for enabled in (True, False):
        fused.set_enabled(enabled)
        p = p0.copy()
        opt = make_optimizer(name, 0.01)
        opt.bind_flat(p, layout)
        for g in grads:  # several steps: Adam's bias corrections change with t
            opt.update_flat(p, g)
        results[enabled] = (p, {k: np.array(v) for k, v in opt.state.items()}, opt.t)
    (p_fused, state_fused, t_fused), (p_numpy, state_numpy, t_numpy) = results[True], results[False]
    assert t_fused == t_numpy == len(grads)
    assert not np.array_equal(p_fused, p0)  # it stepped
    np.testing.assert_array_equal(p_fused, p_numpy)
    assert state_fused.keys() == state_numpy.keys()
    for key in state_numpy:
        np.testing.assert_array_equal(state_fused[key], state_numpy[key])


@needs_numba
def test_prescaled_gd_kernel_is_bit_identical(kernels_on):
    p0, grads = _arrays("float32", seed=1)
    out = {}
    for enabled in (True, False):
        fused.set_enabled(enabled)
        p = p0.copy()
        opt = make_optimizer("gd", 0.1)
        for g in grads:
            opt.update_prescaled_flat(p, g)
        out[enabled] = p
    np.testing.assert_array_equal(out[True], out[False])


def test_small_or_strided_arrays_take_the_numpy_path():
    small = np.zeros(fused.MIN_ELEMENTS - 1, np.float32)
    big = np.zeros((fused.MIN_ELEMENTS, 2), np.float32)
    assert not fused.wanted(small, small)
    assert not fused.wanted(big[:, 0], big[:, 1])  # not contiguous
    assert not fused.wanted([1.0] * fused.MIN_ELEMENTS)  # not an ndarray


def test_flat_views_share_memory_with_the_flat_array():
    params = {"W1": np.arange(6.0).reshape(3, 2), "b1": np.ones((3, 1))}
    before = {k: v.copy() for k, v in params.items()}
    flat, layout = flatten_params(np, params)
    assert layout == flat_layout(params) == [("W1", 0, (3, 2)), ("b1", 6, (3, 1))]
    for key in params:
        np.testing.assert_array_equal(params[key], before[key])
        assert np.shares_memory(params[key], flat) and params[key].flags.c_contiguous
    flat -= 1.0
    np.testing.assert_array_equal(params["b1"], np.zeros((3, 1)))
    views = flat_views(flat, layout)
    assert views["W1"].shape == (3, 2) and math.prod(views["b1"].shape) == 3


def test_bind_flat_keeps_state_loaded_before_it():
    params = {"W1": np.zeros((2, 3)), "b1": np.zeros((2, 1))}
    opt = make_optimizer("adam", 0.1)
    saved = {
        "t": np.array(5),
        "v_W1": np.full((2, 3), 2.0),
        "s_W1": np.full((2, 3), 3.0),
        "v_b1": np.full((2, 1), 4.0),
        "s_b1": np.full((2, 1), 5.0),
    }
    opt.load_state_arrays(saved, np, params)
    flat, layout = flatten_params(np, params)
    opt.bind_flat(flat, layout)
    for key, value in saved.items():
        if key != "t":
            np.testing.assert_array_equal(opt.state[key], value)
    opt.load_state_arrays({**saved, "v_W1": np.full((2, 3), 7.0)}, np, params)  # loads into the views
    np.testing.assert_array_equal(opt._flat["v"][:6], np.full(6, 7.0))


@needs_numba
@pytest.mark.parametrize(
    "optimizer, hidden, keep",
    [("gd", [128], 1.0), ("adam", [128], 1.0), ("gd", [128, 64], 1.0), ("momentum", [128, 64], 0.8)],
)
def test_fit_is_the_same_with_and_without_kernels(optimizer, hidden, keep, kernels_on):
    """A shuffled mini-batch float32 run big enough for every kernel (parameters, batch gather, the
    engine's relu and softmax steps; two hidden layers reach relu_backward_), with validation."""
    rng = np.random.default_rng(3)
    m, n_x = 600, 300
    X = rng.random((n_x, m), dtype=np.float32)
    labels = (X[:5].sum(axis=0) > 2.5).astype(np.int64) + (X[5:10].sum(axis=0) > 2.5)
    cfg = TrainConfig(
        layer_dims=[n_x, *hidden, 3],
        output="softmax",
        init="he",
        seed=4,
        optimizer=optimizer,
        learning_rate=1e-3 if optimizer == "adam" else 0.05,
        epochs=3,
        batch_size=128,
        dropout_keep_prob=keep,
        dtype="float32",
        device="cpu",
    )
    assert n_x * hidden[0] >= fused.MIN_ELEMENTS  # so every kernel runs
    runs = {}
    for enabled in (True, False):
        fused.set_enabled(enabled)
        runs[enabled] = fit(X, labels, cfg, X_val=X[:, :100], Y_val=labels[:100])
    with_kernels, without = runs[True], runs[False]
    assert [h.loss for h in with_kernels.history] == [h.loss for h in without.history]
    assert [h.accuracy for h in with_kernels.history] == [h.accuracy for h in without.history]
    assert [h.val_loss for h in with_kernels.history] == [h.val_loss for h in without.history]
    assert [h.val_accuracy for h in with_kernels.history] == [h.val_accuracy for h in without.history]
    assert with_kernels.history[-1].loss < with_kernels.history[0].loss  # it learned
    for key in without.parameters:
        np.testing.assert_array_equal(with_kernels.parameters[key], without.parameters[key])


@needs_numba
def test_resume_with_kernels_is_exact(kernels_on):
    """Adam's flat state through a checkpoint and back, with the kernel stepping it."""
    rng = np.random.default_rng(5)
    X = rng.random((300, 400), dtype=np.float32)
    labels = (X[:3].sum(axis=0) > 1.5).astype(np.int64)
    cfg = TrainConfig(
        layer_dims=[300, 128, 2],
        output="softmax",
        optimizer="adam",
        learning_rate=1e-3,
        epochs=4,
        batch_size=100,
        seed=6,
        dtype="float32",
        device="cpu",
    )
    uninterrupted = fit(X, labels, cfg)
    first, _, resumed = stop_and_resume(X, labels, cfg, at=2)
    assert first.epochs_completed == 2
    assert [r.to_dict() for r in resumed.history] == [r.to_dict() for r in uninterrupted.history]
    for key, value in uninterrupted.parameters.items():
        np.testing.assert_array_equal(resumed.parameters[key], value)


# --- the engine's kernels (models/engine.py): each against the NumPy sequence it replaces --------


def _bits(a):
    """The array's bytes as unsigned integers: equal only if equal bit for bit (-0.0 != 0.0, NaN == NaN)."""
    return np.ascontiguousarray(a).view(np.uint32 if a.dtype == np.float32 else np.uint64)


def _special(dtype, shape, seed):
    """Random values with zeros of both signs, NaN and infinities sprinkled in."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape).astype(dtype)
    flat = a.reshape(-1)
    for value, count in ((0.0, 9), (-0.0, 9), (np.nan, 3), (np.inf, 2), (-np.inf, 2)):
        flat[rng.integers(0, flat.size, count)] = value
    return a


@needs_numba
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bias_relu_kernel_is_the_engine_sequence(dtype):
    Z, b = _special(dtype, (37, 19), 0), _special(dtype, (19, 1), 1)
    b[:3] = [[0.0], [-0.0], [-0.0]]
    expected = Z.copy()
    expected += b.T
    np.maximum(expected, np.zeros_like(expected), out=expected)  # the engine's relu
    got = Z.copy()
    fused.bias_relu_(got, b.T[0])
    np.testing.assert_array_equal(_bits(got), _bits(expected))


@needs_numba
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_relu_backward_kernel_is_the_engine_sequence(dtype):
    dA, H = _special(dtype, (37, 19), 2), _special(dtype, (37, 19), 3)
    expected = dA.copy()
    with np.errstate(invalid="ignore"):  # inf * 0
        expected *= np.greater(H, 0)
    got = dA.copy()
    fused.relu_backward_(got, H)
    np.testing.assert_array_equal(_bits(got), _bits(expected))


@needs_numba
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_kernels_are_the_engine_sequence(dtype):
    rng = np.random.default_rng(4)
    Z = (rng.standard_normal((41, 10)) * 5).astype(dtype)
    Z[3, [2, 7]] = Z[3].max() + 1  # a tie: argmax is the first
    Z[5, 4] = np.nan  # NaN: max is NaN, argmax the first NaN
    Z[6, [1, 8]] = np.nan
    labels = rng.integers(0, 10, 41)
    labels[3], labels[5], labels[6] = 2, 4, 1
    Y = np.eye(10, dtype=dtype)[labels]
    # the NumPy sequence of Engine.output and backward
    mx = np.max(Z, axis=1, keepdims=True)
    Zs = Z - mx
    correct = np.count_nonzero(np.argmax(Z, axis=1) == labels)
    AL = np.exp(Zs)
    S = (AL @ np.ones(10, dtype=dtype))[:, None]
    AL /= S
    Zs -= np.log(S)
    dZ = AL - Y
    dZ *= 0.1 / 41
    # the kernels
    Zs_k = np.empty_like(Z)
    correct_k = fused.softmax_head_(Z, labels, Zs_k)
    AL_k = np.exp(Zs_k)
    S_k = AL_k @ np.ones(10, dtype=dtype)
    fused.softmax_tail_(AL_k, S_k, np.log(S_k), Zs_k)
    dZ_k = np.empty_like(Z)
    fused.output_grad_(AL_k, Y, 0.1 / 41, dZ_k)
    assert correct_k == correct
    assert list(np.argmax(Z[[3, 5, 6]], axis=1)) == [2, 4, 1]  # the tie and the NaN rows count as right
    for got, expected in ((Zs_k, Zs), (AL_k, AL), (dZ_k, dZ)):
        np.testing.assert_array_equal(_bits(got), _bits(expected))


@needs_numba
@pytest.mark.parametrize("n", [0, 1, 5, 8, 17, 259])
def test_take_rows_kernel_is_a_row_gather(n):
    rng = np.random.default_rng(n)
    src = _special("float32", (300, 13), n)
    idx = rng.integers(0, 300, n)
    out = np.empty((n, 13), np.float32)
    fused.take_rows_(src, idx, out)
    np.testing.assert_array_equal(_bits(out), _bits(src[idx]))


def test_engine_kernels_only_for_big_numpy_networks():
    assert not fused.engine_wanted(np, np.float32, fused.MIN_ELEMENTS - 1)
    assert not fused.engine_wanted(np, np.int64, fused.MIN_ELEMENTS)
    assert not fused.engine_wanted(object(), np.float32, fused.MIN_ELEMENTS)  # CuPy, array-api-strict
    fused.set_enabled(False)
    try:
        assert not fused.engine_wanted(np, np.float32, fused.MIN_ELEMENTS)
    finally:
        fused.set_enabled(True)
