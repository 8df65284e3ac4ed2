"""The ``xp`` fixture: every functional-API test runs on NumPy, array_api_strict, a CuPy stand-in
(tests/models/fake_cupy.py: device arrays that refuse host arrays, as CuPy's do) and CuPy when a GPU is here."""

import importlib

import numpy as np
import pytest

from dnnq.models.backend import gpu_available, to_host

# Evaluated once at collection; importing models.backend never imports CuPy by itself.
NO_GPU = importlib.util.find_spec("cupy") is None or not gpu_available()


@pytest.fixture(
    params=[
        "numpy",
        "array_api_strict",
        "device_stand_in",
        pytest.param("cupy", marks=pytest.mark.skipif(NO_GPU, reason="CuPy/GPU not available")),
    ]
)
def xp(request, monkeypatch):
    if request.param == "numpy":
        return np
    if request.param == "array_api_strict":
        return pytest.importorskip("array_api_strict", reason="array_api_strict not installed")
    if request.param == "device_stand_in":  # CuPy's host/device rules on the CPU (tests/models/fake_cupy.py)
        from tests.models import fake_cupy

        return fake_cupy.installed(monkeypatch)
    import cupy

    return cupy


def host(x) -> np.ndarray:
    """Any backend's array as a float64 NumPy array, for comparing with hand-worked values."""
    return np.asarray(to_host(x), dtype=np.float64)


def on(xp, a, dtype=None):
    """A NumPy/list value moved to backend ``xp`` as float64."""
    return xp.asarray(np.asarray(a, dtype=np.float64))


def stop_and_resume(X, Y, cfg, at: int = 2):
    """fit stopped after epoch ``at`` (its checkpoint taken through host arrays, as a worker saves
    it), then a second fit resumed from that checkpoint: (the stopped run, the checkpoint, the resumed run)."""
    from dnnq.models import Checkpoint, fit

    saved = {}

    def on_epoch(state):
        if state.epoch == at:
            saved["ckpt"] = Checkpoint.from_arrays(state.checkpoint().to_arrays())

    first = fit(X, Y, cfg, on_epoch=on_epoch, should_stop=lambda: "ckpt" in saved)
    return first, saved["ckpt"], fit(X, Y, cfg, checkpoint=saved["ckpt"])
