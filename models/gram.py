"""The Gram path: layer 1 trained in the span of the examples, for inputs wider than the data set.

With gd or momentum (plain or decaying learning rate, with or without l2) every layer-1 update is a
linear combination of the gradients dW1 = dZ1^T X_b (rows of the training set X, (m, n_x), examples
first) and of W1 itself (the l2 term), so W1 and momentum's v_W1 stay in

    span{B_1 .. B_k} + {C X : C (n_1, m)}

where the B_j (n_1, n_x) are where training started: W1's initial value, and on resuming with
momentum also the checkpoint's v_W1. Writing R = [X; B_1; ...; B_k] ((p, n_x), p = m + k n_1),
every such matrix is W_eff R for a W_eff of shape (n_1, p), and

    Z1 (of any set D) = D W1^T = (D R^T) W_eff^T.

So layer 1 is an ordinary linear layer with input U = D R^T (p features) and weight W_eff, except
that its gradient is taken in coefficient space: dW_eff = [dZ1^T scattered to the batch's example
columns | 0] (+ the l2 term c W_eff, as for any weight). Adam and RMSprop divide by a per-entry
norm (not linear in the gradients), so they stay on the textbook path. Dropout acts on hidden
layers only (models/engine.py), so A0 is always rows of X and the argument holds with it.

Cost per example and step: n_1 p instead of n_1 n_x for the forward product, none for dW1; once
per fit: R R^T (the Gram matrix, p^2 n_x), and forming W1 = W_eff R (n_1 p n_x) whenever it is
read (checkpoints, the result). ``||W1||^2 = sum((W_eff M) * W_eff)`` with M = R R^T.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .backend import Array, concat, matmul_transposed_into, scatter_columns
from .config import TrainConfig

__all__ = ["FitPath", "FIT_PATHS", "GramPlan", "GramLayer", "SharedGram", "plan"]

FitPath = Literal["auto", "textbook", "gram"]
FIT_PATHS: tuple[FitPath, ...] = ("auto", "textbook", "gram")

_LINEAR_OPTIMIZERS = ("gd", "momentum")  # updates that are linear combinations of gradients and parameters
# the Gram path is taken on "auto" when its layer-1 work is at most this fraction of the textbook's:
# the remaining work (small products, scatters, Python per step) must not eat the gain
_AUTO_MAX_COST_RATIO = 0.5


@dataclass(frozen=True)
class GramPlan:
    """Whether fit takes the Gram path, and why (``reason`` goes into error messages and tests)."""

    use: bool
    reason: str
    bases: int = 1  # k: how many starting matrices B_j


def bases_needed(cfg: TrainConfig, resuming: bool) -> int:
    """k: W1's start, and momentum's v_W1 when it comes from a checkpoint (a fresh v is zero)."""
    return 2 if resuming and cfg.optimizer == "momentum" else 1


def layer1_flops(cfg: TrainConfig, m: int, m_val: int, k: int, epochs: int | None = None) -> tuple[float, float]:
    """(textbook, Gram) multiply-adds spent on layer 1 over ``epochs`` (default: a whole fit), products only."""
    n_x, n_1 = cfg.layer_dims[0], cfg.layer_dims[1]
    epochs = cfg.epochs if epochs is None else epochs
    p = m + k * n_1
    batch = m if cfg.batch_size is None else min(cfg.batch_size, m)
    steps = epochs * -(-m // batch)
    textbook = epochs * (2 * m * n_x * n_1 + m_val * n_x * n_1) + steps * n_1 * n_x  # fwd, dW1, val; update
    gram = p * p * n_x + m_val * p * n_x + 2 * n_1 * p * n_x  # R R^T, D_val R^T, W1 formed (result + one read)
    gram += epochs * (m * p * n_1 + m_val * p * n_1) + steps * n_1 * p * (3 + (p if cfg.l2 else 0))
    return float(textbook), float(gram)


def memory_bytes(cfg: TrainConfig, m: int, m_val: int, k: int) -> int:
    """What the Gram path holds beyond X: R R^T, the validation set's U, the bases and R."""
    n_x, n_1 = cfg.layer_dims[0], cfg.layer_dims[1]
    p = m + k * n_1
    item = 4 if cfg.dtype == "float32" else 8
    return (p * p + m_val * p + k * n_1 * n_x + p * n_x) * item


def plan(
    cfg: TrainConfig, m: int, m_val: int, path: FitPath, resuming: bool, epochs_left: int | None = None
) -> GramPlan:
    """The path fit takes: ``"textbook"`` never takes the Gram path, ``"gram"`` takes it whenever it
    is exact in exact arithmetic (else ValueError), ``"auto"`` when it is also cheaper and its
    extra memory stays within the config's own estimate (what the service sized the job by)."""
    if path not in FIT_PATHS:
        raise ValueError(
            f"The 'path' parameter must be one of {', '.join(map(repr, FIT_PATHS))}. Got {path!r} instead."
        )
    k = bases_needed(cfg, resuming)
    if path == "textbook":
        return GramPlan(False, "the textbook path was asked for", k)
    if cfg.optimizer not in _LINEAR_OPTIMIZERS:
        why = f"optimizer={cfg.optimizer!r} is not a linear combination of gradients (gd and momentum are)"
    elif len(cfg.layer_dims) < 2:
        why = "there is no layer 1"
    else:
        why = ""
    if why:
        if path == "gram":
            raise ValueError(f"The Gram path cannot train this config: {why}.")
        return GramPlan(False, why, k)
    if path == "gram":
        return GramPlan(True, "the Gram path was asked for", k)
    textbook, gram = layer1_flops(cfg, m, m_val, k, epochs_left)
    if gram > _AUTO_MAX_COST_RATIO * textbook:
        return GramPlan(False, f"not cheaper: {gram:.3g} against {textbook:.3g} multiply-adds on layer 1", k)
    need, budget = memory_bytes(cfg, m, m_val, k), cfg.estimate_memory_bytes(m + m_val)
    if need > budget:
        return GramPlan(False, f"the Gram matrices need {need} bytes, over the job's estimate of {budget}", k)
    return GramPlan(True, f"{textbook / gram:.0f}x fewer multiply-adds on layer 1", k)


class SharedGram:
    """The products of the data alone (X X^T, X D_val^T) kept across the fits of one sweep pack.

    The trials of a pack train on the same X and differ only in their bases B_j, so R R^T's X X^T
    block (the p^2 n_x part of the Gram path's setup) is the same for all of them: the first fit
    computes it with the same call a solo fit makes, the others reuse it. A block is reused only
    for host inputs equal to the ones it was made from (the same memory, else compared entry by
    entry), on the same array module, so a fit given the wrong data computes its own."""

    def __init__(self) -> None:
        self._blocks: dict[str, tuple[Any, tuple[np.ndarray, ...], Array]] = {}
        self.hits = 0  # blocks reused rather than computed (tests, timings)

    @staticmethod
    def _same(a: np.ndarray, b: np.ndarray) -> bool:
        if a is b:
            return True
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.ctypes.data == b.ctypes.data and a.strides == b.strides:
            return True
        return bool(np.array_equal(a, b))

    def block(self, xp: Any, name: str, hosts: tuple[np.ndarray, ...], make: Any) -> Array:
        """The block ``name`` of the host arrays ``hosts``: kept from an earlier fit, else ``make()``."""
        held = self._blocks.get(name)
        if (
            held is not None
            and held[0] is xp
            and len(held[1]) == len(hosts)
            and all(self._same(a, b) for a, b in zip(held[1], hosts, strict=True))
        ):
            self.hits += 1
            return held[2]
        value = make()
        self._blocks[name] = (xp, hosts, value)
        return value

    def clear(self) -> None:
        self._blocks.clear()


class GramLayer:
    """Layer 1 in coefficient space for one fit: R's Gram matrix, and W1 formed from W_eff on request.

    ``X`` is the training set on the device, examples first (m, n_x); ``bases`` the B_j (n_1, n_x).
    ``XX``: X X^T when already known (a sweep pack's SharedGram), else computed here.
    """

    def __init__(self, xp: Any, X: Array, bases: list[Array], XX: Array | None = None) -> None:
        self.xp = xp
        self.m = int(X.shape[0])
        self.n_1 = int(bases[0].shape[0])
        self.k = len(bases)
        self.X = X  # (m, n_x)
        self.B = concat(xp, bases, axis=0) if self.k > 1 else bases[0]  # (k n_1, n_x)
        if XX is None:
            XX = xp.matmul(X, X.T)  # (m, m): the Gram matrix
        XB = xp.matmul(X, self.B.T)  # (m, k n_1)
        BB = xp.matmul(self.B, self.B.T)  # (k n_1, k n_1)
        self.M = concat(xp, [concat(xp, [XX, XB], axis=1), concat(xp, [XB.T, BB], axis=1)], axis=0)  # (p, p) = R R^T
        self.U = self.M[: self.m]  # (m, p): the training set's layer-1 inputs X R^T
        self.UT = self.M[:, : self.m]  # (p, m): the same, transposed (M is symmetric: X X^T and B B^T are)

    @property
    def p(self) -> int:
        return self.m + self.k * self.n_1

    def inputs_transposed(self, D: Array, XD: Array | None = None) -> Array:
        """U^T = R D^T (p, m_D): another set's layer-1 inputs (validation), transposed; ``XD``:
        its X D^T block when already known (a sweep pack's SharedGram)."""
        xp = self.xp
        if XD is None:
            XD = xp.matmul(self.X, D.T)  # (m, m_D)
        return concat(xp, [XD, xp.matmul(self.B, D.T)], axis=0)

    def product(self, W_eff: Array, UT: Array, rows: slice | Array, Z: Array) -> None:
        """Z1 = U[rows] W_eff^T into Z (B, n_1), from the transposed inputs UT (p, m) of the set.

        Taken as Z^T = W_eff UT[:, rows]: OpenBLAS threads a (B, p) x (p, n_1) product with few
        columns badly on busy cores, and this orientation well (docs/perf.md, "Gram path")."""
        xp = self.xp
        cols = UT[:, rows] if isinstance(rows, slice) else xp.take(UT, rows, axis=1)  # (p, B)
        matmul_transposed_into(xp, W_eff, cols, Z)

    def start(self, j: int, dtype: Any) -> Array:
        """The W_eff of B_j: [0 | ... | I (block j) | ...] (n_1, p)."""
        xp, n_1 = self.xp, self.n_1
        W = xp.zeros((n_1, self.p), dtype=dtype)
        s = self.m + j * n_1
        W[:, s : s + n_1] = xp.eye(n_1, dtype=dtype)
        return W

    def form(self, W_eff: Array) -> Array:
        """The textbook matrix W_eff R (n_1, n_x)."""
        xp, m = self.xp, self.m
        return xp.matmul(W_eff[:, :m], self.X) + xp.matmul(W_eff[:, m:], self.B)

    def sq_norm(self, W_eff: Array) -> Array:
        """||W_eff R||_F^2 = sum((W_eff M) * W_eff), a 0-d array."""
        xp = self.xp
        return xp.sum(xp.matmul(W_eff, self.M) * W_eff)

    def grad(self, dW_eff: Array, dZ: Array, rows: slice | Array) -> None:
        """dW_eff = dZ1^T placed in the columns of the batch's examples, zero elsewhere (dZ (B, n_1)
        already carries the 1/B and any folded learning rate; the caller adds the l2 term)."""
        dW_eff[...] = 0
        if isinstance(rows, slice):
            dW_eff[:, rows] = dZ.T
        else:
            scatter_columns(self.xp, dW_eff, rows, dZ.T)


def host_bases(parameters: dict[str, np.ndarray], optimizer_state: dict[str, np.ndarray], k: int) -> list[np.ndarray]:
    """The B_j from a checkpoint's host arrays: W1, then momentum's v_W1 when k == 2."""
    return [parameters["W1"]] + ([optimizer_state["v_W1"]] if k == 2 else [])
