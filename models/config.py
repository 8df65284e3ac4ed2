"""TrainConfig: every training choice, validated once in __post_init__.

Learning-rate schedules (``epoch`` is the 0-based index of the epoch being run, lr0 =
``learning_rate``, r = ``decay_rate``, k = ``decay_every``):

- None:            lr = lr0
- "inverse_time":  lr = lr0 / (1 + r * floor(epoch / k))      (the course's schedule_lr_decay)
- "exponential":   lr = lr0 * r ** (epoch / k)                 (0 < r <= 1)
- "step":          lr = lr0 * r ** floor(epoch / k)            (0 < r <= 1)

The loss follows the output: sigmoid -> binary cross-entropy, softmax -> categorical
cross-entropy, linear -> mean squared error (1/(2m) sum (AL - Y)^2).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from .losses import OUTPUT_LOSS
from .names import (
    DEVICES,
    DTYPES,
    HIDDEN_ACTIVATIONS,
    INIT_NAMES,
    LR_DECAYS,
    OPTIMIZER_NAMES,
    OUTPUTS,
    DeviceName,
    DtypeName,
    HiddenActivationName,
    InitName,
    LossName,
    LrDecayName,
    OptimizerName,
    OutputName,
)
from .optimizers import OPTIMIZERS

__all__ = [
    "TrainConfig",
    "ConfigError",
    "EVAL_BUDGET_BYTES",
    "chunk_rows",
    "scoring_row_bytes",
    "validation_row_bytes",
]

# The working memory one chunk of a scoring pass (workers/inputs.py) or of fit's validation pass may take.
# Both size their chunks from it (chunk_rows), so estimate_memory_bytes can count it: a chunk of a fixed
# row count would grow with the layers' width, past anything the submit-time check compared. 64 MiB keeps
# fit's 8,192-row validation chunks for layers up to ~1,000 units wide in float32 (~500 in float64).
EVAL_BUDGET_BYTES = 64 * 2**20


def scoring_row_bytes(layer_dims: list[int], item: int) -> int:
    """Bytes one example takes while the trained weights score it (models.predict on float64 rows, weights
    of ``item`` bytes): its float64 copy, scaled copy and cast to the weights' dtype; every layer's Z and A
    (predict's caches keep them all); the widest layer's temporaries (W A before + b, relu's mask and
    zeros); the output's temporaries and labels."""
    d = layer_dims
    inputs = d[0] * (8 + 8 + item)
    layers = 2 * sum(d[1:]) * item + max(d[1:]) * (2 * item + 1)
    return inputs + layers + d[-1] * (2 * item + 16) + 8


def validation_row_bytes(layer_dims: list[int], item: int) -> int:
    """Bytes one example takes in fit's validation pass (models/engine.py, training=False): every layer's
    buffer, the hidden layers' zeros, the output's buffers and temporaries (the set itself is data)."""
    d = layer_dims
    return item * (sum(d[1:]) + sum(d[1:-1]) + 8 * d[-1] + 3) + 3 * d[-1] + 16


def chunk_rows(row_bytes: int, most: int, budget: int | None = None) -> int:
    """Rows per chunk: as many as keep the chunk within ``budget`` (EVAL_BUDGET_BYTES, read at the call
    so a test can lower it) at ``row_bytes`` each, at most ``most``, at least one."""
    budget = EVAL_BUDGET_BYTES if budget is None else budget
    return max(1, min(most, budget // max(1, row_bytes)))


class ConfigError(ValueError):
    """A TrainConfig field has an invalid value; ``.field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


@dataclass
class TrainConfig:
    layer_dims: list[int] = field(default_factory=lambda: [2, 4, 1])
    hidden_activation: HiddenActivationName = "relu"
    output: OutputName = "sigmoid"
    init: InitName = "he"
    seed: int = 1
    optimizer: OptimizerName = "gd"
    learning_rate: float = 0.0075
    beta: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8
    lr_decay: LrDecayName | None = None
    decay_rate: float = 0.0
    decay_every: int = 1
    epochs: int = 100
    batch_size: int | None = None
    shuffle: bool = True
    l2: float = 0.0
    dropout_keep_prob: float = 1.0
    dtype: DtypeName = "float32"
    device: DeviceName = "auto"

    def __post_init__(self) -> None:
        def fail(name: str, requirement: str) -> None:
            value = getattr(self, name)
            raise ConfigError(name, f"The '{name}' parameter must be {requirement}. Got {value!r} instead.")

        def one_of(name: str, options: tuple[Any, ...]) -> None:
            if getattr(self, name) not in options:
                fail(name, "one of " + ", ".join(repr(o) for o in options))

        dims = self.layer_dims
        if not isinstance(dims, (list, tuple)) or len(dims) < 2 or not all(_is_int(n) and n > 0 for n in dims):
            fail("layer_dims", "a list of at least 2 positive integers (input size, ..., output size)")
        self.layer_dims = [int(n) for n in dims]
        one_of("hidden_activation", HIDDEN_ACTIVATIONS)
        one_of("output", OUTPUTS)
        if self.output == "softmax" and self.layer_dims[-1] < 2:
            raise ConfigError(
                "layer_dims",
                f"The 'layer_dims' parameter must end with the number of classes (>= 2) for output='softmax'. "
                f"Got {self.layer_dims!r} instead.",
            )
        one_of("init", INIT_NAMES)
        if not _is_int(self.seed) or not 0 <= self.seed < 2**32:
            fail("seed", "an integer in [0, 2**32)")
        one_of("optimizer", OPTIMIZER_NAMES)
        for name in ("learning_rate", "epsilon"):
            v = getattr(self, name)
            if not _is_real(v) or not math.isfinite(v) or v <= 0:
                fail(name, "> 0")
        for name in ("beta", "beta1", "beta2"):
            v = getattr(self, name)
            if not _is_real(v) or not 0 <= v < 1:
                fail(name, "in [0, 1)")
        one_of("lr_decay", LR_DECAYS)
        r = self.decay_rate
        if not _is_real(r) or not math.isfinite(r) or r < 0:
            fail("decay_rate", ">= 0")
        if self.lr_decay in ("exponential", "step") and not 0 < r <= 1:
            fail("decay_rate", f"in (0, 1] for lr_decay={self.lr_decay!r}")
        if not _is_int(self.decay_every) or self.decay_every < 1:
            fail("decay_every", "an integer >= 1")
        if not _is_int(self.epochs) or self.epochs < 1:
            fail("epochs", "an integer >= 1")
        if self.batch_size is not None and (not _is_int(self.batch_size) or self.batch_size < 1):
            fail("batch_size", "None (full batch) or an integer >= 1")
        if not isinstance(self.shuffle, bool):
            fail("shuffle", "True or False")
        if not _is_real(self.l2) or not math.isfinite(self.l2) or self.l2 < 0:
            fail("l2", ">= 0")
        p = self.dropout_keep_prob
        if not _is_real(p) or not 0 < p <= 1:
            fail("dropout_keep_prob", "in (0, 1] (1 = no dropout)")
        one_of("dtype", DTYPES)
        one_of("device", DEVICES)

    # ------------------------------------------------------------------------------------------
    @property
    def loss(self) -> LossName:
        return OUTPUT_LOSS[self.output]

    def learning_rate_at(self, epoch: int) -> float:
        """The learning rate of the 0-based ``epoch`` (see the module docstring)."""
        lr0, r, k = self.learning_rate, self.decay_rate, self.decay_every
        if self.lr_decay == "inverse_time":
            return lr0 / (1.0 + r * (epoch // k))
        if self.lr_decay == "exponential":
            return lr0 * r ** (epoch / k)
        if self.lr_decay == "step":
            return lr0 * r ** (epoch // k)
        return lr0

    def parameter_count(self) -> int:
        d = self.layer_dims
        return sum(d[l] * d[l - 1] + d[l] for l in range(1, len(d)))

    def estimate_memory_bytes(self, n_examples: int, n_val: int = 0) -> int:
        """A rough upper estimate of a job's working memory for ``n_examples`` training and ``n_val``
        validation examples.

        Data (one compute-dtype copy of each set's X and Y), parameters x (1 + gradients + scratch +
        optimizer slots), and the larger of two phases' buffers: fit's per-layer activation buffers for
        one batch (Z/A, dA, dropout masks) with its validation chunk's beside them, and after fit the
        scoring of the trained weights on each set (none for linear). Those chunks are sized from
        EVAL_BUDGET_BYTES (chunk_rows), so they hold no more rows than counted here whatever the width.
        """
        item = 4 if self.dtype == "float32" else 8
        slots = len(OPTIMIZERS[self.optimizer].slots)
        d = self.layer_dims
        batch = n_examples if self.batch_size is None else min(self.batch_size, n_examples)
        data = (n_examples + n_val) * (d[0] + d[-1]) * item
        params = self.parameter_count() * (3 + slots) * item
        activations = batch * (d[0] + d[-1] + 4 * sum(d[1:])) * item
        validation = _chunk_bytes(n_val, validation_row_bytes(d, item))
        scoring = 0
        if self.output != "linear":  # regression is not scored (workers/inputs.py)
            scoring = _chunk_bytes(max(n_examples, n_val), scoring_row_bytes(d, item))
        return int(data + params + max(activations + validation, scoring))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(unknown[0], f"Unknown TrainConfig parameter(s) {unknown}. Known: {sorted(known)}.")
        return cls(**d)


def _chunk_bytes(n_rows: int, row_bytes: int) -> int:
    """The most one chunk of a pass over ``n_rows`` rows takes (chunk_rows's rows, none for no rows)."""
    return chunk_rows(row_bytes, n_rows) * row_bytes if n_rows > 0 else 0
