"""The device generator of the dropout masks, on the CuPy stand-in (tests/models/fake_cupy.py): made
only when dropout is on, and a fixed-size counter-based one (Philox), so the masks come from
(seed, epoch) alone on every GPU model (issue 18)."""

from __future__ import annotations

import numpy as np
import pytest

import dnnq.models.backend as backend
from dnnq.models import TrainConfig, fit
from tests.models import fake_cupy


@pytest.fixture
def fake_gpu(monkeypatch):
    module = fake_cupy.installed(monkeypatch)
    backend.forget_gpu_check()
    yield module
    backend.forget_gpu_check()


def run(keep_prob: float, epochs: int = 3):
    rng = np.random.default_rng(0)
    X = rng.random((20, 300), dtype=np.float32)
    labels = (X[:5].sum(axis=0) > X[5:10].sum(axis=0)).astype(np.int64)
    cfg = TrainConfig(
        layer_dims=[20, 64, 32, 2],
        output="softmax",
        optimizer="adam",
        learning_rate=0.01,
        epochs=epochs,
        batch_size=128,  # masks of 128 x 64 values: more than a 1-SM GPU's 2048 XORWOW states
        dropout_keep_prob=keep_prob,
        seed=7,
        device="gpu",
    )
    return fit(X, labels, cfg)


def test_a_device_generator_is_made_only_with_dropout(fake_gpu):
    made, xorwow = fake_gpu.Philox4x3210.made, fake_gpu.XORWOW.made
    result = run(keep_prob=1.0)
    assert fake_gpu.Philox4x3210.made == made  # no dropout: no generator, no state set-up on the device
    assert result.device_rng == f"{backend.DEVICE_RNG}: 0 made"
    result = run(keep_prob=0.8)
    assert fake_gpu.Philox4x3210.made == made + 3  # one per epoch, each from (seed, epoch)
    assert result.device_rng == f"{backend.DEVICE_RNG}: 3 made"
    assert fake_gpu.XORWOW.made == xorwow  # never the SM-sized default


def test_the_generator_is_philox_of_a_fixed_size(fake_gpu):
    epoch_rng = backend.device_rng(fake_gpu, seed=1, epoch=0)
    assert not epoch_rng.device_made
    epoch_rng.random((4, 4), np.float32)
    assert epoch_rng.device_made
    bit_generator = epoch_rng._dev.bit_generator
    assert type(bit_generator) is fake_gpu.Philox4x3210
    assert bit_generator.size == 1 << 16 and backend.DEVICE_RNG == "Philox4x3210 (65536 states)"


def test_masks_do_not_depend_on_the_gpu_model(fake_gpu, monkeypatch):
    """The same (seed, epoch) on GPUs with 1, 66 and 132 SMs: the same draws, larger than the state
    count too, and the same training run (the SM-sized XORWOW default would differ)."""

    def draws(sm_count: int) -> list[np.ndarray]:
        monkeypatch.setattr(fake_gpu, "sm_count", sm_count)
        epoch_rng = backend.device_rng(fake_gpu, seed=3, epoch=2)
        return [epoch_rng.random(shape, np.float32).get() for shape in ((64, 32), (300, 300), (64, 32))]

    reference = draws(132)
    assert reference[2].tolist() != reference[0].tolist()  # a state's next values, not the same again
    for sm_count in (1, 66):
        for got, want in zip(draws(sm_count), reference, strict=True):
            np.testing.assert_array_equal(got, want)
    monkeypatch.setattr(fake_gpu, "sm_count", 1)
    small = run(keep_prob=0.8, epochs=2)
    monkeypatch.setattr(fake_gpu, "sm_count", 132)
    large = run(keep_prob=0.8, epochs=2)
    assert [r.to_dict() for r in small.history] == [r.to_dict() for r in large.history]
    for key, value in large.parameters.items():
        np.testing.assert_array_equal(small.parameters[key], value)


def test_the_stand_ins_default_sized_generator_does_depend_on_it(fake_gpu):
    """What the test above guards against, shown on the stand-in: an XORWOW sized by the SM count
    gives other values, once a draw is larger than its state count, on a GPU with more SMs."""
    one_sm = fake_gpu.random.Generator(fake_gpu.XORWOW(5, size=8 * 256 * 1)).random(4096)
    two_sm = fake_gpu.random.Generator(fake_gpu.XORWOW(5, size=8 * 256 * 2)).random(4096)
    assert one_sm.get()[:2048].tolist() == two_sm.get()[:2048].tolist()
    assert one_sm.get()[2048:].tolist() != two_sm.get()[2048:].tolist()


def test_the_cpu_draws_are_unchanged():
    """On NumPy the masks still come from the host generator of (seed, epoch): bit-identical runs."""
    epoch_rng = backend.device_rng(np, seed=3, epoch=2)
    expected = np.random.default_rng([3, 2]).random((8, 4), dtype=np.float32)
    np.testing.assert_array_equal(epoch_rng.random((8, 4), np.dtype(np.float32)), expected)
    assert not epoch_rng.device_made
