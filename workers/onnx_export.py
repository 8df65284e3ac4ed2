"""ONNX graph of a trained L-layer network (Gemm + activation nodes).

The graph takes examples as rows, the layout ONNX runtimes expect, while the
engine keeps features x examples. For one layer the engine computes

    Z = W @ A_prev + b            # (n_l, m), W (n_l, n_prev), b (n_l, 1)

and the row-major graph computes the transpose of it with one Gemm:

    Z.T = A_prev.T @ W.T + b.T    # (m, n_l): Gemm(A, W, b_flat, transB=1)

so W is stored as trained (no copy transposed by hand) and b flattened to
(n_l,), which Gemm broadcasts over the rows.

    X (N, n_x) --[Mul scale]--> Gemm -> act -> ... -> Gemm -> output act --> probabilities (N, n_out)
                                                                                 +--> label (N,)

`input_scale` is the job spec's `preprocess.scale` (docs/DESIGN.md): raw inputs are multiplied
by it before the first layer, exactly as the worker trained them.

A classifier also outputs what `models.predict` returns: "label", int64, the class index (softmax:
ArgMax over each row; one sigmoid unit: 1 where the probability is > 0.5; several sigmoid units:
(N, n_out) of 0/1), and, given the dataset's class names, "class_name" (N,) strings picked from them
by a Gather. `metadata` (artifacts.export_metadata) goes into the model's metadata_props.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dnnq.models import ACTIVATION_NAMES, HIDDEN_ACTIVATIONS, LEAKY_SLOPE, OUTPUTS
from dnnq.models.names import check_table

__all__ = ["onnx_bytes", "OPSET"]

# Opset 13+ gives Softmax the per-axis meaning (axis=1: over each row's classes).
# 17 is read by every maintained runtime (onnxruntime >= 1.12).
OPSET = 17
# IR version 8 pairs with opset 17; newer onnx releases would default to a newer
# IR that older runtimes refuse to load.
IR_VERSION = 8

# Each activation of models.ACTIVATIONS as an ONNX operator and its attributes; None: the identity.
_ONNX_OPS: dict[str, tuple[str, dict[str, Any]] | None] = {
    "relu": ("Relu", {}),
    "leaky_relu": ("LeakyRelu", {"alpha": LEAKY_SLOPE}),
    "tanh": ("Tanh", {}),
    "sigmoid": ("Sigmoid", {}),
    "softmax": ("Softmax", {"axis": 1}),  # over each row's classes
    "linear": None,
}
check_table("ONNX activation", ACTIVATION_NAMES, _ONNX_OPS)


def _activation_node(name: str, inp: str, out: str) -> onnx.NodeProto | None:
    """The node for activation `name`, or None for the identity ("linear")."""
    op = _ONNX_OPS[name]
    if op is None:
        return None
    op_type, attributes = op
    return helper.make_node(op_type, [inp], [out], name=out, **attributes)


def _layer_count(parameters: dict[str, np.ndarray]) -> int:
    L = 0
    while f"W{L + 1}" in parameters:
        L += 1
    if L == 0:
        raise ValueError("The 'parameters' argument must hold W1, b1, ... WL, bL. Got no 'W1'.")
    for l in range(1, L + 1):
        if f"b{l}" not in parameters:
            raise ValueError(f"The 'parameters' argument has W{l} but no b{l}.")
    return L


def _label_nodes(output: str, n_out: int, classes: list[Any] | None) -> tuple[list[onnx.NodeProto], list[Any]]:
    """Nodes computing "label" (and "class_name") from "probabilities", with their initializers; none
    for a linear output (its values are the prediction)."""
    if output == "linear":
        return [], []
    nodes: list[onnx.NodeProto] = []
    inits: list[Any] = []
    if output == "softmax":
        nodes.append(helper.make_node("ArgMax", ["probabilities"], ["label"], name="label", axis=1, keepdims=0))
    else:  # sigmoid: 1 where p > 0.5, as models.labels_from_output
        inits.append(numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half"))
        nodes.append(helper.make_node("Greater", ["probabilities", "half"], ["positive"], name="positive"))
        cast_to = "label" if n_out > 1 else "label_column"
        nodes.append(helper.make_node("Cast", ["positive"], [cast_to], name=cast_to, to=TensorProto.INT64))
        if n_out == 1:  # one unit: (N, 1) -> (N,), the shape predict returns
            inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "column_axis"))
            nodes.append(helper.make_node("Squeeze", ["label_column", "column_axis"], ["label"], name="label"))
    if classes and (output == "softmax" or n_out == 1):
        names = np.array([str(c) for c in classes], dtype=object)
        inits.append(numpy_helper.from_array(names, "class_names"))
        nodes.append(helper.make_node("Gather", ["class_names", "label"], ["class_name"], name="class_name", axis=0))
    return nodes, inits


def onnx_bytes(
    parameters: dict[str, np.ndarray],
    hidden_activation: str,
    output: str,
    input_scale: float | None = None,
    *,
    classes: list[Any] | None = None,
    metadata: dict[str, str] | None = None,
) -> bytes:
    """Serialise the network `parameters` (W1, b1, ... WL, bL) as an ONNX model.

    Input "X" float32 (N, n_x), raw inputs (multiplied by `input_scale` first when set, as the
    worker did in training); output "probabilities" float32 (N, n_out): what
    `models.predict(..., proba=True)` returns, transposed; for a sigmoid or softmax output also
    "label" int64 (what `models.predict` returns, transposed) and, with `classes` (one name per
    class index), "class_name" strings. `metadata` becomes the model's metadata_props.
    """
    if hidden_activation not in HIDDEN_ACTIVATIONS:
        raise ValueError(
            f"The 'hidden_activation' parameter must be one of {', '.join(HIDDEN_ACTIVATIONS)}. "
            f"Got {hidden_activation!r} instead."
        )
    if output not in OUTPUTS:
        raise ValueError(f"The 'output' parameter must be one of {', '.join(OUTPUTS)}. Got {output!r} instead.")
    L = _layer_count(parameters)

    initializers: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    n_x = int(np.asarray(parameters["W1"]).shape[1])

    A_prev = "X"  # (N, n_x)
    if input_scale is not None:
        if not (np.isfinite(input_scale) and input_scale > 0):
            raise ValueError(f"The 'input_scale' parameter must be a finite number > 0. Got {input_scale!r} instead.")
        initializers.append(numpy_helper.from_array(np.array(input_scale, dtype=np.float32), "scale"))
        nodes.append(helper.make_node("Mul", ["X", "scale"], ["A0"], name="scale_inputs"))
        A_prev = "A0"

    n_l = n_x
    for l in range(1, L + 1):
        W = np.asarray(parameters[f"W{l}"], dtype=np.float32)  # (n_l, n_prev)
        b = np.asarray(parameters[f"b{l}"], dtype=np.float32).reshape(-1)  # (n_l,)
        if W.ndim != 2 or W.shape[1] != n_l or b.shape[0] != W.shape[0]:
            raise ValueError(
                f"Layer {l}: W{l} has shape {W.shape} and b{l} {b.size} values; "
                f"expected W{l} ({W.shape[0] if W.ndim == 2 else '?'}, {n_l}) and b{l} with one value per row of W{l}."
            )
        n_l = W.shape[0]
        initializers.append(numpy_helper.from_array(W, f"W{l}"))
        initializers.append(numpy_helper.from_array(b, f"b{l}"))
        Z = f"Z{l}"  # (N, n_l)
        nodes.append(helper.make_node("Gemm", [A_prev, f"W{l}", f"b{l}"], [Z], name=f"gemm{l}", transB=1))
        activation = hidden_activation if l < L else output
        A = "probabilities" if l == L else f"A{l}"
        node = _activation_node(activation, Z, A)
        if node is None:  # linear output: name the last Gemm's result "probabilities" via Identity
            node = helper.make_node("Identity", [Z], [A], name=A)
        nodes.append(node)
        A_prev = A

    if classes is not None and output == "softmax" and len(classes) != n_l:
        raise ValueError(f"The 'classes' argument must name the {n_l} outputs. Got {len(classes)} names instead.")
    if classes is not None and output == "sigmoid" and n_l == 1 and len(classes) != 2:
        raise ValueError(f"The 'classes' argument of one sigmoid output must hold 2 names. Got {len(classes)} instead.")
    label_nodes, label_inits = _label_nodes(output, n_l, classes)
    outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n_l])]
    if any(n.output[0] == "label" for n in label_nodes):
        shape: list[Any] = ["N", n_l] if output == "sigmoid" and n_l > 1 else ["N"]
        outputs.append(helper.make_tensor_value_info("label", TensorProto.INT64, shape))
    if any(n.output[0] == "class_name" for n in label_nodes):
        outputs.append(helper.make_tensor_value_info("class_name", TensorProto.STRING, ["N"]))
    graph = helper.make_graph(
        nodes + label_nodes,
        "dnnq_network",
        inputs=[helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", n_x])],
        outputs=outputs,
        initializer=initializers + label_inits,
    )
    model = helper.make_model(
        graph,
        producer_name="dnnq",
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, dict(metadata or {}))
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()
