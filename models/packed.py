"""fit_packed(): K trials of one network trained as one stacked computation (a sweep's pack).

Trials that share the data set, layer sizes, activations, output, optimizer, batch size, shuffle
order and dtype (``pack_key``) keep their parameters with a leading trial axis, W{l} (K, n_l, n_{l-1}),
and every step is one batched product per layer for all of them: layer 1 reads the shared batch
once, ``(B, n_x) @ (K, n_x, n_1)``. Each trial keeps its own learning rate and schedule, l2, dropout
keep probability and masks, seed (initial weights; the shuffle order is shared, so shuffled
mini-batches need one seed per pack), optimizer hyperparameters and epoch count. The maths is fit's
(models/training.py's definitions: the loss is the example-weighted mean of the batch costs with
their l2 terms, accuracy counted in the epoch's own passes, epoch e's randomness from
default_rng([seed, e]), masks drawn after the permutation, layer 1 first), so each trial's history
and weights equal its solo fit's to rounding (tests/models/test_packed.py). A trial whose loss stops
being finite leaves the pack with its TrainingDiverged; the others go on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .activations import INPLACE_ACTIVATIONS, INPLACE_DERIVATIVES
from .backend import Array, device_rng, select_device, to_host
from .config import TrainConfig
from .data import examples_first
from .network import initialize_parameters_deep
from .records import EpochRecord, FitResult, TrainingDiverged

__all__ = ["fit_packed", "pack_key"]


def pack_key(cfg: TrainConfig) -> tuple[Any, ...]:
    """Trials with equal keys can share a pack (the same batches, in the same order, through the same layers)."""
    shuffled = cfg.shuffle and cfg.batch_size is not None
    return (
        tuple(cfg.layer_dims),
        cfg.hidden_activation,
        cfg.output,
        cfg.optimizer,
        cfg.batch_size,
        cfg.shuffle,
        cfg.dtype,
        cfg.device,
        cfg.seed if shuffled else None,  # the permutation comes from the seed
    )


def fit_packed(
    X: Any,
    Y: Any,
    configs: Sequence[TrainConfig],
    *,
    X_val: Any = None,
    Y_val: Any = None,
    on_epoch: Callable[[int, EpochRecord], object] | None = None,
) -> list[FitResult | TrainingDiverged]:
    """Train every config on (X, Y) as one pack; per trial, its FitResult or the TrainingDiverged
    that ended it. ``on_epoch(trial_index, record)`` after each trial's epoch."""
    if not configs:
        raise ValueError("fit_packed needs at least one TrainConfig.")
    keys = {pack_key(c) for c in configs}
    if len(keys) > 1:
        raise ValueError(
            "These trials cannot share a pack: they differ in layer_dims, activations, output, optimizer, "
            "batch_size, shuffle, dtype, device or (with shuffled mini-batches) seed. Group them by pack_key()."
        )
    t_start = time.perf_counter()
    cfg0 = configs[0]
    device = select_device(cfg0.device)
    xp, dtype = device.xp, np.dtype(cfg0.dtype)
    Xh, Yh = examples_first(X, Y, cfg0, dtype, "training")
    data = (xp.asarray(Xh), xp.asarray(Yh))
    val = None
    if X_val is not None:
        Xv, Yv = examples_first(X_val, Y_val, cfg0, dtype, "validation")
        val = (xp.asarray(Xv), xp.asarray(Yv))
    pack = _Pack(xp, list(configs), dtype)
    results: list[FitResult | TrainingDiverged | None] = [None] * len(configs)
    histories: list[list[EpochRecord]] = [[] for _ in configs]
    m = int(data[0].shape[0])
    batch = m if cfg0.batch_size is None else min(cfg0.batch_size, m)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        for epoch in range(max(c.epochs for c in configs)):
            if not pack.trials:
                break
            losses, correct = pack.run_epoch(data, epoch, batch)
            for j, trial in enumerate(list(pack.trials)):
                cfg = configs[trial]
                loss = float(losses[j]) / m
                if not math.isfinite(loss):
                    results[trial] = TrainingDiverged(epoch + 1, loss, cfg.learning_rate_at(epoch))
                    continue
                accuracy = None if correct is None else int(correct[j]) / pack.answers(m)
                histories[trial].append(EpochRecord(epoch + 1, loss, accuracy))
            if val is not None:
                v_loss, v_correct = pack.evaluate(val)
                for j, trial in enumerate(pack.trials):
                    if results[trial] is None:
                        record = histories[trial][-1]
                        record.val_loss = float(v_loss[j]) / int(val[0].shape[0])
                        if v_correct is not None:
                            record.val_accuracy = int(v_correct[j]) / pack.answers(int(val[0].shape[0]))
            for j, trial in enumerate(pack.trials):
                if results[trial] is None and on_epoch is not None:
                    on_epoch(trial, histories[trial][-1])
                if results[trial] is None and epoch + 1 == configs[trial].epochs:
                    results[trial] = _result(pack, j, histories[trial], device.name, t_start)
            for j, trial in reversed(list(enumerate(pack.trials))):
                if results[trial] is not None:
                    pack.drop(j)  # finished or diverged: it leaves the pack
    return [r for r in results if r is not None]


def _result(pack: _Pack, j: int, history: list[EpochRecord], device: str, t_start: float) -> FitResult:
    params = {}
    for l in range(1, pack.L + 1):
        params[f"W{l}"] = np.array(to_host(pack.W[l][j]))
        params[f"b{l}"] = np.array(to_host(pack.b[l][j])).reshape(-1, 1)
    total = time.perf_counter() - t_start
    timings = {"total_s": total, "train_s": total}
    return FitResult(params, history, device, timings, False, len(history), path="packed")


class _Pack:
    """The stacked state: W[l] (K, n_l, n_{l-1}), b[l] (K, 1, n_l), optimizer slots alike, and the
    per-trial hyperparameters as (K, 1, 1) arrays; ``trials`` maps the leading index to configs."""

    def __init__(self, xp: Any, configs: list[TrainConfig], dtype: np.dtype) -> None:
        self.xp, self.configs, self.dtype = xp, configs, dtype
        cfg0 = configs[0]
        self.L = len(cfg0.layer_dims) - 1
        self.trials = list(range(len(configs)))
        inits = [initialize_parameters_deep(c.layer_dims, seed=c.seed, init=c.init) for c in configs]
        stack = lambda key, f=lambda a: a: xp.asarray(np.stack([f(p[key]) for p in inits]), dtype=dtype)  # noqa: E731
        self.W = [None] + [stack(f"W{l}") for l in range(1, self.L + 1)]
        self.b = [None] + [stack(f"b{l}", lambda a: a.T) for l in range(1, self.L + 1)]  # (K, 1, n_l)
        self.slots = {"momentum": ("v",), "rmsprop": ("s",), "adam": ("v", "s")}.get(cfg0.optimizer, ())
        self.state = {
            (slot, kind, l): xp.zeros_like(getattr(self, kind)[l])
            for slot in self.slots
            for kind in ("W", "b")
            for l in range(1, self.L + 1)
        }
        self.t = 0
        self._hyper: dict[str, Array] = {}
        self._activate = INPLACE_ACTIVATIONS[cfg0.hidden_activation]
        self._derivative = INPLACE_DERIVATIVES[cfg0.hidden_activation]

    def hyper(self, name: str, epoch: int | None = None) -> Array:
        """A per-trial value as (K, 1, 1) on the device (``learning_rate`` at ``epoch``)."""
        values = [
            c.learning_rate_at(epoch) if name == "learning_rate" and epoch is not None else getattr(c, name)
            for c in (self.configs[t] for t in self.trials)
        ]
        return self.xp.asarray(np.array(values, dtype=np.float64).reshape(-1, 1, 1), dtype=self.dtype)

    def answers(self, m: int) -> int:
        cfg = self.configs[0]
        return m * cfg.layer_dims[-1] if cfg.output == "sigmoid" else m

    def drop(self, j: int) -> None:
        keep = self.xp.asarray(np.array([i for i in range(len(self.trials)) if i != j], dtype=np.int64))
        for l in range(1, self.L + 1):
            self.W[l], self.b[l] = self.W[l][keep], self.b[l][keep]
        self.state = {key: value[keep] for key, value in self.state.items()}
        del self.trials[j]

    # --- one epoch -----------------------------------------------------------------------------
    def run_epoch(self, data: tuple[Array, Array], epoch: int, batch: int) -> tuple[Array, Array | None]:
        xp, cfg0 = self.xp, self.configs[0]
        X, Y = data
        m = int(X.shape[0])
        rngs = [device_rng(xp, self.configs[t].seed, epoch) for t in self.trials]
        perm = None
        if cfg0.shuffle and batch < m:
            perms = [rng.permutation(m) for rng in rngs]  # each generator draws it, as its solo fit does
            perm = xp.asarray(perms[0])
        lr, l2, keep = self.hyper("learning_rate", epoch), self.hyper("l2"), self.hyper("dropout_keep_prob")
        self._hyper = {name: self.hyper(name) for name in ("beta", "beta1", "beta2", "epsilon")}
        K = len(self.trials)
        loss_total = xp.zeros((K,), dtype=xp.float64)
        correct_total = None if cfg0.output == "linear" else xp.zeros((K,), dtype=xp.int64)
        for s in range(0, m, batch):
            rows = slice(s, min(s + batch, m))
            xb, yb = (
                (X[rows], Y[rows]) if perm is None else (xp.take(X, perm[rows], axis=0), xp.take(Y, perm[rows], axis=0))
            )
            acts, masks, ZL = self.forward(xb, rngs, keep)
            AL, loss, correct = self.output(ZL, yb)
            l2_sum = self.l2_sum()
            loss_total += (loss + 0.5 * l2[:, 0, 0] * l2_sum).astype(xp.float64)
            if correct_total is not None:
                correct_total += correct
            grads = self.backward(acts, masks, AL, yb, l2)
            self.update(grads, lr)
        return loss_total, correct_total

    def forward(self, A0: Array, rngs: list[Any] | None, keep: Array) -> tuple[list[Array], list[Any], Array]:
        """[A0, A1 (dropped), ...], per hidden layer (its scaled mask or None, g(Z)), and Z_L (K, B, n_L).
        A0 (B, n_x) is shared: layer 1 reads it once for every trial."""
        xp, B = self.xp, A0.shape[0]
        acts: list[Array] = [A0]
        hidden: list[Any] = [None]
        A = A0
        for l in range(1, self.L):
            Z = self._product(l, A) + self.b[l]  # (K, B, n_l)
            self._activate(xp, Z, xp.zeros_like(Z))  # now g(Z)
            mask = None
            if rngs is not None and any(self.configs[t].dropout_keep_prob < 1 for t in self.trials):
                draws = [  # each trial's masks from its own generator, layer 1 first, as its solo fit draws them
                    rng.random((B, Z.shape[2]), dtype=self.dtype) if self.configs[t].dropout_keep_prob < 1 else None
                    for rng, t in zip(rngs, self.trials, strict=True)
                ]
                mask = xp.stack(
                    [
                        xp.ones((B, Z.shape[2]), dtype=self.dtype) if d is None else xp.asarray(d < keep[k, 0, 0])
                        for k, d in enumerate(draws)
                    ]
                ).astype(self.dtype) * (1.0 / keep)
                A = Z * mask
            else:
                A = Z
            hidden.append((mask, Z))
            acts.append(A)
        ZL = self._product(self.L, A) + self.b[self.L]  # (K, B, n_L)
        return acts, hidden, ZL

    def _product(self, l: int, A: Array) -> Array:
        """A W_l^T for every trial, (K, B, n_l). The shared input (B, n_x) meets all K weight matrices
        in one product, (B, n_x) @ (n_x, K n_1), instead of K of them."""
        xp, W = self.xp, self.W[l]
        K, n_l, n_prev = W.shape
        if A.ndim == 2:
            Z = xp.matmul(A, xp.reshape(W, (K * n_l, n_prev)).T)  # (B, K n_l)
            return xp.swapaxes(xp.reshape(Z, (A.shape[0], K, n_l)), 0, 1)
        return xp.matmul(A, xp.swapaxes(W, 1, 2))

    def output(self, ZL: Array, Ye: Array) -> tuple[Array, Array, Array | None]:
        """(AL, each trial's loss summed over the batch (K,), right answers (K,) or None)."""
        xp, out = self.xp, self.configs[0].output
        if out == "sigmoid":
            loss = xp.sum(xp.maximum(ZL, 0) - ZL * Ye + xp.log1p(xp.exp(-xp.abs(ZL))), axis=(1, 2))
            AL = 1.0 / (1.0 + xp.exp(-ZL))
            return AL, loss, xp.count_nonzero((AL > 0.5) == (Ye > 0.5), axis=(1, 2))
        if out == "softmax":
            Zs = ZL - xp.max(ZL, axis=2, keepdims=True)
            E = xp.exp(Zs)
            S = xp.sum(E, axis=2, keepdims=True)
            AL = E / S
            loss = -xp.sum(Ye * (Zs - xp.log(S)), axis=(1, 2))
            return AL, loss, xp.count_nonzero(xp.argmax(ZL, axis=2) == xp.argmax(Ye, axis=1), axis=1)
        D = ZL - Ye
        return ZL, 0.5 * xp.sum(D * D, axis=(1, 2)), None

    def l2_sum(self) -> Array:
        xp = self.xp
        return sum(xp.sum(self.W[l] * self.W[l], axis=(1, 2)) for l in range(1, self.L + 1))

    def backward(self, acts: list[Array], masks: list[Any], AL: Array, Ye: Array, l2: Array) -> dict[Any, Array]:
        """Each trial's gradients of its batch cost: dZ_L = AL - Y (the pairings of models/engine.py)."""
        xp, B = self.xp, AL.shape[1]
        dZ = (AL - Ye) / B
        grads = {}
        for l in range(self.L, 0, -1):
            A_prev, W = acts[l - 1], self.W[l]
            if A_prev.ndim == 2:  # the shared input: all K gradients in one product, (K n_1, B) @ (B, n_x)
                K, n_l, _ = W.shape
                dZ_all = xp.reshape(xp.swapaxes(dZ, 0, 1), (B, K * n_l))
                dW = xp.reshape(xp.matmul(dZ_all.T, A_prev), W.shape)
            else:
                dW = xp.matmul(xp.swapaxes(dZ, 1, 2), A_prev)
            grads[("W", l)] = dW + (l2 / B) * W  # (K, n_l, n_{l-1})
            grads[("b", l)] = xp.sum(dZ, axis=1, keepdims=True)  # (K, 1, n_l)
            if l == 1:
                break
            dA = xp.matmul(dZ, self.W[l])  # (K, B, n_{l-1})
            mask, H = masks[l - 1]
            if mask is not None:
                dA = dA * mask
            self._derivative(xp, dA, H, H > 0)
            dZ = dA
        return grads

    def update(self, grads: dict[Any, Array], lr: Array) -> None:
        xp, cfg0 = self.xp, self.configs[0]
        self.t += 1
        for (kind, l), g in grads.items():
            p = getattr(self, kind)[l]
            if cfg0.optimizer == "gd":
                p -= lr * g
                continue
            if cfg0.optimizer == "momentum":
                beta = self._hyper["beta"]
                v = self.state[("v", kind, l)]
                v *= beta
                v += (1.0 - beta) * g
                p -= lr * v
            elif cfg0.optimizer == "rmsprop":
                beta2, eps = self._hyper["beta2"], self._hyper["epsilon"]
                s = self.state[("s", kind, l)]
                s *= beta2
                s += (1.0 - beta2) * (g * g)
                p -= lr * (g / (xp.sqrt(s) + eps))
            else:  # adam
                beta1, beta2, eps = self._hyper["beta1"], self._hyper["beta2"], self._hyper["epsilon"]
                v, s = self.state[("v", kind, l)], self.state[("s", kind, l)]
                v *= beta1
                v += (1.0 - beta1) * g
                s *= beta2
                s += (1.0 - beta2) * (g * g)
                c1, c2 = 1.0 - beta1**self.t, 1.0 - beta2**self.t
                p -= (lr / c1) * (v / (xp.sqrt(s) / xp.sqrt(c2) + eps))

    def evaluate(self, val: tuple[Array, Array]) -> tuple[Array, Array | None]:
        _, _, ZL = self.forward(val[0], None, self.hyper("dropout_keep_prob"))
        _, loss, correct = self.output(ZL, val[1])
        return (loss + 0.5 * self.hyper("l2")[:, 0, 0] * self.l2_sum()).astype(self.xp.float64), correct
