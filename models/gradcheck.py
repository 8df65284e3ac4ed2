"""Central finite-difference check of model_backward (the textbook's gradient_check_n)."""

from __future__ import annotations

import numpy as np

from .backend import Array, get_namespace, to_host
from .losses import OUTPUT_LOSS
from .names import ActivationName, LossName
from .network import compute_cost, model_backward, model_forward, n_layers

__all__ = ["gradient_check"]


def gradient_check(
    parameters: dict[str, Array],
    X: Array,
    Y: Array,
    hidden_activation: ActivationName = "relu",
    output: ActivationName = "sigmoid",
    *,
    l2: float = 0.0,
    epsilon: float = 1e-7,
    loss: LossName | None = None,
    return_vectors: bool = False,
) -> float | tuple[float, np.ndarray, np.ndarray]:
    """Relative error ||grad - approx|| / (||grad|| + ||approx||) over every W and b.

    approx_i = (J(theta_i + eps) - J(theta_i - eps)) / (2 eps), J = compute_cost with the loss paired
    with ``output`` (or ``loss=``) plus the l2 term. Use float64; below ~1e-7 the backward pass is right.
    With ``return_vectors=True`` returns (error, grad, approx) as NumPy vectors.
    """
    xp = get_namespace(X)
    loss = OUTPUT_LOSS.get(output, "mse") if loss is None else loss
    L = n_layers(parameters)
    keys = [f"{kind}{l}" for l in range(1, L + 1) for kind in ("W", "b")]
    host = {k: np.array(to_host(parameters[k]), dtype=np.float64) for k in keys}

    def cost_of(p_host: dict[str, np.ndarray]) -> float:
        p = {k: xp.asarray(v) for k, v in p_host.items()}
        AL, _ = model_forward(X, p, hidden_activation, output)
        return compute_cost(AL, Y, loss, parameters=p, l2=l2)

    params = {k: xp.asarray(v) for k, v in host.items()}
    AL, caches = model_forward(X, params, hidden_activation, output)
    grads = model_backward(AL, Y, caches, hidden_activation, output, loss=loss, l2=l2)
    grad = np.concatenate([np.asarray(to_host(grads["d" + k]), dtype=np.float64).ravel() for k in keys])
    approx = np.empty_like(grad)
    i = 0
    for k in keys:
        flat = host[k].reshape(-1)  # a view: edits change host[k]
        for j in range(flat.size):
            saved = flat[j]
            flat[j] = saved + epsilon
            plus = cost_of(host)
            flat[j] = saved - epsilon
            minus = cost_of(host)
            flat[j] = saved
            approx[i] = (plus - minus) / (2 * epsilon)
            i += 1
    error = float(np.linalg.norm(grad - approx) / (np.linalg.norm(grad) + np.linalg.norm(approx)))
    return (error, grad, approx) if return_vectors else error
