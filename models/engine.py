"""The fast per-batch engine behind fit(): forward, fused output gradient, backward.

It computes in an examples-first layout (A_l is (batch, n_l), Z = A @ W.T + b.T), so each
mini-batch is a contiguous block of rows and a shuffle is a cheap row gather, while the
parameters keep the textbook shapes W{l} (n_l, n_{l-1}) and b{l} (n_l, 1) (W.T and b.T are free
views; BLAS runs A @ W.T as fast as W @ A (docs/perf.md, "Engine kernels"). Elementwise work is
in place, into buffers allocated once per fit; dA0 is never computed. The hidden activation and
its derivative come from models.activations' in-place tables, the output step from the table of
``_OUTPUT_STEPS`` below. Works on NumPy and CuPy arrays (fit picks xp in models.backend).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from . import fused
from .activations import INPLACE_ACTIVATIONS, INPLACE_DERIVATIVES
from .backend import Array, Device
from .config import TrainConfig
from .flat import flat_layout, flat_size, flat_views
from .gram import GramLayer
from .names import OUTPUTS, OutputName, check_table

__all__ = ["Engine", "take_rows"]

# (AL, the batch's loss summed over its examples as a 0-d device array, right answers or None)
OutputStep = tuple[Array, Array, Any]


class Engine:
    """Buffers for batches of up to ``batch_max`` examples; ``training=False`` only evaluates.

    ``gram``: layer 1 in coefficient space (models/gram.py): its input is U = D R^T, W1 is W_eff,
    and dW1 is taken in coefficient space; the rest of the engine does not know."""

    def __init__(
        self,
        cfg: TrainConfig,
        device: Device,
        params: dict[str, Array],
        batch_max: int,
        training: bool = True,
        gram: GramLayer | None = None,
        gram_inputs: Array = None,
    ) -> None:
        self.cfg, self.xp, self.gram = cfg, device.xp, gram
        self.gram_inputs = gram_inputs  # the Gram path: this engine's set's layer-1 inputs, transposed (p, m)
        xp = self.xp
        self.L = len(cfg.layer_dims) - 1
        self.params = params  # W{l} (n_l, n_{l-1}), b{l} (n_l, 1), on the device
        dims, dt = cfg.layer_dims, params["W1"].dtype
        self.dtype = dt
        self.keep = cfg.dropout_keep_prob
        hidden = range(1, self.L)
        # Per layer, looked up once instead of by name on every step: W{l}, b{l} as a row (1, n_l),
        # and b{l} as a vector (n_l,) (all views of the parameters, which fit updates in place).
        self.W = [None] + [params[f"W{l}"] for l in range(1, self.L + 1)]
        self.WT = [None] + [W.T for W in self.W[1:]]
        self.bT = [None] + [params[f"b{l}"].T for l in range(1, self.L + 1)]
        self.bvec = [None] + [bT[0] for bT in self.bT[1:]]
        # Compiled elementwise steps (models/fused.py) on NumPy when the network is big enough; they
        # give the NumPy sequences' results bit for bit. relu and the softmax output have them.
        n_params = sum(math.prod(p.shape) for p in params.values())
        self.fast = fused.engine_wanted(self.xp, dt, n_params)
        self.fast_relu = self.fast and cfg.hidden_activation == "relu"
        self.fast_softmax = self.fast and cfg.output == "softmax"
        self._activate = INPLACE_ACTIVATIONS[cfg.hidden_activation]  # g(Z) in place
        self._activation_backward = INPLACE_DERIVATIVES[cfg.hidden_activation]  # dA * g'(Z) in place, from g(Z)
        self._output_step = _OUTPUT_STEPS[cfg.output]
        # H[l]: Z then g(Z) in place, (batch, n_l); G[l]: dA then dZ in place, (batch, n_l)
        self.H = {l: xp.empty((batch_max, dims[l]), dtype=dt) for l in range(1, self.L + 1)}
        # relu's maximum against an array of zeros (faster than against a scalar 0 in NumPy)
        self.zeros = {l: xp.zeros((batch_max, dims[l]), dtype=dt) for l in hidden}
        self.grads, self.G, self.mask, self.D = {}, {}, {}, {}
        n_out = dims[self.L]
        if cfg.output == "softmax":  # row max, row sum, shifted logits -> log-softmax, (batch, n_L)
            self.rowmax = xp.empty((batch_max, 1), dtype=dt)
            self.rowsum = xp.empty((batch_max, 1), dtype=dt)
            self.Zs = xp.empty((batch_max, n_out), dtype=dt)
            self.AL = xp.empty((batch_max, n_out), dtype=dt)
            self.ones_out = xp.ones(n_out, dtype=dt)
            self.logsum = xp.empty((batch_max,), dtype=dt)  # log of the row sums (compiled path)
        if training:
            # db = ones @ dZ: a BLAS gemv, faster than NumPy's sum over axis 0
            self.ones = xp.ones(batch_max, dtype=dt)
            # every gradient is a view of one flat array laid out like the parameters (flat_layout),
            # so the optimizer steps them all at once (Optimizer.update_flat)
            layout = flat_layout(params)
            self.flat_grads = xp.zeros(flat_size(layout), dtype=dt)
            self.grads = {f"d{k}": v for k, v in flat_views(self.flat_grads, layout).items()}
            self.dW = [None] + [self.grads[f"dW{l}"] for l in range(1, self.L + 1)]
            self.db = [None] + [self.grads[f"db{l}"][:, 0] for l in range(1, self.L + 1)]  # (n_l,) views
            self.G = {l: xp.empty((batch_max, dims[l]), dtype=dt) for l in range(1, self.L + 1)}  # G[L]: dZ_L
            self.mask = {l: xp.empty((batch_max, dims[l]), dtype=bool) for l in hidden}
            if self.keep < 1:  # dropped activations and scaled masks, (batch, n_l)
                self.D = {
                    l: (xp.empty((batch_max, dims[l]), dtype=dt), xp.empty((batch_max, dims[l]), dtype=dt))
                    for l in hidden
                }

    def forward(self, A0: Array, rng: Any = None, rows: slice | Array | None = None) -> tuple[list[Array], Array]:
        """Hidden layers; returns the activations list [A0, A1, ..., A_{L-1}] and Z_L (batch, n_L).
        ``rows``: which examples of the set A0 holds (the Gram path reads their inputs transposed)."""
        xp, B = self.xp, A0.shape[0]
        acts = [A0]
        A = A0
        for l in range(1, self.L):
            Z = self.H[l][:B]
            self._linear(l, A, Z, rows)
            if self.fast_relu:
                fused.bias_relu_(Z, self.bvec[l])  # Z + b, then relu, in one pass
            else:
                Z += self.bT[l]  # + (1, n_l)
                self._activate(xp, Z, self.zeros[l][:B])  # now H = g(Z)
            A = Z
            if rng is not None and self.keep < 1:  # inverted dropout on hidden layers
                Ad, M = (buf[:B] for buf in self.D[l])
                M[...] = rng.random((B, Z.shape[1]), dtype=self.dtype) < self.keep
                M *= 1.0 / self.keep
                xp.multiply(Z, M, out=Ad)
                A = Ad
            acts.append(A)
        ZL = self.H[self.L][:B]
        self._linear(self.L, A, ZL, rows)
        ZL += self.bT[self.L]  # + (1, n_L)
        return acts, ZL

    def _linear(self, l: int, A: Array, Z: Array, rows: slice | Array | None) -> None:
        """Z = A W_l^T (no bias), into Z (B, n_l)."""
        if l == 1 and self.gram is not None:
            self.gram.product(self.W[1], self.gram_inputs, slice(0, Z.shape[0]) if rows is None else rows, Z)
        else:
            self.xp.matmul(A, self.WT[l], out=Z)  # (B, n_l) = (B, n_{l-1}) @ (n_{l-1}, n_l)

    def output(self, ZL: Array, Ye: Array, labels: Array | None = None) -> OutputStep:
        """(AL, loss_sum over the batch as a 0-d device array, correct count or None).

        ``labels`` (softmax only, optional): argmax(Ye, axis=1) computed ahead, once per data set.
        """
        return self._output_step(self, ZL, Ye, labels)

    def _sigmoid_output(self, ZL: Array, Ye: Array, labels: Array | None) -> OutputStep:
        xp = self.xp
        # BCE from the logits, stable: max(Z,0) - Z Y + log(1 + exp(-|Z|)); equals the textbook
        # -(Y log AL + (1-Y) log(1-AL)) wherever that is finite, and never takes log(0).
        loss = xp.sum(xp.maximum(ZL, 0) - ZL * Ye + xp.log1p(xp.exp(-xp.abs(ZL))))
        AL = 1.0 / (1.0 + xp.exp(-ZL))
        correct = xp.count_nonzero((AL > 0.5) == (Ye > 0.5))
        return AL, loss, correct

    def _softmax_output(self, ZL: Array, Ye: Array, labels: Array | None) -> OutputStep:
        xp, B = self.xp, ZL.shape[0]
        if self.fast_softmax and labels is not None:
            # the sequence below in three compiled passes around NumPy's exp and log and BLAS's
            # row sums and dot (so every rounding is the one the sequence below makes)
            S, logS, Zs, AL = self.rowsum[:B, 0], self.logsum[:B], self.Zs[:B], self.AL[:B]
            correct = fused.softmax_head_(ZL, labels, Zs)  # Zs = ZL - row max; argmax == label
            xp.exp(Zs, out=AL)
            xp.matmul(AL, self.ones_out, out=S)
            xp.log(S, out=logS)
            fused.softmax_tail_(AL, S, logS, Zs)  # softmax; log softmax
            return AL, -xp.vdot(Ye.ravel(), Zs.ravel()), correct
        mx, S, Zs, AL = self.rowmax[:B], self.rowsum[:B], self.Zs[:B], self.AL[:B]
        xp.max(ZL, axis=1, keepdims=True, out=mx)
        xp.subtract(ZL, mx, out=Zs)  # (B, n_L), stable
        xp.exp(Zs, out=AL)
        xp.matmul(AL, self.ones_out, out=S[:, 0])  # row sums as a gemv: NumPy's axis=1 sum of 10 is slow
        AL /= S  # softmax
        xp.log(S, out=S)
        Zs -= S  # log softmax
        loss = -xp.vdot(Ye.ravel(), Zs.ravel())  # -sum Y log softmax(Z)
        if labels is None:
            labels = xp.argmax(Ye, axis=1)
        correct = xp.count_nonzero(xp.argmax(ZL, axis=1) == labels)
        return AL, loss, correct

    def _linear_output(self, ZL: Array, Ye: Array, labels: Array | None) -> OutputStep:
        D = ZL - Ye
        return ZL, 0.5 * self.xp.sum(D * D), None

    def l2_sum(self) -> Array:
        """sum_l ||W_l||^2 as a 0-d device array (layer 1's formed from W_eff on the Gram path)."""
        xp, W = self.xp, self.W
        first = xp.vdot(W[1].ravel(), W[1].ravel()) if self.gram is None else self.gram.sq_norm(W[1])
        return sum((xp.vdot(W[l].ravel(), W[l].ravel()) for l in range(2, self.L + 1)), first)

    def backward(
        self,
        acts: list[Array],
        AL: Array,
        Ye: Array,
        grad_factor: float | Array = 1.0,
        rows: slice | Array | None = None,
    ) -> None:
        """Gradients of the batch cost into self.grads, each multiplied by ``grad_factor``.

        Backprop is linear in dZ_L (every later step multiplies by W, A or g'(Z) and sums), so
        folding ``grad_factor`` into dZ_L scales every dW and db; the l2 term gets it explicitly.
        fit passes plain gradient descent's learning rate (the update is then p -= grad). A
        captured step (models/stepgraph.py) passes it as a float64 0-d device array, which the
        kernels read when they run, so a new rate needs no new capture; the same bits either way
        (the float64 arithmetic, then one rounding to the arrays' dtype where it meets them).
        ``rows``: the batch's example indices (a slice or an index array), for the Gram path's dW1.
        """
        xp, B, l2 = self.xp, AL.shape[0], self.cfg.l2
        # Fused output gradient dZ_L = AL - Y. It equals dAL * g'(Z_L) for exactly these pairings:
        # sigmoid with binary cross-entropy, softmax with categorical cross-entropy (each example's
        # targets sum to 1, checked in _prepare), identity with squared error (1/2 (AL - Y)^2).
        # TrainConfig ties the loss to the output, so fit only ever meets these pairings.
        # The 1/B of the batch mean is applied here once instead of on every dW and db.
        dZ = self.G[self.L][:B]
        if self.fast:  # NumPy only, where the factor is a Python float
            fused.output_grad_(AL, Ye, grad_factor / B, dZ)
        else:
            xp.subtract(AL, Ye, out=dZ)
            dZ *= _in_dtype(grad_factor / B, dZ.dtype)  # (B, n_L)
        ones = self.ones[:B]
        for l in range(self.L, 0, -1):
            W, dW = self.W[l], self.dW[l]
            if l == 1 and self.gram is not None:
                self.gram.grad(dW, dZ, slice(0, B) if rows is None else rows)  # (n_1, p): dZ^T in the batch's columns
            else:
                xp.matmul(dZ.T, acts[l - 1], out=dW)  # (n_l, n_{l-1}) = (n_l, B) @ (B, n_{l-1})
            xp.matmul(ones, dZ, out=self.db[l])  # (n_l,) = sum of dZ's rows
            if l2:
                dW += _in_dtype(grad_factor * l2 / B, W.dtype) * W
            if l == 1:
                break  # dA0, the gradient w.r.t. the input, is not needed for training
            dA = self.G[l - 1][:B]
            xp.matmul(dZ, W, out=dA)  # (B, n_{l-1}) = (B, n_l) @ (n_l, n_{l-1})
            if self.keep < 1:
                dA *= self.D[l - 1][1][:B]  # same mask and 1/keep scale as forward
            if self.fast_relu:
                fused.relu_backward_(dA, self.H[l - 1][:B])
            else:
                self._activation_backward(xp, dA, self.H[l - 1][:B], self.mask[l - 1][:B])
            dZ = dA

    def evaluate(self, Xe: Array, Ye: Array, labels: Array | None = None) -> tuple[Array, Any]:
        """(loss_sum, correct) of a whole set in chunks of the buffer size, no dropout."""
        chunk = self.H[1].shape[0]
        loss: Any = 0.0
        correct: Any = 0
        for s in range(0, Xe.shape[0], chunk):
            _, ZL = self.forward(Xe[s : s + chunk], rows=slice(s, s + chunk))
            batch_labels = None if labels is None else labels[s : s + chunk]
            _, batch_loss, batch_correct = self.output(ZL, Ye[s : s + chunk], batch_labels)
            loss = loss + batch_loss.astype(self.xp.float64)
            correct = None if batch_correct is None else correct + batch_correct
        return loss, correct


_OUTPUT_STEPS: dict[OutputName, Callable[[Engine, Array, Array, Array | None], OutputStep]] = {
    "sigmoid": Engine._sigmoid_output,
    "softmax": Engine._softmax_output,
    "linear": Engine._linear_output,
}
check_table("_OUTPUT_STEPS", OUTPUTS, _OUTPUT_STEPS)


def _in_dtype(c: float | Array, dtype: Any) -> float | Array:
    """A factor as it meets arrays of ``dtype``: a Python float as it is (NumPy and CuPy cast it to
    the arrays' dtype), a 0-d device array cast to it (as an array it would promote float32 to float64)."""
    return c if isinstance(c, (int, float)) else c.astype(dtype)


def take_rows(xp: Any, src: Array, idx: Array, out: Array, fast: bool = False) -> None:
    """out[:] = src[idx]; NumPy's mode="raise" buffers the copy, "wrap" (idx is in range) does not.
    ``fast`` (NumPy, 2-D, where the engine's kernels run): fused.take_rows_, eight rows at a time
    (faster than np.take; docs/perf.md, "Engine kernels")."""
    if fast and src.ndim == 2:
        fused.take_rows_(src, idx, out)
    elif xp is np:
        np.take(src, idx, axis=0, out=out, mode="wrap")
    else:
        xp.take(src, idx, axis=0, out=out)
