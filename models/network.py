"""The L-layer network, textbook style: parameters dict {"W1", "b1", ..., "WL", "bL"}.

Arrays are features x examples: X (n_x, m), W{l} (n_l, n_{l-1}), b{l} (n_l, 1), Y (n_y, m).
``caches`` is a list with one entry per layer, layer l at index l-1, each ``((A_prev, W, b), Z)``
(see models/layers.py); caches[0]'s A_prev is the input A0 = X.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .activations import check_activation
from .backend import Array, get_namespace, to_host
from .layers import Cache, linear_activation_backward, linear_activation_forward
from .losses import LOSS_GRADIENTS, LOSSES, OUTPUT_LOSS, check_loss, l2_penalty
from .names import INIT_NAMES, ActivationName, InitName, LossName, OutputName, check_table

__all__ = [
    "INITS",
    "initialize_parameters_deep",
    "model_forward",
    "compute_cost",
    "model_backward",
    "update_parameters",
    "predict",
    "n_layers",
]

# Scale of each initialisation, as a function of the fan-in n_{l-1}.
INITS: dict[InitName, Callable[[int], float]] = {
    "small": lambda fan_in: 0.01,
    "xavier": lambda fan_in: 1.0 / math.sqrt(fan_in),
    "he": lambda fan_in: math.sqrt(2.0 / fan_in),
}
check_table("INITS", INIT_NAMES, INITS)


def n_layers(parameters: dict[str, Any]) -> int:
    """L, the number of weight layers."""
    return len(parameters) // 2


def initialize_parameters_deep(
    layer_dims: Sequence[int], *, seed: int = 3, init: InitName = "small", xp: Any = None, dtype: Any = None
) -> dict[str, Array]:
    """W{l} = RandomState(seed).randn(n_l, n_{l-1}) * scale, W1 first; b{l} = zeros (n_l, 1).

    Drawn on the host with NumPy's legacy RandomState (so a seed gives the course's numbers on
    every backend), then moved to ``xp`` (default numpy) as ``dtype`` (default float64).
    """
    if init not in INITS:
        raise ValueError(f"Unknown init {init!r}. Use one of {sorted(INITS)}.")
    if len(layer_dims) < 2:
        raise ValueError(f"layer_dims needs at least 2 entries (input and output). Got {list(layer_dims)!r}.")
    xp = np if xp is None else xp
    target = None if dtype is None else (getattr(xp, dtype) if isinstance(dtype, str) else dtype)
    rng = np.random.RandomState(seed)
    parameters = {}
    for l in range(1, len(layer_dims)):
        n_l, fan_in = int(layer_dims[l]), int(layer_dims[l - 1])
        W = rng.randn(n_l, fan_in) * INITS[init](fan_in)  # (n_l, n_{l-1}), float64 on the host
        b = np.zeros((n_l, 1))  # (n_l, 1)
        parameters[f"W{l}"] = xp.asarray(W, dtype=target) if target is not None else xp.asarray(W)
        parameters[f"b{l}"] = xp.asarray(b, dtype=target) if target is not None else xp.asarray(b)
    return parameters


def model_forward(
    X: Array,
    parameters: dict[str, Array],
    hidden_activation: ActivationName = "relu",
    output: ActivationName = "sigmoid",
) -> tuple[Array, list[Cache]]:
    """[LINEAR -> hidden_activation] x (L-1) -> LINEAR -> output.  Returns (AL, caches)."""
    L = n_layers(parameters)
    caches = []
    A = X  # A0, (n_x, m)
    for l in range(1, L):
        A, cache = linear_activation_forward(A, parameters[f"W{l}"], parameters[f"b{l}"], hidden_activation)
        caches.append(cache)  # A is (n_l, m)
    AL, cache = linear_activation_forward(A, parameters[f"W{L}"], parameters[f"b{L}"], output)
    caches.append(cache)  # AL is (n_y, m)
    return AL, caches


def compute_cost(
    AL: Array,
    Y: Array,
    loss: LossName = "binary_crossentropy",
    *,
    parameters: dict[str, Array] | None = None,
    l2: float = 0.0,
) -> float:
    """The cost as a Python float (see models/losses.py for the formulas).

    With ``l2 > 0`` it adds lambda/(2m) sum ||W||^2 of ``parameters``.
    """
    check_loss(loss)
    cost = LOSSES[loss](AL, Y)
    if l2:
        if parameters is None:
            raise ValueError("compute_cost with l2 > 0 needs the parameters= whose weights are penalised.")
        cost = cost + l2_penalty(parameters, l2, Y.shape[-1])
    return float(cost)  # float() syncs the GPU


def model_backward(
    AL: Array,
    Y: Array,
    caches: list[Cache],
    hidden_activation: ActivationName = "relu",
    output: ActivationName = "sigmoid",
    *,
    loss: LossName | None = None,
    l2: float = 0.0,
) -> dict[str, Array]:
    """Backward pass through every layer.  Returns grads with dA{l-1}, dW{l}, db{l} for l = 1..L.

    Starts from dAL, the derivative of the loss paired with the output (sigmoid: binary CE,
    softmax: categorical CE, linear: MSE; or ``loss=``), and applies the chain rule through the
    output activation at the cached Z_L: it never assumes AL == g(Z_L). ``l2`` adds lambda/m W.
    """
    check_activation(hidden_activation)
    check_activation(output)
    loss = OUTPUT_LOSS.get(output, "mse") if loss is None else loss
    check_loss(loss)
    grads = {}
    L = len(caches)
    m = Y.shape[-1]
    dA = LOSS_GRADIENTS[loss](AL, Y)  # dAL, (n_y, m)
    for l in range(L, 0, -1):
        activation = output if l == L else hidden_activation
        dA_prev, dW, db = linear_activation_backward(dA, caches[l - 1], activation)
        if l2:
            W = caches[l - 1][0][1]
            dW = dW + (l2 / m) * W
        grads[f"dA{l - 1}"], grads[f"dW{l}"], grads[f"db{l}"] = dA_prev, dW, db
        dA = dA_prev
    return grads


def update_parameters(parameters: dict[str, Array], grads: dict[str, Array], learning_rate: float) -> dict[str, Array]:
    """One gradient-descent step: W{l} -= lr dW{l}, b{l} -= lr db{l}.  Returns a new dict."""
    L = n_layers(parameters)
    updated = {}
    for l in range(1, L + 1):
        updated[f"W{l}"] = parameters[f"W{l}"] - learning_rate * grads[f"dW{l}"]
        updated[f"b{l}"] = parameters[f"b{l}"] - learning_rate * grads[f"db{l}"]
    return updated


def predict(
    parameters: dict[str, Any],
    X: Array,
    hidden_activation: ActivationName = "relu",
    output: OutputName = "sigmoid",
    proba: bool = False,
) -> np.ndarray:
    """Labels (sigmoid: 0/1, softmax: class index) or values (linear) of shape (m,), as NumPy.

    ``X`` is (n_x, m). With ``proba=True`` the output activations AL (n_y, m) are returned.
    For several sigmoid or linear outputs the result is (n_y, m).
    """
    xp = get_namespace(X)
    params = {k: xp.asarray(v) for k, v in parameters.items()}
    n_x = params["W1"].shape[1]
    if X.ndim != 2 or X.shape[0] != n_x:
        raise ValueError(
            f"predict expects X of shape (n_x={n_x}, m), features x examples. Got {tuple(X.shape)}; "
            "pass X.T if your array is examples x features."
        )
    if X.dtype != params["W1"].dtype:
        astype = getattr(xp, "astype", None)
        X = astype(X, params["W1"].dtype) if astype is not None else X.astype(params["W1"].dtype)
    AL, _ = model_forward(X, params, hidden_activation, output)
    AL = to_host(AL)
    return AL if proba else labels_from_output(AL, output)


def labels_from_output(AL: np.ndarray, output: OutputName) -> np.ndarray:
    """What predict returns, from the output activations AL (n_y, m) it would compute: a caller
    that wants both the probabilities and the labels runs the network once."""
    if output == "softmax":
        return np.argmax(AL, axis=0)
    out = (AL > 0.5).astype(np.int64) if output == "sigmoid" else AL
    return out[0] if out.shape[0] == 1 else out
