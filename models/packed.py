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

``path="gram"`` (gd and momentum, fresh trials): layer 1 trains in coefficient space as fit's Gram
path does (models/gram.py), each trial against R_k = [X; W1_k's start], so U_k = [X X^T | X B_k^T]:
the data's Gram matrix X X^T is computed once for the pack, each trial adds its cross blocks, and a
step's layer 1 is one batched product W_eff (K, n_1, p) @ U^T (K, p, B), the same per-trial product
a solo Gram fit takes. ``on_state(trial, EpochState)`` and ``should_stop(trial)`` give each trial a
solo fit's callbacks (progress, checkpoints, cancel: a trial that stops leaves the pack).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .activations import INPLACE_ACTIVATIONS, INPLACE_DERIVATIVES
from .backend import Array, device_rng, matmul_transposed_into, select_device, to_host
from .config import TrainConfig
from .data import examples_first
from .gram import SharedGram
from .network import initialize_parameters_deep
from .records import Checkpoint, EpochRecord, EpochState, FitResult, TrainingDiverged

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
    on_state: Callable[[int, EpochState], object] | None = None,
    should_stop: Callable[[int], bool] | None = None,
    path: str = "textbook",
    gram_cache: SharedGram | None = None,
) -> list[FitResult | TrainingDiverged]:
    """Train every config on (X, Y) as one pack; per trial, its FitResult or the TrainingDiverged
    that ended it, in the configs' order. ``on_epoch(trial_index, record)`` after each trial's epoch;
    ``on_state(trial_index, state)`` likewise with fit's EpochState (its checkpoint on request);
    ``should_stop(trial_index)`` after that: True stops the trial (result ``stopped``), the others go
    on. ``path``: "textbook", or "gram" (gd or momentum only)."""
    if not configs:
        raise ValueError("fit_packed needs at least one TrainConfig.")
    if path not in ("textbook", "gram"):
        raise ValueError(f"The 'path' parameter must be 'textbook' or 'gram'. Got {path!r} instead.")
    if path == "gram" and (configs[0].optimizer not in ("gd", "momentum") or len(configs[0].layer_dims) < 3):
        raise ValueError(
            f"The packed Gram path trains gd or momentum with a hidden layer. Got optimizer="
            f"{configs[0].optimizer!r} and layer_dims={configs[0].layer_dims}."
        )
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
    if path == "gram":
        pack.gram = _PackGram(xp, data[0], pack.W[1], val, gram_cache, Xh, None if X_val is None else Xv)
        pack.W[1] = pack.gram.start(dtype)
        for slot in pack.slots:  # momentum's v_W1 lives in coefficient space too, zero at the start
            pack.state[(slot, "W", 1)] = xp.zeros_like(pack.W[1])
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
                if results[trial] is not None:
                    continue
                cfg = configs[trial]
                if on_epoch is not None:
                    on_epoch(trial, histories[trial][-1])
                if on_state is not None:
                    make = functools.partial(_checkpoint, pack, j, histories[trial], epoch + 1)
                    elapsed = time.perf_counter() - t_start
                    on_state(trial, EpochState(epoch + 1, cfg.epochs, histories[trial][-1], elapsed, make, device.name))
                if epoch + 1 == cfg.epochs:
                    results[trial] = _result(pack, j, histories[trial], device.name, t_start)
                elif should_stop is not None and should_stop(trial):
                    results[trial] = _result(pack, j, histories[trial], device.name, t_start, stopped=True)
            for j, trial in reversed(list(enumerate(pack.trials))):
                if results[trial] is not None:
                    pack.drop(j)  # finished or diverged: it leaves the pack
    return [r for r in results if r is not None]


def _host_params(pack: _Pack, j: int, kind: str = "") -> dict[str, np.ndarray]:
    """Trial j's parameters (``kind`` ""), or its optimizer slot ``kind`` ("v", "s"), as fit's host
    arrays: W{l} (n_l, n_{l-1}), b{l} (n_l, 1); on the Gram path W1 formed as W_eff R."""
    out = {}
    for l in range(1, pack.L + 1):
        W = pack.W[l][j] if not kind else pack.state[(kind, "W", l)][j]
        b = pack.b[l][j] if not kind else pack.state[(kind, "b", l)][j]
        if l == 1 and pack.gram is not None:
            W = pack.gram.form(W, pack.trials[j])
        prefix = f"{kind}_" if kind else ""
        out[f"{prefix}W{l}"] = np.array(to_host(W))
        out[f"{prefix}b{l}"] = np.array(to_host(b)).reshape(-1, 1)
    return out


def _checkpoint(pack: _Pack, j: int, history: list[EpochRecord], epochs_done: int) -> Checkpoint:
    """Trial j's state after ``epochs_done`` epochs, as its solo fit's checkpoint holds it."""
    state = {}
    for slot in pack.slots:
        state.update(_host_params(pack, j, slot))
    state["t"] = np.array(pack.t, dtype=np.int64)
    cfg = pack.configs[pack.trials[j]]
    return Checkpoint(epochs_done, _host_params(pack, j), state, history[:epochs_done], cfg.seed)


def _result(
    pack: _Pack, j: int, history: list[EpochRecord], device: str, t_start: float, stopped: bool = False
) -> FitResult:
    total = time.perf_counter() - t_start
    timings = {"total_s": total, "train_s": total}
    path = "packed" if pack.gram is None else "packed-gram"
    return FitResult(_host_params(pack, j), history, device, timings, stopped, len(history), path=path)


class _PackGram:
    """The pack's layer 1 in coefficient space: per trial k, M_k = R_k R_k^T with R_k = [X; B_k]
    (p = m + n_1), the data's block X X^T shared; U_k^T = M_k[:, :m] the training set's layer-1 inputs
    transposed, and the validation set's likewise. Each per-trial product is the one fit's GramLayer
    makes (models/gram.py), so a trial's numbers are its solo Gram fit's."""

    def __init__(
        self,
        xp: Any,
        X: Array,
        B: Array,
        val: tuple[Array, Array] | None,
        cache: SharedGram | None,
        X_host: np.ndarray,
        Xv_host: np.ndarray | None,
    ) -> None:
        self.xp, self.X, self.B = xp, X, B  # X (m, n_x), B (K, n_1, n_x): each trial's W1 start
        K, n_1, _ = B.shape
        self.m, self.n_1 = int(X.shape[0]), int(n_1)
        make_xx = lambda: xp.matmul(X, X.T)  # noqa: E731
        XX = make_xx() if cache is None else cache.block(xp, "XX", (X_host,), make_xx)  # (m, m), once
        blocks = []
        for k in range(K):
            XB = xp.matmul(X, B[k].T)  # (m, n_1)
            BB = xp.matmul(B[k], B[k].T)  # (n_1, n_1)
            blocks.append(xp.concatenate([xp.concatenate([XX, XB], axis=1), xp.concatenate([XB.T, BB], axis=1)]))
        self.M = xp.stack(blocks)  # (K, p, p)
        self.UT = self.M[:, :, : self.m]  # (K, p, m)
        self.UT_val = None
        if val is not None:
            D = val[0]
            make_xd = lambda: xp.matmul(X, D.T)  # noqa: E731
            XD = make_xd() if cache is None or Xv_host is None else cache.block(xp, "XD", (X_host, Xv_host), make_xd)
            self.UT_val = xp.stack([xp.concatenate([XD, xp.matmul(B[k], D.T)]) for k in range(K)])  # (K, p, m_val)
        self.kept = list(range(K))  # the original trial of each leading index

    @property
    def p(self) -> int:
        return self.m + self.n_1

    def start(self, dtype: np.dtype) -> Array:
        """Every trial's W_eff at the start: [0 | I] (K, n_1, p)."""
        W = self.xp.zeros((len(self.kept), self.n_1, self.p), dtype=dtype)
        W[:, :, self.m :] = self.xp.eye(self.n_1, dtype=dtype)
        return W

    def keep(self, idx: Array, kept: list[int]) -> None:
        self.M, self.UT = self.M[idx], self.UT[idx]
        if self.UT_val is not None:
            self.UT_val = self.UT_val[idx]
        self.kept = kept

    def form(self, W_eff: Array, trial: int) -> Array:
        """Trial ``trial``'s textbook W1 = W_eff R (n_1, n_x)."""
        xp, m = self.xp, self.m
        return xp.matmul(W_eff[:, :m], self.X) + xp.matmul(W_eff[:, m:], self.B[trial])

    def product(self, W_eff: Array, rows: slice | Array | None) -> Array:
        """Z1 (K, B, n_1) of the training rows ``rows``, or of the validation set (None)."""
        xp = self.xp
        K, n_1 = W_eff.shape[0], W_eff.shape[1]
        if rows is None:
            assert self.UT_val is not None, "no validation set"
            cols = self.UT_val
        else:
            cols = self.UT[:, :, rows] if isinstance(rows, slice) else xp.take(self.UT, rows, axis=2)
        Z = xp.empty((K, cols.shape[2], n_1), dtype=W_eff.dtype)
        # one 2-D product per trial, the one its solo fit makes: NumPy's stacked matmul of these shapes, and
        # one (B, m) @ (m, K n_1) product over the shared X X^T, were slower on 2 busy cores (docs/perf.md)
        for k in range(K):
            matmul_transposed_into(xp, W_eff[k], cols[k], Z[k])
        return Z

    def grad(self, dZ: Array, rows: slice | Array, dtype: np.dtype) -> Array:
        """dW_eff (K, n_1, p): each trial's dZ1^T in its batch's example columns, zero elsewhere."""
        K, B, n_1 = dZ.shape
        dW = self.xp.zeros((K, n_1, self.p), dtype=dtype)
        dW[:, :, rows] = self.xp.swapaxes(dZ, 1, 2)
        return dW

    def sq_norm(self, W_eff: Array) -> Array:
        """||W_eff R_k||^2 per trial (K,)."""
        xp = self.xp
        return xp.stack([xp.sum(xp.matmul(W_eff[k], self.M[k]) * W_eff[k]) for k in range(W_eff.shape[0])])


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
        self.gram: _PackGram | None = None  # path="gram": layer 1 in coefficient space
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
        if self.gram is not None:
            self.gram.keep(keep, list(self.trials))

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
            batch_rows = rows if perm is None else perm[rows]
            acts, masks, ZL = self.forward(xb, rngs, keep, batch_rows)
            AL, loss, correct = self.output(ZL, yb)
            if any(self.configs[t].l2 for t in self.trials):  # as fit: the l2 term only where there is one
                loss = loss + 0.5 * l2[:, 0, 0] * self.l2_sum()
            loss_total += loss.astype(xp.float64)
            if correct_total is not None:
                correct_total += correct
            grads = self.backward(acts, masks, AL, yb, l2, batch_rows)
            self.update(grads, lr)
        return loss_total, correct_total

    def forward(
        self, A0: Array, rngs: list[Any] | None, keep: Array, rows: slice | Array | None = None
    ) -> tuple[list[Array], list[Any], Array]:
        """[A0, A1 (dropped), ...], per hidden layer (its scaled mask or None, g(Z)), and Z_L (K, B, n_L).
        A0 (B, n_x) is shared: layer 1 reads it once for every trial. ``rows``: the batch's training
        examples (the Gram path's inputs; None: the validation set)."""
        xp, B = self.xp, A0.shape[0]
        acts: list[Array] = [A0]
        hidden: list[Any] = [None]
        A = A0
        for l in range(1, self.L):
            if l == 1 and self.gram is not None:
                Z = self.gram.product(self.W[1], rows) + self.b[1]  # (K, B, n_1)
            else:
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
        first = self.gram.sq_norm(self.W[1]) if self.gram is not None else xp.sum(self.W[1] * self.W[1], axis=(1, 2))
        return first + sum(xp.sum(self.W[l] * self.W[l], axis=(1, 2)) for l in range(2, self.L + 1))

    def backward(
        self, acts: list[Array], masks: list[Any], AL: Array, Ye: Array, l2: Array, rows: slice | Array | None = None
    ) -> dict[Any, Array]:
        """Each trial's gradients of its batch cost: dZ_L = AL - Y (the pairings of models/engine.py)."""
        xp, B = self.xp, AL.shape[1]
        dZ = (AL - Ye) / B
        grads = {}
        for l in range(self.L, 0, -1):
            A_prev, W = acts[l - 1], self.W[l]
            if l == 1 and self.gram is not None and rows is not None:  # coefficient space: dZ1^T in the batch's columns
                dW = self.gram.grad(dZ, rows, self.dtype)
            elif A_prev.ndim == 2:  # the shared input: all K gradients in one product, (K n_1, B) @ (B, n_x)
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
