"""Optimizers: small classes with their state on the instance and ``update(params, grads)``.

``params`` holds W{l}, b{l}; ``grads`` holds dW{l}, db{l}. Updates are in place (NumPy/CuPy
arrays), using one scratch buffer per parameter so a step allocates nothing. For parameter p
with gradient g and learning rate lr (``self.learning_rate``, which fit sets every epoch):

- GD:        p -= lr g
- Momentum:  v = beta v + (1 - beta) g;                 p -= lr v
- RMSProp:   s = beta2 s + (1 - beta2) g^2;             p -= lr g / (sqrt(s) + epsilon)
- Adam:      t += 1; v = beta1 v + (1 - beta1) g; s = beta2 s + (1 - beta2) g^2;
             p -= lr (v / (1 - beta1^t)) / (sqrt(s / (1 - beta2^t)) + epsilon)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import fused
from .backend import Array, get_namespace, optimizer_kernel, to_host
from .flat import Layout, flat_views
from .names import OPTIMIZER_NAMES, OptimizerName, check_table

__all__ = ["Optimizer", "GD", "Momentum", "RMSProp", "Adam", "OPTIMIZERS", "make_optimizer"]


class Optimizer:
    slots: tuple[str, ...] = ()  # names of the per-parameter state arrays
    hyperparameters: tuple[str, ...] = ()  # keyword arguments of __init__ besides learning_rate

    def __init__(self, learning_rate: float) -> None:
        self.learning_rate = float(learning_rate)
        self.t = 0  # number of updates taken
        self.state: dict[str, Array] = {}  # f"{slot}_{key}" -> array like the parameter
        self._scratch: dict[str, Array] = {}
        self._flat: dict[str, Array] | None = None  # slot -> one flat array (see bind_flat)
        self._flat_tmp: Array = None

    def _buffers(self, key: str, p: Array) -> Array:
        if key not in self._scratch:
            xp = get_namespace(p)
            self._scratch[key] = xp.empty_like(p)
            for slot in self.slots:
                self.state.setdefault(f"{slot}_{key}", xp.zeros_like(p))
        return self._scratch[key]

    def update(self, params: dict[str, Array], grads: dict[str, Array]) -> None:
        """One step of every parameter in ``params`` (W{l}, b{l}) from ``grads`` (dW{l}, db{l}), in place."""
        self.t += 1
        for key, p in params.items():
            tmp = self._buffers(key, p)
            self._step(p, grads["d" + key], tmp, *(self.state[f"{slot}_{key}"] for slot in self.slots))

    # *slot_arrays: each subclass names its own state arrays (v, s) in its override
    def _step(self, p: Array, g: Array, tmp: Array, *slot_arrays: Array) -> None:
        """One update of p (any shape) from g, with the scratch array tmp and the state arrays."""
        raise NotImplementedError

    def _fused_step(self, p: np.ndarray, g: np.ndarray, *slot_arrays: Array) -> None:
        """The same update as _step by one compiled CPU kernel (models.fused), bit for bit."""
        raise NotImplementedError

    _kernel_name = ""  # the step's GPU kernel in models.backend's _OPTIMIZER_KERNELS

    def _kernel_constants(self) -> tuple[float, ...]:
        """The scalar inputs of the GPU kernel after the gradient, in its order (this step's t)."""
        raise NotImplementedError

    # --- flat mode: every parameter in one array ----------------------------------------------
    def bind_flat(self, flat_params: Array, layout: Layout) -> None:
        """Keep each state slot in one flat array shaped like ``flat_params`` (the parameters laid
        end to end, ``layout`` = [(key, offset, shape), ...]), with ``state[f"{slot}_{key}"]`` a view
        of it, so that update_flat steps every parameter with one pass per operation: one kernel
        call per step on the CPU (models.fused), one launch on a GPU (models.backend.optimizer_kernel).
        State loaded earlier (a resumed checkpoint) is copied in."""
        xp = get_namespace(flat_params)
        self._flat = {slot: xp.zeros_like(flat_params) for slot in self.slots}
        self._flat_tmp = xp.empty_like(flat_params)
        for slot in self.slots:
            for key, view in flat_views(self._flat[slot], layout).items():
                old = self.state.get(f"{slot}_{key}")
                if old is not None:
                    view[...] = old
                self.state[f"{slot}_{key}"] = view
        self._scratch.clear()

    def update_flat(self, flat_params: Array, flat_grads: Array) -> None:
        """update() for parameters and gradients laid out as given to bind_flat."""
        if self._flat is None:
            raise RuntimeError(f"{type(self).__name__}.update_flat needs bind_flat() first.")
        self.t += 1
        slot_arrays = [self._flat[slot] for slot in self.slots]
        if self.slots and fused.wanted(flat_params, flat_grads, *slot_arrays):
            self._fused_step(flat_params, flat_grads, *slot_arrays)
        elif self.slots and (kernel := optimizer_kernel(get_namespace(flat_params), self._kernel_name)) is not None:
            # a GPU: the same step as one launch instead of one per operation (models.backend)
            t = flat_params.dtype.type  # constants cast to the arrays' dtype, as NumPy casts a Python float
            kernel(flat_grads, *(t(c) for c in self._kernel_constants()), flat_params, *slot_arrays)
        else:
            self._step(flat_params, flat_grads, self._flat_tmp, *slot_arrays)

    def prescale(self) -> float | None:
        """A factor the caller may fold into the gradients (backprop is linear, so scaling dZ_L
        costs nothing) and then call ``update_prescaled_flat(flat_params, factor * flat_grads)``,
        which takes the same step in fewer passes; None when the optimizer has no such shortcut."""
        return None

    def update_prescaled_flat(self, flat_params: Array, flat_scaled_grads: Array) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no prescaled update; call update_flat().")

    # --- checkpointing: host copies in, host copies out ---------------------------------------
    def state_arrays(self) -> dict[str, np.ndarray]:
        out = {k: np.array(to_host(v)) for k, v in self.state.items()}
        out["t"] = np.array(self.t, dtype=np.int64)
        return out

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray], xp: Any, params: dict[str, Array]) -> None:
        """The state of ``state_arrays()`` (a checkpoint's) onto ``xp``, checked against ``params``."""
        self.t = int(arrays["t"])
        for key, p in params.items():
            for slot in self.slots:
                name = f"{slot}_{key}"
                if name not in arrays:
                    raise ValueError(f"The checkpoint has no optimizer state {name!r} for {type(self).__name__}.")
                loaded = xp.asarray(arrays[name], dtype=p.dtype)
                if tuple(loaded.shape) != tuple(p.shape):
                    raise ValueError(f"The checkpoint's {name!r} has shape {loaded.shape}, expected {p.shape}.")
                if self._flat is not None:  # bound: the state lives in the flat arrays' views
                    self.state[name][...] = loaded
                else:
                    self.state[name] = loaded


class GD(Optimizer):
    def _step(self, p: Array, g: Array, tmp: Array) -> None:
        xp = get_namespace(p)
        xp.multiply(g, self.learning_rate, out=tmp)
        p -= tmp

    def prescale(self) -> float:
        return self.learning_rate

    def update_prescaled_flat(self, flat_params: Array, flat_scaled_grads: Array) -> None:
        """The same step, p -= lr g, from gradients already multiplied by lr (fit folds lr into
        the backward pass): one pass instead of two, and no scratch array to stream through the
        cache. A compiled kernel gains nothing (docs/perf.md, "Engine kernels")."""
        self.t += 1
        flat_params -= flat_scaled_grads


class Momentum(Optimizer):
    slots = ("v",)
    hyperparameters = ("beta",)

    def __init__(self, learning_rate: float, beta: float = 0.9) -> None:
        super().__init__(learning_rate)
        self.beta = float(beta)

    def _step(self, p: Array, g: Array, tmp: Array, v: Array) -> None:
        xp = get_namespace(p)
        v *= self.beta
        xp.multiply(g, 1.0 - self.beta, out=tmp)
        v += tmp  # v = beta v + (1 - beta) g
        xp.multiply(v, self.learning_rate, out=tmp)
        p -= tmp

    def _fused_step(self, p: np.ndarray, g: np.ndarray, v: np.ndarray) -> None:
        fused.momentum_(p, g, v, self.beta, self.learning_rate)

    _kernel_name = "dnnq_momentum_step"

    def _kernel_constants(self) -> tuple[float, ...]:
        return self.beta, 1.0 - self.beta, self.learning_rate


class RMSProp(Optimizer):
    slots = ("s",)
    hyperparameters = ("beta2", "epsilon")

    def __init__(self, learning_rate: float, beta2: float = 0.999, epsilon: float = 1e-8) -> None:
        super().__init__(learning_rate)
        self.beta2, self.epsilon = float(beta2), float(epsilon)

    def _step(self, p: Array, g: Array, tmp: Array, s: Array) -> None:
        xp = get_namespace(p)
        s *= self.beta2
        xp.multiply(g, g, out=tmp)
        tmp *= 1.0 - self.beta2
        s += tmp  # s = beta2 s + (1 - beta2) g^2
        xp.sqrt(s, out=tmp)
        tmp += self.epsilon
        xp.divide(g, tmp, out=tmp)
        tmp *= self.learning_rate
        p -= tmp

    def _fused_step(self, p: np.ndarray, g: np.ndarray, s: np.ndarray) -> None:
        fused.rmsprop_(p, g, s, self.beta2, self.epsilon, self.learning_rate)

    _kernel_name = "dnnq_rmsprop_step"

    def _kernel_constants(self) -> tuple[float, ...]:
        return self.beta2, 1.0 - self.beta2, self.epsilon, self.learning_rate


class Adam(Optimizer):
    slots = ("v", "s")
    hyperparameters = ("beta1", "beta2", "epsilon")

    def __init__(self, learning_rate: float, beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-8) -> None:
        super().__init__(learning_rate)
        self.beta1, self.beta2, self.epsilon = float(beta1), float(beta2), float(epsilon)

    def _step(self, p: Array, g: Array, tmp: Array, v: Array, s: Array) -> None:
        xp = get_namespace(p)
        v *= self.beta1
        xp.multiply(g, 1.0 - self.beta1, out=tmp)
        v += tmp  # v = beta1 v + (1 - beta1) g
        s *= self.beta2
        xp.multiply(g, g, out=tmp)
        tmp *= 1.0 - self.beta2
        s += tmp  # s = beta2 s + (1 - beta2) g^2
        xp.sqrt(s, out=tmp)
        tmp /= math.sqrt(1.0 - self.beta2**self.t)  # sqrt(s_corrected)
        tmp += self.epsilon
        xp.divide(v, tmp, out=tmp)
        tmp *= self.learning_rate / (1.0 - self.beta1**self.t)  # v_corrected / (...)
        p -= tmp

    def _fused_step(self, p: np.ndarray, g: np.ndarray, v: np.ndarray, s: np.ndarray) -> None:
        fused.adam_(
            p,
            g,
            v,
            s,
            self.beta1,
            self.beta2,
            self.epsilon,
            math.sqrt(1.0 - self.beta2**self.t),
            self.learning_rate / (1.0 - self.beta1**self.t),
        )

    _kernel_name = "dnnq_adam_step"

    def _kernel_constants(self) -> tuple[float, ...]:
        # the bias corrections change every step: kernel arguments, so nothing caches them
        sqrt_c2, lr_over_c1 = math.sqrt(1.0 - self.beta2**self.t), self.learning_rate / (1.0 - self.beta1**self.t)
        return self.beta1, 1.0 - self.beta1, self.beta2, 1.0 - self.beta2, sqrt_c2, self.epsilon, lr_over_c1


OPTIMIZERS: dict[OptimizerName, type[Optimizer]] = {"gd": GD, "momentum": Momentum, "rmsprop": RMSProp, "adam": Adam}
check_table("OPTIMIZERS", OPTIMIZER_NAMES, OPTIMIZERS)


def make_optimizer(
    name: OptimizerName,
    learning_rate: float,
    *,
    beta: float = 0.9,
    beta1: float = 0.9,
    beta2: float = 0.999,
    epsilon: float = 1e-8,
) -> Optimizer:
    """``OPTIMIZERS[name]`` built with the hyperparameters it takes (its ``hyperparameters``)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}. Use one of {sorted(OPTIMIZERS)}.")
    given = {"beta": beta, "beta1": beta1, "beta2": beta2, "epsilon": epsilon}
    cls = OPTIMIZERS[name]
    return cls(learning_rate, **{key: given[key] for key in cls.hyperparameters})
