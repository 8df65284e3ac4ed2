"""Exported weights describe themselves: the safetensors `__metadata__` and the ONNX `metadata_props`
carry what model.json says, and the ONNX graph's outputs are the engine's own predictions.

The graphs run in onnx's reference evaluator (no onnxruntime), on random inputs, against
dnnq.models.predict (labels) and predict(..., proba=True) (probabilities).
"""

from __future__ import annotations

import json
from importlib.metadata import version

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from dnnq.models import predict
from dnnq.workers import artifacts

JOB = "e" * 32


def random_parameters(layer_dims: list[int], seed: int, dtype: type = np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    params = {}
    for l in range(1, len(layer_dims)):
        params[f"W{l}"] = rng.normal(0, 0.8, (layer_dims[l], layer_dims[l - 1])).astype(dtype)
        params[f"b{l}"] = rng.normal(0, 0.3, (layer_dims[l], 1)).astype(dtype)
    return params


def save(store, params, **info) -> dict[str, bytes]:
    model_info = {
        "hidden_activation": "relu",
        "output": "sigmoid",
        "input_scale": None,
        "classes": None,
        "metrics": None,
        "dataset_id": "ab" * 12,
        "label_kind": "binary",
        **info,
    }
    shas = artifacts.save_trained(store, JOB, params, model_info)
    assert {"npz", "safetensors", "onnx", "model_json"} <= set(shas)
    names = {"safetensors": "weights.safetensors", "onnx": "weights.onnx", "model_json": "model.json"}
    return {fmt: store.get(f"jobs/{JOB}/{name}") for fmt, name in names.items()}


def safetensors_metadata(store) -> dict[str, str]:
    """Read the way the format is specified: 8 bytes little-endian header length, then the JSON header."""
    data = store.get(f"jobs/{JOB}/weights.safetensors")
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    return header["__metadata__"]


CASES = [
    # output, layer sizes, hidden, classes, label_kind, input scale
    ("sigmoid", [6, 7, 1], "relu", ["cat", "dog"], "binary", 1 / 255),
    ("softmax", [6, 9, 5, 4], "tanh", ["n", "e", "s", "w"], "integer", None),
    ("softmax", [6, 5, 3], "leaky_relu", [10, 20, 30], "integer", 0.5),
]


@pytest.mark.parametrize("output,sizes,hidden,classes,label_kind,scale", CASES)
def test_onnx_outputs_equal_the_engines_predictions(store, output, sizes, hidden, classes, label_kind, scale):
    params = random_parameters(sizes, seed=len(sizes) + len(classes))
    files = save(
        store,
        params,
        output=output,
        hidden_activation=hidden,
        classes=classes,
        label_kind=label_kind,
        input_scale=scale,
    )
    model = onnx.load_from_string(files["onnx"])
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == ["probabilities", "label", "class_name"]

    X_raw = np.random.default_rng(1).uniform(0, 255 if scale else 3, (200, sizes[0])).astype(np.float32)
    probabilities, label, class_name = ReferenceEvaluator(model).run(None, {"X": X_raw})

    X_engine = (X_raw * np.float32(scale) if scale else X_raw).T  # (n_x, m), scaled as the worker trains
    expected_labels = predict(params, X_engine, hidden, output)  # (m,)
    expected_proba = predict(params, X_engine, hidden, output, proba=True)  # (n_out, m)
    assert label.dtype == np.int64 and label.shape == (200,)
    np.testing.assert_array_equal(label, expected_labels)
    assert len(set(label.tolist())) > 1, "random inputs should reach more than one class"
    np.testing.assert_allclose(probabilities, expected_proba.T, rtol=1e-5, atol=1e-6)
    assert class_name.tolist() == [str(classes[i]) for i in expected_labels]


def test_several_sigmoid_units_label_each_column_and_name_no_class(store):
    params = random_parameters([4, 6, 3], seed=5)
    files = save(store, params, output="sigmoid", classes=None, label_kind="multilabel")
    model = onnx.load_from_string(files["onnx"])
    assert [o.name for o in model.graph.output] == ["probabilities", "label"]
    X = np.random.default_rng(2).normal(0, 2, (50, 4)).astype(np.float32)
    _, label = ReferenceEvaluator(model).run(None, {"X": X})
    np.testing.assert_array_equal(label, predict(params, X.T, "relu", "sigmoid").T)


def test_a_linear_output_has_no_label(store):
    params = random_parameters([4, 5, 2], seed=6)
    files = save(store, params, output="linear", classes=None, label_kind="continuous")
    assert [o.name for o in onnx.load_from_string(files["onnx"]).graph.output] == ["probabilities"]


def test_classes_that_do_not_name_the_outputs_leave_the_graph_with_indices_only(store):
    params = random_parameters([4, 5, 3], seed=7)
    files = save(store, params, output="softmax", classes=["a", "b"], label_kind="integer")
    model = onnx.load_from_string(files["onnx"])
    assert [o.name for o in model.graph.output] == ["probabilities", "label"]
    assert json.loads({p.key: p.value for p in model.metadata_props}["classes"]) == ["a", "b"]


def test_metadata_round_trips_in_safetensors_and_onnx_and_agrees_with_model_json(store):
    params = random_parameters([3, 5, 4, 1], seed=8, dtype=np.float64)
    files = save(
        store, params, hidden_activation="tanh", classes=["no", "yes"], input_scale=0.25, metrics={"final_loss": 0.1}
    )
    model_json = json.loads(files["model_json"])
    from_st = safetensors_metadata(store)
    model = onnx.load_from_string(files["onnx"])
    from_onnx = {p.key: p.value for p in model.metadata_props}

    for meta in (from_st, from_onnx):
        assert json.loads(meta["layer_sizes"]) == [3, 5, 4, 1] == model_json["layer_sizes"]
        assert json.loads(meta["activations"]) == ["tanh", "tanh", "sigmoid"] == model_json["activations"]
        assert meta["hidden_activation"] == "tanh" and meta["output"] == "sigmoid"
        assert json.loads(meta["input_scale"]) == 0.25 == model_json["preprocessing"]["scale"]
        assert json.loads(meta["classes"]) == ["no", "yes"] == model_json["classes"]
        assert json.loads(meta["label_kind"]) == "binary"
        assert meta["dnnq_version"] == version("dnnq") == model_json["versions"]["dnnq"]
        assert meta["format"] == "dnnq-model/1"
    assert from_st["dtype"] == "float64" == model_json["dtype"]  # the arrays as trained
    assert from_onnx["dtype"] == "float32"  # the graph's own initializers
    assert {t.data_type for t in model.graph.initializer if t.name.startswith(("W", "b"))} == {onnx.TensorProto.FLOAT}


def test_no_scale_and_no_classes_are_json_null(store):
    files = save(store, random_parameters([2, 3, 1], seed=9), classes=None, input_scale=None)
    for meta in (
        safetensors_metadata(store),
        {p.key: p.value for p in onnx.load_from_string(files["onnx"]).metadata_props},
    ):
        assert json.loads(meta["input_scale"]) is None
        assert json.loads(meta["classes"]) is None
