"""Each optimizer's update against its formula, worked with Python floats."""

import inspect
import math

import numpy as np
import pytest

from dnnq.models import GD, OPTIMIZERS, Adam, Momentum, RMSProp
from dnnq.models.optimizers import make_optimizer
from tests.models.conftest import NO_GPU

P0 = [1.0, -2.0]
G1 = [0.5, -0.25]
G2 = [-0.1, 0.3]


def params():
    return {"W1": np.array([P0]), "b1": np.array([[0.5]])}


def grads(g, gb):
    return {"dW1": np.array([g]), "db1": np.array([[gb]])}


def test_gd():
    p = params()
    opt = GD(0.1)
    opt.update(p, grads(G1, 2.0))
    np.testing.assert_allclose(p["W1"], [[P0[i] - 0.1 * G1[i] for i in range(2)]], rtol=1e-15)
    np.testing.assert_allclose(p["b1"], [[0.5 - 0.1 * 2.0]], rtol=1e-15)


def test_momentum_two_steps():
    p, beta, lr = params(), 0.9, 0.1
    opt = Momentum(lr, beta=beta)
    opt.update(p, grads(G1, 0.0))
    opt.update(p, grads(G2, 0.0))
    for i in range(2):
        v1 = (1 - beta) * G1[i]
        w1 = P0[i] - lr * v1
        v2 = beta * v1 + (1 - beta) * G2[i]
        assert p["W1"][0, i] == pytest.approx(w1 - lr * v2, rel=1e-14)


def test_rmsprop_one_step():
    p, lr, b2, eps = params(), 0.01, 0.999, 1e-8
    opt = RMSProp(lr, beta2=b2, epsilon=eps)
    opt.update(p, grads(G1, 0.0))
    for i in range(2):
        s = (1 - b2) * G1[i] ** 2
        assert p["W1"][0, i] == pytest.approx(P0[i] - lr * G1[i] / (math.sqrt(s) + eps), rel=1e-14)


def test_adam_two_steps_with_bias_correction():
    p, lr, b1, b2, eps = params(), 0.01, 0.9, 0.999, 1e-8
    opt = Adam(lr, beta1=b1, beta2=b2, epsilon=eps)
    opt.update(p, grads(G1, 0.0))
    opt.update(p, grads(G2, 0.0))
    assert opt.t == 2
    for i in range(2):
        w, v, s = P0[i], 0.0, 0.0
        for t, g in ((1, G1[i]), (2, G2[i])):
            v = b1 * v + (1 - b1) * g
            s = b2 * s + (1 - b2) * g * g
            w -= lr * (v / (1 - b1**t)) / (math.sqrt(s / (1 - b2**t)) + eps)
        assert p["W1"][0, i] == pytest.approx(w, rel=1e-14)


def test_state_round_trip():
    p = params()
    opt = Adam(0.01)
    opt.update(p, grads(G1, 1.0))
    saved = opt.state_arrays()
    again = Adam(0.01)
    again.load_state_arrays(saved, np, {k: v.copy() for k, v in p.items()})
    assert again.t == 1
    np.testing.assert_array_equal(again.state["v_W1"], opt.state["v_W1"])
    np.testing.assert_array_equal(again.state["s_b1"], opt.state["s_b1"])


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_make_optimizer_builds_each_class_with_its_hyperparameters(name):
    cls = OPTIMIZERS[name]
    init_args = list(inspect.signature(cls.__init__).parameters)[2:]  # after self, learning_rate
    assert sorted(cls.hyperparameters) == sorted(init_args)
    opt = make_optimizer(name, 0.5, beta=0.7, beta1=0.6, beta2=0.95, epsilon=1e-5)
    assert type(opt) is cls and opt.learning_rate == 0.5
    given = {"beta": 0.7, "beta1": 0.6, "beta2": 0.95, "epsilon": 1e-5}
    assert {key: getattr(opt, key) for key in cls.hyperparameters} == {key: given[key] for key in cls.hyperparameters}


def test_make_optimizer_names_the_valid_choices():
    with pytest.raises(
        ValueError, match=r"Unknown optimizer 'sgd'. Use one of \['adam', 'gd', 'momentum', 'rmsprop'\]"
    ):
        make_optimizer("sgd", 0.1)


@pytest.fixture(
    params=["device_stand_in", pytest.param("cupy", marks=pytest.mark.skipif(NO_GPU, reason="CuPy/GPU not available"))]
)
def device_xp(request, monkeypatch):
    from dnnq.models import backend

    if request.param == "cupy":
        import cupy

        yield cupy  # a generator fixture: `return cupy` here would end it without a value (pytest errors)
        return
    from tests.models import fake_cupy

    module = fake_cupy.installed(monkeypatch)
    backend.forget_gpu_check()
    yield module
    backend.forget_gpu_check()


@pytest.mark.parametrize("name", ["momentum", "rmsprop", "adam"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_device_step_is_one_kernel_with_the_numpy_bits(device_xp, name, dtype):
    """On a GPU each update_flat is one ElementwiseKernel launch (models.backend), not 5 / 8 / 12,
    and gives the NumPy sequence's results bit for bit (same operations, same order, no FMA)."""
    from dnnq.models.backend import to_host

    rng = np.random.default_rng(7)
    p0 = rng.standard_normal(1000).astype(dtype)
    steps = [rng.standard_normal(1000).astype(dtype) for _ in range(3)]
    layout = [("W1", 0, (10, 99)), ("b1", 990, (10, 1))]
    host, dev = make_optimizer(name, 0.01), make_optimizer(name, 0.01)
    p_host, p_dev = p0.copy(), device_xp.asarray(p0)
    host.bind_flat(p_host, layout)
    dev.bind_flat(p_dev, layout)
    stand_in = device_xp.__name__ == "cupy" and hasattr(device_xp, "DeviceArray")
    for g in steps:
        host.learning_rate = dev.learning_rate = host.learning_rate * 0.5  # a decaying rate
        host.update_flat(p_host, g)
        g_dev = device_xp.asarray(g)
        if stand_in:  # every device operation of the step, recorded as a capture records it
            launches = device_xp.ElementwiseKernel.launches
            stream = device_xp.cuda.Stream(non_blocking=True)
            stream.begin_capture()
            dev.update_flat(p_dev, g_dev)
            assert len(stream.end_capture()._operations) == 1
            assert device_xp.ElementwiseKernel.launches - launches == 1
        else:
            dev.update_flat(p_dev, g_dev)
    np.testing.assert_array_equal(to_host(p_dev), p_host)
    for slot in host.slots:
        np.testing.assert_array_equal(to_host(dev.state[f"{slot}_W1"]), host.state[f"{slot}_W1"])
