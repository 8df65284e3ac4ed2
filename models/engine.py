"""The fast per-batch engine behind fit(): forward, fused output gradient, backward.

It computes in an examples-first layout (A_l is (batch, n_l), Z = A @ W.T + b.T), so each
mini-batch is a contiguous block of rows and a shuffle is a cheap row gather, while the
parameters keep the textbook shapes W{l} (n_l, n_{l-1}) and b{l} (n_l, 1) (W.T and b.T are free
views). BLAS runs A @ W.T as fast as W @ A (measured: 1.57 vs 1.69 ms for 256x784x256 float32).
Elementwise work is in place, into buffers allocated once per fit; dA0 is never computed.
Works on NumPy and CuPy arrays (fit picks xp in models.backend).
"""

from __future__ import annotations

import math

import numpy as np

from . import fused
from .backend import Device
from .config import TrainConfig
from .flat import flat_layout, flat_size, flat_views


class _Engine:
    """Buffers for batches of up to ``batch_max`` examples; ``training=False`` only evaluates."""

    def __init__(self, cfg: TrainConfig, device: Device, params: dict, batch_max: int, training: bool = True):
        self.cfg, self.xp = cfg, device.xp
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
        # H[l]: Z then g(Z) in place, (batch, n_l); G[l]: dA then dZ in place, (batch, n_l)
        self.H = {l: xp.empty((batch_max, dims[l]), dtype=dt) for l in range(1, self.L + 1)}
        # relu against an array of zeros: NumPy's maximum with a scalar 0 is ~3x slower (measured)
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
            # db = ones @ dZ: a BLAS gemv, ~2.5x faster than NumPy's sum over axis 0 (measured)
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

    def _hidden_inplace(self, Z, l):
        xp, name = self.xp, self.cfg.hidden_activation
        if name == "relu":
            xp.maximum(Z, self.zeros[l][: Z.shape[0]], out=Z)
        elif name == "leaky_relu":
            xp.maximum(Z, 0.01 * Z, out=Z)  # leaky slope 0.01 (models.activations.LEAKY_SLOPE)
        elif name == "tanh":
            xp.tanh(Z, out=Z)
        else:  # sigmoid
            xp.negative(Z, out=Z)
            xp.exp(Z, out=Z)
            Z += 1.0
            xp.reciprocal(Z, out=Z)

    def _hidden_backward_inplace(self, dA, H, l):
        """dZ = dA * g'(Z), with g'(Z) read from H = g(Z): every hidden activation allows that."""
        xp, name = self.xp, self.cfg.hidden_activation
        if name == "relu":
            mask = self.mask[l][: H.shape[0]]
            xp.greater(H, 0, out=mask)
            dA *= mask  # relu' = 0 where Z <= 0, i.e. where H == 0
        elif name == "leaky_relu":
            dA[...] = xp.where(H > 0, dA, 0.01 * dA)  # leaky slope 0.01 where Z <= 0
        elif name == "tanh":
            dA *= 1.0 - H * H  # tanh' = 1 - tanh^2
        else:
            dA *= H * (1.0 - H)  # sigmoid' = s (1 - s)

    def forward(self, A0, rng=None):
        """Hidden layers; returns the activations list [A0, A1, ..., A_{L-1}] and Z_L (batch, n_L)."""
        xp, B = self.xp, A0.shape[0]
        acts = [A0]
        A = A0
        for l in range(1, self.L + 1):
            Z = self.H[l][:B]
            xp.matmul(A, self.WT[l], out=Z)  # (B, n_l) = (B, n_{l-1}) @ (n_{l-1}, n_l)
            if l == self.L:
                Z += self.bT[l]  # + (1, n_l)
                return acts, Z
            if self.fast_relu:
                fused.bias_relu_(Z, self.bvec[l])  # Z + b, then relu, in one pass
            else:
                Z += self.bT[l]  # + (1, n_l)
                self._hidden_inplace(Z, l)  # now H = g(Z)
            A = Z
            if rng is not None and self.keep < 1:  # inverted dropout on hidden layers
                Ad, M = (buf[:B] for buf in self.D[l])
                M[...] = rng.random((B, Z.shape[1]), dtype=self.dtype) < self.keep
                M *= 1.0 / self.keep
                xp.multiply(Z, M, out=Ad)
                A = Ad
            acts.append(A)

    def output(self, ZL, Ye, labels=None):
        """(AL, loss_sum over the batch as a 0-d device array, correct count or None).

        ``labels`` (softmax only, optional): argmax(Ye, axis=1) computed ahead, once per data set.
        """
        xp, out = self.xp, self.cfg.output
        if out == "sigmoid":
            # BCE from the logits, stable: max(Z,0) - Z Y + log(1 + exp(-|Z|)); equals the textbook
            # -(Y log AL + (1-Y) log(1-AL)) wherever that is finite, and never takes log(0).
            loss = xp.sum(xp.maximum(ZL, 0) - ZL * Ye + xp.log1p(xp.exp(-xp.abs(ZL))))
            AL = 1.0 / (1.0 + xp.exp(-ZL))
            correct = xp.count_nonzero((AL > 0.5) == (Ye > 0.5))
        elif out == "softmax" and self.fast_softmax and labels is not None:
            # the sequence below in three compiled passes around NumPy's exp and log and BLAS's
            # row sums and dot (so every rounding is the one the sequence below makes)
            B = ZL.shape[0]
            S, logS, Zs, AL = self.rowsum[:B, 0], self.logsum[:B], self.Zs[:B], self.AL[:B]
            correct = fused.softmax_head_(ZL, labels, Zs)  # Zs = ZL - row max; argmax == label
            xp.exp(Zs, out=AL)
            xp.matmul(AL, self.ones_out, out=S)
            xp.log(S, out=logS)
            fused.softmax_tail_(AL, S, logS, Zs)  # softmax; log softmax
            loss = -xp.vdot(Ye.ravel(), Zs.ravel())
        elif out == "softmax":
            B = ZL.shape[0]
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
        else:
            AL = ZL
            D = ZL - Ye
            loss = 0.5 * xp.sum(D * D)
            correct = None
        return AL, loss, correct

    def l2_sum(self):
        xp = self.xp
        return sum(xp.vdot(self.params[f"W{l}"].ravel(), self.params[f"W{l}"].ravel()) for l in range(1, self.L + 1))

    def backward(self, acts, AL, Ye, scale=1.0):
        """Gradients of the batch cost into self.grads, each multiplied by ``scale``.

        Backprop is linear in dZ_L (every later step multiplies by W, A or g'(Z) and sums), so
        folding ``scale`` into dZ_L scales every dW and db; the l2 term gets it explicitly. fit
        passes the learning rate for plain gradient descent (the update is then p -= grad).
        """
        xp, B, l2 = self.xp, AL.shape[0], self.cfg.l2
        # Fused output gradient dZ_L = AL - Y. It equals dAL * g'(Z_L) for exactly these pairings:
        # sigmoid with binary cross-entropy, softmax with categorical cross-entropy (each example's
        # targets sum to 1, checked in _prepare), identity with squared error (1/2 (AL - Y)^2).
        # TrainConfig ties the loss to the output, so fit only ever meets these pairings.
        # The 1/B of the batch mean is applied here once instead of on every dW and db.
        dZ = self.G[self.L][:B]
        if self.fast:
            fused.output_grad_(AL, Ye, scale / B, dZ)
        else:
            xp.subtract(AL, Ye, out=dZ)
            dZ *= scale / B  # (B, n_L)
        ones = self.ones[:B]
        for l in range(self.L, 0, -1):
            W, dW = self.W[l], self.dW[l]
            xp.matmul(dZ.T, acts[l - 1], out=dW)  # (n_l, n_{l-1}) = (n_l, B) @ (B, n_{l-1})
            xp.matmul(ones, dZ, out=self.db[l])  # (n_l,) = sum of dZ's rows
            if l2:
                dW += (scale * l2 / B) * W
            if l == 1:
                break  # dA0, the gradient w.r.t. the input, is not needed for training
            dA = self.G[l - 1][:B]
            xp.matmul(dZ, W, out=dA)  # (B, n_{l-1}) = (B, n_l) @ (n_l, n_{l-1})
            if self.keep < 1:
                dA *= self.D[l - 1][1][:B]  # same mask and 1/keep scale as forward
            if self.fast_relu:
                fused.relu_backward_(dA, self.H[l - 1][:B])
            else:
                self._hidden_backward_inplace(dA, self.H[l - 1][:B], l - 1)
            dZ = dA

    def evaluate(self, Xe, Ye, labels=None):
        """(loss_sum, correct) of a whole set in chunks of the buffer size, no dropout."""
        chunk = self.H[1].shape[0]
        loss, correct = 0.0, 0
        for s in range(0, Xe.shape[0], chunk):
            _, ZL = self.forward(Xe[s : s + chunk])
            batch_labels = None if labels is None else labels[s : s + chunk]
            _, batch_loss, batch_correct = self.output(ZL, Ye[s : s + chunk], batch_labels)
            loss = loss + batch_loss.astype(self.xp.float64)
            correct = None if batch_correct is None else correct + batch_correct
        return loss, correct


def _take_rows(xp, src, idx, out, fast=False):
    """out[:] = src[idx]; NumPy's mode="raise" buffers the copy, "wrap" (idx is in range) does not.
    ``fast`` (NumPy, 2-D, where the engine's kernels run): fused.take_rows_, eight rows at a time
    (faster than np.take; figures with the kernel; a two-core Numba gather was slower than np.take,
    0.045 vs 0.030 s)."""
    if fast and src.ndim == 2:
        fused.take_rows_(src, idx, out)
    elif xp is np:
        np.take(src, idx, axis=0, out=out, mode="wrap")
    else:
        xp.take(src, idx, axis=0, out=out)
