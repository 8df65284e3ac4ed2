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

``path="gram"`` (gd and momentum): layer 1 trains in coefficient space as fit's Gram path does
(models/gram.py), the whole pack in one stacked step (``_StackedGram``, its docstring has the maths):
the data's Gram matrix X X^T is computed once and shared, each trial adds only its start's block, and
W1 is formed only when read. gd trials may also resume, each from its own checkpoint, all at one epoch
(``checkpoints``): each then starts from its checkpoint's W1 as a resumed Gram fit does, and its epoch
numbers, learning rates, randomness and history go on from the checkpoint's epoch. A resumed momentum
trial's velocity would be a second start block per trial, which the stacked step does not hold.
``on_state(trial, EpochState)`` and ``should_stop(trial)`` give each trial a solo fit's callbacks
(progress, checkpoints, cancel: a trial that stops leaves the pack). On a GPU its full-batch steps
without dropout replay one captured graph (models/stepgraph.py), as a solo fit's do: launched kernel by
kernel, a pack's dozens of small kernels a step would cost more than the trials it packs.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import stepgraph
from .activations import INPLACE_ACTIVATIONS, INPLACE_DERIVATIVES
from .backend import Array, device_rng, is_numpy, select_device, to_host
from .config import TrainConfig
from .data import examples_first
from .gram import SharedGram
from .network import initialize_parameters_deep
from .optimizers import make_optimizer
from .records import Checkpoint, EpochRecord, EpochState, FitResult, TrainingDiverged
from .training import _restore

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
    checkpoints: Sequence[Checkpoint] | None = None,
) -> list[FitResult | TrainingDiverged]:
    """Train every config on (X, Y) as one pack; per trial, its FitResult or the TrainingDiverged
    that ended it, in the configs' order. ``on_epoch(trial_index, record)`` after each trial's epoch;
    ``on_state(trial_index, state)`` likewise with fit's EpochState (its checkpoint on request);
    ``should_stop(trial_index)`` after that: True stops the trial (result ``stopped``), the others go
    on. ``path``: "textbook", or "gram" (gd or momentum only). ``checkpoints``: one per config, all at
    the same epoch (path "gram", gd only): each trial resumes from its own as fit(checkpoint=...) does."""
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
    starts = None if checkpoints is None else _resumed_starts(configs, checkpoints, path)
    start_epoch = 0 if checkpoints is None else checkpoints[0].epoch
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
    pack: _Pack | _StackedGram
    if path == "gram":
        Xv_host = None if X_val is None else Xv
        pack = _StackedGram(xp, list(configs), dtype, data[0], data[1], val, gram_cache, Xh, Xv_host, starts)
    else:
        pack = _Pack(xp, list(configs), dtype)
    results: list[FitResult | TrainingDiverged | None] = [None] * len(configs)
    # a resumed trial's history goes on from its checkpoint's, as a resumed fit's does
    histories: list[list[EpochRecord]] = (
        [[] for _ in configs] if checkpoints is None else [list(c.history[:start_epoch]) for c in checkpoints]
    )
    m = int(data[0].shape[0])
    batch = m if cfg0.batch_size is None else min(cfg0.batch_size, m)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"), _closing(pack):
        for j, trial in reversed(list(enumerate(pack.trials))):
            if configs[trial].epochs == start_epoch:  # resumed at its last epoch: its fit trains none
                results[trial] = _result(pack, j, histories[trial], device.name, t_start)
                pack.drop(j)
        for epoch in range(start_epoch, max(c.epochs for c in configs)):
            if not pack.trials:
                break
            losses, correct = pack.run_epoch(data, epoch, batch)
            loss_list = to_host(losses).tolist()  # one transfer per epoch, not one per trial
            correct_list = None if correct is None else to_host(correct).tolist()
            for j, trial in enumerate(list(pack.trials)):
                cfg = configs[trial]
                loss = loss_list[j] / m
                if not math.isfinite(loss):
                    results[trial] = TrainingDiverged(epoch + 1, loss, cfg.learning_rate_at(epoch))
                    continue
                accuracy = None if correct_list is None else correct_list[j] / pack.answers(m)
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


def _resumed_starts(
    configs: Sequence[TrainConfig], checkpoints: Sequence[Checkpoint], path: str
) -> list[dict[str, np.ndarray]]:
    """Each trial's parameters from its checkpoint (host arrays, checked against its config as fit
    checks them), after checking that the pack can resume: the Gram path, gd, one epoch for all."""
    if len(checkpoints) != len(configs):
        raise ValueError(f"fit_packed needs one checkpoint per config. Got {len(checkpoints)} for {len(configs)}.")
    if path != "gram" or configs[0].optimizer != "gd":
        # momentum's resumed velocity is a second start block (models/gram.py bases_needed), which the
        # stacked step does not hold; such trials resume one by one through fit
        raise ValueError(
            f"A pack resumes from checkpoints on the Gram path with optimizer 'gd' only. Got path={path!r} "
            f"and optimizer={configs[0].optimizer!r}; resume each trial with fit(checkpoint=...)."
        )
    epochs = [c.epoch for c in checkpoints]
    if len(set(epochs)) > 1:
        raise ValueError(
            f"The trials of a pack resume at one epoch, but their checkpoints are at epochs {epochs}; "
            "resume each trial with fit(checkpoint=...)."
        )
    starts = []
    for cfg, ckpt in zip(configs, checkpoints, strict=True):
        optimizer = make_optimizer(cfg.optimizer, cfg.learning_rate)
        params = _restore(ckpt, cfg, np, np.dtype(cfg.dtype), optimizer)  # gd's state: its step count alone
        starts.append({**params, "t": np.array(optimizer.t, dtype=np.int64)})
    return starts


@contextlib.contextmanager
def _closing(pack: _Pack | _StackedGram) -> Iterator[None]:
    """The pack's step graph (and its memory pool) let go when training ends, normally or not."""
    try:
        yield
    finally:
        pack.close()


def _checkpoint(pack: _Pack | _StackedGram, j: int, history: list[EpochRecord], epochs_done: int) -> Checkpoint:
    """Trial j's state after ``epochs_done`` epochs, as its solo fit's checkpoint holds it."""
    state = {}
    for slot in pack.slots:
        state.update(pack.host_params(j, slot))
    state["t"] = np.array(pack.t, dtype=np.int64)
    cfg = pack.configs[pack.trials[j]]
    return Checkpoint(epochs_done, pack.host_params(j), state, history[:epochs_done], cfg.seed)


def _result(
    pack: _Pack | _StackedGram,
    j: int,
    history: list[EpochRecord],
    device: str,
    t_start: float,
    stopped: bool = False,
) -> FitResult:
    total = time.perf_counter() - t_start
    timings = {"total_s": total, "train_s": total}
    return FitResult(
        pack.host_params(j), history, device, timings, stopped, len(history), pack.step_graph(), path=pack.path
    )


class _Pack:
    """The stacked state: W[l] (K, n_l, n_{l-1}), b[l] (K, 1, n_l), optimizer slots alike, and the
    per-trial hyperparameters as (K, 1, 1) arrays; ``trials`` maps the leading index to configs."""

    path = "packed"

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

    def step_graph(self) -> str | None:
        return None  # kernel by kernel everywhere (the textbook pack is not captured)

    def close(self) -> None:
        pass

    def host_params(self, j: int, kind: str = "") -> dict[str, np.ndarray]:
        """Trial j's parameters (``kind`` ""), or its optimizer slot ``kind`` ("v", "s"), as fit's host
        arrays: W{l} (n_l, n_{l-1}), b{l} (n_l, 1)."""
        out = {}
        prefix = f"{kind}_" if kind else ""
        for l in range(1, self.L + 1):
            W = self.W[l][j] if not kind else self.state[(kind, "W", l)][j]
            b = self.b[l][j] if not kind else self.state[(kind, "b", l)][j]
            out[f"{prefix}W{l}"] = np.array(to_host(W))
            out[f"{prefix}b{l}"] = np.array(to_host(b)).reshape(-1, 1)
        return out

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
            AL, loss, correct = _head(xp, cfg0.output, ZL, yb, 2)
            if any(self.configs[t].l2 for t in self.trials):  # as fit: the l2 term only where there is one
                loss = loss + 0.5 * l2[:, 0, 0] * self.l2_sum()
            loss_total += loss.astype(xp.float64)
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
        _, loss, correct = _head(self.xp, self.configs[0].output, ZL, val[1], 2)
        return (loss + 0.5 * self.hyper("l2")[:, 0, 0] * self.l2_sum()).astype(self.xp.float64), correct


def _head(xp: Any, output: str, ZL: Array, Ye: Array, axis: int) -> tuple[Array, Array, Array | None]:
    """(AL, each trial's loss summed over the batch (K,), right answers (K,) or None) of the output
    layer's Z_L, whose classes lie on ``axis`` (2: examples first (K, B, n_L) with Ye (B, n_L); 1:
    features first (K, n_L, B) with Ye (n_L, B)), the losses of models/engine.py's output steps."""
    if output == "sigmoid":
        loss = xp.sum(xp.maximum(ZL, 0) - ZL * Ye + xp.log1p(xp.exp(-xp.abs(ZL))), axis=(1, 2))
        AL = 1.0 / (1.0 + xp.exp(-ZL))
        return AL, loss, xp.count_nonzero((AL > 0.5) == (Ye > 0.5), axis=(1, 2))
    if output == "softmax":
        Zs = ZL - xp.max(ZL, axis=axis, keepdims=True)
        E = xp.exp(Zs)
        S = xp.sum(E, axis=axis, keepdims=True)
        AL = E / S
        loss = -xp.sum(Ye * (Zs - xp.log(S)), axis=(1, 2))
        return AL, loss, xp.count_nonzero(xp.argmax(ZL, axis=axis) == xp.argmax(Ye, axis=axis - 1), axis=1)
    D = ZL - Ye
    return ZL, 0.5 * xp.sum(D * D, axis=(1, 2)), None


@dataclass
class _EpochConstants:
    """One epoch's per-trial values for _StackedGram's steps: host vectors (K,) and device (K, 1, 1)
    / (K, 1) arrays in the pack's dtype (``lr``, ``beta``: for W_eff and for the flat parameters). The
    device arrays are the pack's own (_StackedGram._const), written in place when the values change."""

    gd: bool
    factor: np.ndarray  # what fit folds into dZ_L: gd's learning rate, else 1
    l2: np.ndarray
    keep: np.ndarray
    rngs: list[Any]
    lr: tuple[Array, Array]
    beta: tuple[Array, ...]  # momentum: beta and 1 - beta, each for W_eff and for flat
    l2_half: Array
    _by_batch: dict[int, tuple[Array, Array | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.any_l2 = bool(self.l2.any())
        self.dropout = bool((self.keep < 1).any())

    def factors(self, pack: _StackedGram, B: int) -> tuple[Array, Array | None]:
        """(factor / B, factor l2 / B or None) for batches of B examples, as fit computes them."""
        held = self._by_batch.get(B)
        if held is None:
            l2c = pack._const(f"l2c/{B}", self.factor * self.l2 / B) if self.any_l2 else None
            held = self._by_batch[B] = (pack._const(f"factor/{B}", self.factor / B), l2c)
        return held


def _momentum_constants(beta: np.ndarray) -> tuple[tuple[np.ndarray, int], ...]:
    """Momentum's (values, ndim) per-trial constants: beta and 1 - beta, each for W_eff and for flat."""
    return tuple((b, n) for b in (beta, 1.0 - beta) for n in (3, 2))


class _StackedGram:
    """The pack on the Gram path: every trial's step at once, features first, buffers made once.

    Per trial k, W1_k = W_eff_k R_k with R_k = [X; B_k] ((p, n_x), p = m + n_1; B_k its W1 start) and
    W_eff_k = [C_k | s_k I]: C_k (n_1, m) the coefficients on the examples, and the start's block a
    scalar times I (it starts at I, and gd and momentum only ever scale it, by the l2 term), so

        W1_k = C_k X + s_k B_k                                        (n_1, n_x), formed only when read
        Z1[:, :, b] = C @ XX[:, b] + s * P[:, :, b] + b1               (K, n_1, B), b: the batch's examples

    with XX = X X^T (m, m) the data's Gram matrix, shared by the pack, and P_k = B_k X^T (n_1, m), one
    for the pack when the starts are equal (a sweep over learning rates). In coefficient space the
    gradient of C is dZ1 in the batch's columns (+ l2/B C) and s's is l2/B s, so gd without l2 steps
    C[:, :, b] -= lr dZ1 and nothing else. ||W1_k||^2 = <C_k XX, C_k> + 2 s_k <C_k, P_k> + s_k^2 ||B_k||^2.
    Deeper layers: W_l (K, n_l, n_{l-1}) @ A (K, n_{l-1}, B), batched. s, every bias and layers 2..L
    live in one (K, T) array (``flat``) with their gradients alike, so an optimizer step is one pass
    for them and one for C. The learning rate (gd) is folded into dZ_L as fit folds it, and each
    trial keeps fit's maths (models/engine.py, models/gram.py): its numbers are its solo Gram fit's
    to rounding (tests/models/test_packed.py)."""

    path = "packed-gram"

    def __init__(
        self,
        xp: Any,
        configs: list[TrainConfig],
        dtype: np.dtype,
        X: Array,
        Y: Array,
        val: tuple[Array, Array] | None,
        cache: SharedGram | None,
        X_host: np.ndarray,
        Xv_host: np.ndarray | None,
        resumed: list[dict[str, np.ndarray]] | None = None,
    ) -> None:
        """``resumed``: each trial's checkpointed parameters (and gd's step count "t"), from which it
        starts as a resumed Gram fit does (B_k its W1, C_k = 0, s_k = 1); None: fresh trials."""
        self.xp, self.configs, self.dtype = xp, configs, dtype
        cfg0 = configs[0]
        dims = list(cfg0.layer_dims)
        self.L, self.dims = len(dims) - 1, dims
        self.trials = list(range(len(configs)))
        self.slots: tuple[str, ...] = ("v",) if cfg0.optimizer == "momentum" else ()
        self.t = 0 if resumed is None else int(resumed[0]["t"])
        self.m, self.n_1 = int(X.shape[0]), dims[1]
        self.X, self.Yf = X, xp.ascontiguousarray(Y.T)  # X (m, n_x); Y features first (n_L, m)
        inits = resumed or [initialize_parameters_deep(dims, seed=c.seed, init=c.init) for c in configs]
        starts = np.stack([q["W1"] for q in inits])  # (K, n_1, n_x)
        shared = all(np.array_equal(starts[0], s) for s in starts[1:])
        self.B = xp.asarray(starts[:1] if shared else starts, dtype=dtype)  # (1 or K, n_1, n_x)
        make_xx = lambda: xp.matmul(X, X.T)  # noqa: E731
        self.XX = make_xx() if cache is None else cache.block(xp, "XX", (X_host,), make_xx)  # (m, m), once
        self.P = xp.matmul(self.B, X.T)  # (1 or K, n_1, m): B_k X^T
        self.BB = xp.sum(self.B * self.B, axis=(1, 2))  # (1 or K,): ||B_k||^2
        self.val_inputs: tuple[Array, Array] | None = None
        if val is not None:
            D = val[0]
            make_xd = lambda: xp.matmul(X, D.T)  # noqa: E731
            XD = make_xd() if cache is None or Xv_host is None else cache.block(xp, "XD", (X_host, Xv_host), make_xd)
            self.val_inputs = (XD, xp.matmul(self.B, D.T))  # (m, m_val), (1 or K, n_1, m_val)
            self.Yv = xp.ascontiguousarray(val[1].T)
        K = len(configs)
        self.C = xp.zeros((K, self.n_1, self.m), dtype=dtype)
        self.layout = [("s", 1, (1, 1)), ("b", 1, (self.n_1, 1))] + [
            item for l in range(2, self.L + 1) for item in (("W", l, (dims[l], dims[l - 1])), ("b", l, (dims[l], 1)))
        ]
        T = sum(math.prod(shape) for _, _, shape in self.layout)
        flat = np.empty((K, T))
        for k, q in enumerate(inits):
            flat[k] = np.concatenate([np.ones(1)] + [q[f"{kind}{l}"].ravel() for kind, l, _ in self.layout[1:]])
        self.flat = xp.asarray(flat, dtype=dtype)
        self.state = {"v": (xp.zeros_like(self.C), xp.zeros_like(self.flat))} if self.slots else {}
        self.GC = xp.zeros_like(self.C)  # C's dense gradient (l2 or momentum only)
        self.flat_g = xp.zeros_like(self.flat)  # s's entry stays 0 without l2
        self._activate = INPLACE_ACTIVATIONS[cfg0.hidden_activation]
        self._derivative = INPLACE_DERIVATIVES[cfg0.hidden_activation]
        self._graphed: stepgraph.GraphedStep | None = None  # the full-batch step's graph (a GPU)
        self._graph_counts = [0, 0]  # replays and captures of the graphs already let go (a trial left)
        self._graph_off: str | None = None
        self._step_now: _EpochConstants | None = None  # the epoch's values, for the graph's capture
        self._views()

    # --- views and buffers -----------------------------------------------------------------------
    def _views(self) -> None:
        """s, W[l], b[l]: (K, 1, 1), (K, n_l, n_{l-1}), (K, n_l, 1) views of flat, ds, dW[l], db[l] of
        flat_g; drops the batch buffers (made again for the pack's new size)."""
        K = self.flat.shape[0]
        views: dict[str, dict[int, Array]] = {name: {} for name in ("s", "W", "b", "ds", "dW", "db")}
        at = 0
        for kind, l, shape in self.layout:
            size = math.prod(shape)
            views[kind][l] = self.flat[:, at : at + size].reshape((K, *shape))
            views["d" + kind][l] = self.flat_g[:, at : at + size].reshape((K, *shape))
            at += size
        self.s, self.ds = views["s"][1], views["ds"][1]
        self.W, self.b, self.dW, self.db = views["W"], views["b"], views["dW"], views["db"]
        self._buffers: dict[int, dict[str, Any]] = {}
        self._constants: tuple[bytes, _EpochConstants] | None = None  # the last epoch's, by its learning rates
        # Arrays a captured step reads by address: the new size's are made again, and so is the graph.
        self._consts: dict[str, Array] = {}
        self._acc: tuple[Array, Array] | None = None  # the epoch's loss sums (K,) float64 and right answers (K,)
        self.close()

    def _buf(self, B: int) -> dict[str, Any]:
        """Buffers for batches of B examples, made on first use (at most two sizes, and the validation set's)."""
        held = self._buffers.get(B)
        if held is None:
            xp, dt, K, dims = self.xp, self.dtype, self.flat.shape[0], self.dims
            hidden = range(1, self.L)
            held = {
                "H": {l: xp.empty((K, dims[l], B), dtype=dt) for l in hidden},  # Z, then g(Z)
                "G": {l: xp.empty((K, dims[l], B), dtype=dt) for l in hidden},  # dA, then dZ
                "zeros": {l: xp.zeros((K, dims[l], B), dtype=dt) for l in hidden},
                "mask": {l: xp.empty((K, dims[l], B), dtype=bool) for l in hidden},
                "drop": {l: xp.empty((K, dims[l], B), dtype=dt) for l in hidden},  # scaled dropout masks
                "dropped": {l: xp.empty((K, dims[l], B), dtype=dt) for l in hidden},
                "start": xp.empty((K, dims[1], B), dtype=dt),  # s P[:, :, b]
                "ZL": xp.empty((K, dims[-1], B), dtype=dt),
                "dZL": xp.empty((K, dims[-1], B), dtype=dt),
                "ones": xp.ones((B, 1), dtype=dt),
                "out": [xp.empty((K, dims[-1], B), dtype=dt) for _ in range(3)],  # the sigmoid output's
                "right": xp.empty((K, dims[-1], B), dtype=bool),
            }
            self._buffers[B] = held
        return held

    # --- per-trial values -----------------------------------------------------------------------
    def hyper(self, name: str, epoch: int = 0) -> np.ndarray:
        """A per-trial value as a float64 host vector (K,) (``learning_rate`` at ``epoch``)."""
        cfgs = [self.configs[t] for t in self.trials]
        if name == "learning_rate":
            return np.array([c.learning_rate_at(epoch) for c in cfgs], dtype=np.float64)
        return np.array([getattr(c, name) for c in cfgs], dtype=np.float64)

    def _dev(self, values: np.ndarray, ndim: int = 3) -> Array:
        """Host per-trial values on the device as (K, 1, ...) in the pack's dtype."""
        return self.xp.asarray(values.reshape((-1,) + (1,) * (ndim - 1)), dtype=self.dtype)

    def _const(self, name: str, values: np.ndarray, ndim: int = 3) -> Array:
        """_dev(values) kept under ``name``: made once, afterwards written in place, so a captured step
        reads the new values (a decayed rate) where it read the old, and no array it reads is freed."""
        fresh = self._dev(values, ndim)
        held = self._consts.get(name)
        if held is None or held.shape != fresh.shape:
            self._consts[name] = fresh
            return fresh
        held[...] = fresh
        return held

    def answers(self, m: int) -> int:
        cfg = self.configs[0]
        return m * cfg.layer_dims[-1] if cfg.output == "sigmoid" else m

    def drop(self, j: int) -> None:
        keep = [i for i in range(len(self.trials)) if i != j]
        idx = self.xp.asarray(np.array(keep, dtype=np.int64))
        self.C, self.flat, self.GC, self.flat_g = self.C[idx], self.flat[idx], self.GC[idx], self.flat_g[idx]
        self.state = {key: (vC[idx], v[idx]) for key, (vC, v) in self.state.items()}
        if self.B.shape[0] > 1:  # per-trial starts
            self.B, self.P, self.BB = self.B[idx], self.P[idx], self.BB[idx]
            if self.val_inputs is not None:
                self.val_inputs = (self.val_inputs[0], self.val_inputs[1][idx])
        del self.trials[j]
        self._views()

    # --- one epoch -------------------------------------------------------------------------------
    def run_epoch(self, data: tuple[Array, Array], epoch: int, batch: int) -> tuple[Array, Array | None]:
        """Train every trial one epoch: (losses summed over the examples (K,) float64, right answers or None)."""
        xp, cfg0, m = self.xp, self.configs[0], self.m
        shuffled = cfg0.shuffle and batch < m
        dropout = any(self.configs[t].dropout_keep_prob < 1 for t in self.trials)
        # the epoch's generators, only where something is drawn (full batch without dropout: nothing)
        rngs = [device_rng(xp, self.configs[t].seed, epoch) for t in self.trials] if shuffled or dropout else []
        perm = None
        if shuffled:
            perms = [rng.permutation(m) for rng in rngs]  # each generator draws it, as its solo fit does
            perm = xp.asarray(perms[0])
        lr = self.hyper("learning_rate", epoch)
        held = self._constants  # the same unless a schedule changed a rate
        if held is not None and held[0] == lr.tobytes():
            step = held[1]
        else:
            l2, keep = self.hyper("l2"), self.hyper("dropout_keep_prob")
            gd, beta = cfg0.optimizer == "gd", self.hyper("beta")
            step = _EpochConstants(
                gd=gd,
                factor=lr if gd else np.ones_like(lr),  # folded into dZ_L: gd's update is then p -= grad
                l2=l2,
                keep=keep,
                rngs=[],
                lr=(self._const("lr", lr), self._const("lr2", lr, 2)),
                beta=() if gd else tuple(self._const(f"b{i}", *bn) for i, bn in enumerate(_momentum_constants(beta))),
                l2_half=self._const("l2_half", 0.5 * l2, 1),
            )
            self._constants = (lr.tobytes(), step)
        step.rngs = rngs
        self._step_now = step
        loss_total, correct_total = self._accumulators()
        graphed = self._graph(step, batch)
        for s in range(0, m, batch):
            cols = slice(s, min(s + batch, m)) if perm is None else perm[s : s + batch]
            B = min(s + batch, m) - s
            _, l2c = step.factors(self, B)  # written before the step: a replay runs no Python
            if graphed is not None:
                graphed.step(None)
            else:
                self._gradients(cols, step, loss_total, correct_total)
            self._update(self._buf(B)["G"][1], cols, l2c, step)
        return loss_total, None if cfg0.output == "linear" else correct_total

    def _accumulators(self) -> tuple[Array, Array]:
        """The epoch's loss sums (K,) float64 and right answers (K,) int64, zeroed: kept, so that a
        captured step adds into the same memory every epoch."""
        K, xp = len(self.trials), self.xp
        if self._acc is None:
            self._acc = (xp.zeros((K,), dtype=xp.float64), xp.zeros((K,), dtype=xp.int64))
        else:
            for acc in self._acc:
                acc[...] = 0
        return self._acc

    def _graph(self, step: _EpochConstants, batch: int) -> stepgraph.GraphedStep | None:
        """The full-batch step replayed from a captured graph: on a device, without dropout (each step
        draws masks), one batch an epoch (fixed columns; a shuffled batch's gather is not captured)."""
        if is_numpy(self.xp) or not stepgraph.enabled() or step.dropout or batch < self.m:
            return None
        if self._graphed is None:
            full = slice(0, self.m)

            def run_step(_factor: Any, loss_acc: Array, correct_acc: Array) -> None:
                assert self._step_now is not None
                self._gradients(full, self._step_now, loss_acc, correct_acc)

            loss_acc, correct_acc = self._accumulators()
            dZ1 = self._buf(self.m)["G"][1]  # the step writes the gradients of C (dZ1) and of flat
            self._graphed = stepgraph.GraphedStep(self.xp, run_step, (self.flat_g, dZ1), loss_acc, correct_acc)
        return self._graphed

    def step_graph(self) -> str | None:
        """FitResult.step_graph: "on: N steps replayed from K captures" (a capture for each pack size),
        "off: why", or None where the steps were never graphed (CPU, dropout, mini-batches)."""
        replays, captures = self._graph_counts
        if self._graphed is not None:
            replays, captures = replays + self._graphed.replays, captures + self._graphed.captures
            off = self._graphed.off_reason or self._graph_off
        else:
            off = self._graph_off
        if off is not None:
            return f"off: {off}"
        if captures == 0:
            return None
        return f"on: {replays} steps replayed from {captures} capture{'s' if captures != 1 else ''}"

    def close(self) -> None:
        """Let the step graph and its memory go (a trial left the pack, or training ended)."""
        graphed = self._graphed
        if graphed is None:
            return
        self._graph_counts[0] += graphed.replays
        self._graph_counts[1] += graphed.captures
        self._graph_off = self._graph_off or graphed.off_reason
        graphed.close()
        self._graphed = None

    def _layer1(self, XXb: Array, Pb: Array, buf: dict[str, Any], scaled: bool) -> Array:
        """Z1 = C @ XXb + s Pb + b1 (K, n_1, B) from the batch's columns XXb (m, B), Pb (1 or K, n_1, B).

        C @ XXb is one call making one (n_1, m) @ (m, B) GEMM per trial, as the solo fit does: a single
        (K n_1, m) GEMM does the same work, but OpenBLAS threads it, and threaded GEMMs this small lose
        many times over on busy cores (docs/perf.md, "Stacked Gram pack"). ``scaled``: s may differ
        from 1 (some trial has l2); else s P is P itself."""
        xp, Z1 = self.xp, buf["H"][1]
        xp.matmul(self.C, XXb, out=Z1)  # (K, n_1, m) @ (m, B)
        if scaled:
            Z1 += xp.multiply(self.s, Pb, out=buf["start"])
        else:
            Z1 += Pb
        Z1 += self.b[1]
        return Z1

    def forward(
        self, ins: tuple[Array, Array], buf: dict[str, Any], step: _EpochConstants | None, scaled: bool
    ) -> tuple[list[Array], Array]:
        """[A1, ..., A_{L-1}] (K, n_l, B) (dropped when training with dropout) and Z_L (K, n_L, B)."""
        xp = self.xp
        A = self._layer1(*ins, buf, scaled)
        acts = []
        for l in range(1, self.L):
            Z = buf["H"][l]
            if l > 1:
                xp.matmul(self.W[l], A, out=Z)
                Z += self.b[l]
            self._activate(xp, Z, buf["zeros"][l])  # now g(Z)
            A = Z
            if step is not None and step.dropout:
                A = self._dropout(l, Z, buf, step)
            acts.append(A)
        ZL = xp.matmul(self.W[self.L], A, out=buf["ZL"])
        ZL += self.b[self.L]
        return acts, ZL

    def _dropout(self, l: int, H: Array, buf: dict[str, Any], step: _EpochConstants) -> Array:
        """Each trial's scaled mask from its own generator (drawn (B, n_l) as its solo fit draws it)."""
        xp, keep, B = self.xp, step.keep, H.shape[2]
        Mk = buf["drop"][l]
        for k, rng in enumerate(step.rngs):
            if keep[k] < 1:  # a Python float against the draws, as fit compares them
                Mk[k] = (rng.random((B, H.shape[1]), dtype=self.dtype) < float(keep[k])).T
            else:
                Mk[k] = 1
        Mk *= self._dev(1.0 / keep)
        return xp.multiply(H, Mk, out=buf["dropped"][l])

    def _gradients(self, cols: slice | Array, step: _EpochConstants, loss_acc: Array, correct_acc: Array) -> None:
        """One batch for every trial up to its update: forward, loss, backward. The gradients go to
        flat_g and the batch buffers' G[1] (dZ1, C's), the batch's loss sums and right answers are
        added to the accumulators: all of it device work on fixed arrays, so that it can be captured."""
        xp = self.xp
        if isinstance(cols, slice):
            ins = (self.XX[:, cols], self.P[:, :, cols])  # views
        else:  # one gather for the whole pack
            ins = (xp.take(self.XX, cols, axis=1), xp.take(self.P, cols, axis=2))
        B = ins[0].shape[1]
        buf = self._buf(B)
        Yb = self.Yf[:, cols]
        acts, ZL = self.forward(ins, buf, step, step.any_l2)
        AL, loss, correct = self._output(ZL, Yb, buf)
        if step.any_l2:
            loss = loss + step.l2_half * self.sq_norms()
        factor, l2c = step.factors(self, B)
        dZ = xp.subtract(AL, Yb, out=buf["dZL"])
        dZ *= factor  # dZ_L = (AL - Y) factor / B (gd: factor = lr, so the update is p -= grad)
        for l in range(self.L, 1, -1):
            A_prev, W = acts[l - 2], self.W[l]
            xp.matmul(dZ, A_prev.transpose(0, 2, 1), out=self.dW[l])  # (K, n_l, n_{l-1})
            xp.matmul(dZ, buf["ones"], out=self.db[l])  # (K, n_l, 1): sums as a batched gemv, faster than sum
            if l2c is not None:
                self.dW[l] += l2c * W
            dA = buf["G"][l - 1]
            xp.matmul(W.transpose(0, 2, 1), dZ, out=dA)  # (K, n_{l-1}, B)
            if step.dropout:
                dA *= buf["drop"][l - 1]
            self._derivative(xp, dA, buf["H"][l - 1], buf["mask"][l - 1])
            dZ = dA
        xp.matmul(dZ, buf["ones"], out=self.db[1])
        if l2c is not None:
            xp.multiply(self.s, l2c, out=self.ds)  # s's gradient: every entry of flat_g is this step's
        loss_acc += loss.astype(xp.float64)
        if correct is not None:
            correct_acc += correct

    def _output(self, ZL: Array, Yb: Array, buf: dict[str, Any]) -> tuple[Array, Array, Array | None]:
        """_head's (AL, loss sums, right answers); the sigmoid output's same operations into buffers."""
        xp = self.xp
        if self.configs[0].output != "sigmoid":
            return _head(xp, self.configs[0].output, ZL, Yb, 1)
        AL, u, t = buf["out"]
        xp.negative(xp.abs(ZL, out=t), out=t)
        xp.log1p(xp.exp(t, out=t), out=t)  # log(1 + exp(-|Z|))
        xp.maximum(ZL, 0, out=u)
        u -= xp.multiply(ZL, Yb, out=AL)
        u += t  # max(Z, 0) - Z Y + log(1 + exp(-|Z|)): the stable binary cross-entropy
        loss = xp.sum(u, axis=(1, 2))
        xp.exp(xp.negative(ZL, out=AL), out=AL)
        AL += 1.0
        xp.divide(1.0, AL, out=AL)  # 1 / (1 + exp(-Z))
        right = xp.equal(xp.greater(AL, 0.5, out=buf["right"]), Yb > 0.5, out=buf["right"])
        return AL, loss, xp.count_nonzero(right, axis=(1, 2))

    def _update(self, dZ1: Array, cols: slice | Array, l2c: Array | None, step: _EpochConstants) -> None:
        """The optimizer's step. C's gradient is dZ1 in the batch's columns (+ l2c C); s's (l2c s) is in flat_g."""
        xp = self.xp
        self.t += 1
        if step.gd and l2c is None:  # C's gradient is zero outside the batch's columns, s's is zero
            self.C[:, :, cols] -= dZ1
            self.flat -= self.flat_g
            return
        GC = self.GC
        if l2c is None:
            GC[...] = 0
        else:
            xp.multiply(self.C, l2c, out=GC)
        GC[:, :, cols] += dZ1
        if step.gd:
            self.C -= GC
            self.flat -= self.flat_g
            return
        beta, lr_ = step.beta, step.lr
        for p, g, v, b, one_minus_b, lr in (
            (self.C, GC, self.state["v"][0], beta[0], beta[2], lr_[0]),
            (self.flat, self.flat_g, self.state["v"][1], beta[1], beta[3], lr_[1]),
        ):
            v *= b  # v = beta v + (1 - beta) g; p -= lr v, as models/optimizers.py's Momentum
            v += one_minus_b * g
            p -= lr * v

    def sq_norms(self) -> Array:
        """sum_l ||W_l||^2 per trial (K,), layer 1's as <C XX, C> + 2 s <C, P> + s^2 ||B||^2."""
        xp, C, s = self.xp, self.C, self.s[:, 0, 0]
        first = xp.sum(xp.matmul(C, self.XX) * C, axis=(1, 2)) + 2 * s * xp.sum(C * self.P, axis=(1, 2))
        first += s * s * self.BB
        return first + sum(xp.sum(self.W[l] * self.W[l], axis=(1, 2)) for l in range(2, self.L + 1))

    def evaluate(self, val: tuple[Array, Array]) -> tuple[Array, Array | None]:
        """The validation set's (loss sums with the l2 term (K,) float64, right answers), no dropout."""
        assert self.val_inputs is not None, "no validation set"
        buf = self._buf(int(self.val_inputs[0].shape[1]))
        _, ZL = self.forward(self.val_inputs, buf, None, scaled=True)
        _, loss, correct = _head(self.xp, self.configs[0].output, ZL, self.Yv, 1)
        l2 = self._dev(0.5 * self.hyper("l2"), 1)
        return (loss + l2 * self.sq_norms()).astype(self.xp.float64), correct

    # --- one trial's arrays ----------------------------------------------------------------------
    def host_params(self, j: int, kind: str = "") -> dict[str, np.ndarray]:
        """Trial j's parameters (``kind`` "") or optimizer slot (``kind`` "v") as fit's host arrays,
        W1 formed as C X + s B (n_1, n_x)."""
        xp = self.xp
        C, flat = (self.C, self.flat) if not kind else self.state[kind]
        parts, at = {}, 0
        for name, l, shape in self.layout:
            size = math.prod(shape)
            parts[f"{name}{l}"] = flat[j, at : at + size].reshape(shape)
            at += size
        s = parts.pop("s1")
        W1 = xp.matmul(C[j], self.X) + s * self.B[0 if self.B.shape[0] == 1 else j]
        out = {"W1": W1, **parts}  # W1, b1, W2, b2, ...
        prefix = f"{kind}_" if kind else ""
        return {f"{prefix}{key}": np.array(to_host(value)) for key, value in out.items()}
