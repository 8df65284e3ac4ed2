"""Weights and checkpoints: formats agree, loading never unpickles."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np

from dnnq.workers import artifacts


def params(layers=(3, 5, 4, 1), seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for l in range(1, len(layers)):
        out[f"W{l}"] = rng.normal(size=(layers[l], layers[l - 1])).astype(np.float32)
        out[f"b{l}"] = rng.normal(size=(layers[l], 1)).astype(np.float32)
    return out


def test_npz_and_safetensors_hold_the_same_arrays():
    from safetensors.numpy import load

    p = params()
    with np.load(io.BytesIO(artifacts.weights_npz_bytes(p)), allow_pickle=False) as npz:
        from_npz = {k: npz[k] for k in npz.files}
    from_st = load(artifacts.weights_safetensors_bytes(p))
    for k in p:
        np.testing.assert_array_equal(from_npz[k], p[k])
        np.testing.assert_array_equal(from_st[k], p[k])


def test_save_trained_writes_all_and_describes_the_model(store):
    p = params()
    info = {
        "hidden_activation": "tanh",
        "output": "sigmoid",
        "input_scale": 1 / 255,
        "classes": ["no", "yes"],
        "metrics": {"final_loss": 0.1},
        "dataset_id": "ab" * 12,
        "label_kind": "binary",
    }
    shas = artifacts.save_trained(store, "f" * 32, p, info)
    assert {"npz", "safetensors", "model_json"} <= set(shas)
    model = json.loads(store.get(f"jobs/{'f' * 32}/model.json"))
    assert model["layer_sizes"] == [3, 5, 4, 1]
    assert model["activations"] == ["tanh", "tanh", "sigmoid"]
    assert model["preprocessing"]["scale"] == 1 / 255 and model["classes"] == ["no", "yes"]
    assert model["versions"]["numpy"] == np.__version__ and model["versions"]["dnnq"]
    if "onnx" in shas:
        assert store.exists(f"jobs/{'f' * 32}/weights.onnx")


def test_checkpoint_round_trip(store):
    from dnnq.models import Checkpoint, EpochRecord

    ckpt = Checkpoint(
        epoch=3,
        parameters=params(),
        optimizer_state={"v_dW1": np.ones((5, 3))},
        history=[EpochRecord(i, 1.0 / i, 0.5, None, None) for i in (1, 2, 3)],
        seed=4,
    )
    assert artifacts.load_checkpoint(store, "e" * 32) is None
    artifacts.save_checkpoint(store, "e" * 32, ckpt)
    back = artifacts.load_checkpoint(store, "e" * 32)
    assert back.epoch == 3 and back.seed == 4 and len(back.history) == 3
    np.testing.assert_array_equal(back.parameters["W2"], ckpt.parameters["W2"])
    np.testing.assert_array_equal(back.optimizer_state["v_dW1"], np.ones((5, 3)))
    artifacts.delete_checkpoint(store, "e" * 32)
    assert artifacts.load_checkpoint(store, "e" * 32) is None


def test_api_side_imports_do_not_touch_cuda():
    """The modules the API imports load no CUDA (CuPy), no compiled kernels (numba), no FastAPI or
    torch. They load dnnq.models, whose names (models/names.py) JobSpec's fields are typed by; the API
    preloads it at start-up anyway (service/app.py)."""
    code = (
        "import sys; import dnnq.workers, dnnq.workers.celery_app, dnnq.workers.jobs, dnnq.workers.datasets, "
        "dnnq.workers.spec, dnnq.workers.artifact_store, dnnq.workers.recovery, dnnq.workers.tasks, "
        "dnnq.workers.redis_server; "
        "print(sorted(m for m in ('cupy', 'numba', 'fastapi', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
