"""What fit hands back and takes: per-epoch records, checkpoints, the result, and its errors."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "TrainingDiverged",
    "ValidationLossNotFinite",
    "EpochRecord",
    "Checkpoint",
    "EpochState",
    "FitResult",
]


class TrainingDiverged(ArithmeticError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, loss: float, learning_rate: float) -> None:
        super().__init__(
            f"Training diverged at epoch {epoch}: the loss is {loss}. Try a lower learning_rate "
            f"(this epoch used {learning_rate:g}), scale the inputs (e.g. preprocess.scale=1/255 for "
            "pixel values), or add l2 regularisation."
        )
        self.epoch = epoch


class ValidationLossNotFinite(TrainingDiverged):
    """The loss on the validation set became NaN or infinite (the training loss did not)."""

    def __init__(self, epoch: int, loss: float, learning_rate: float) -> None:
        ArithmeticError.__init__(
            self,
            f"The validation loss is {loss} at epoch {epoch} (the training loss is finite): the network's "
            "outputs overflow on the validation set. Check that the validation set is on the training set's "
            "scale (same units, same preprocessing), try a lower learning_rate (this epoch used "
            f"{learning_rate:g}), scale the targets, or train with dtype 'float64'.",
        )
        self.epoch = epoch


@dataclass
class EpochRecord:
    epoch: int  # 1-based number of completed epochs
    loss: float
    accuracy: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "loss": self.loss,
            "accuracy": self.accuracy,
            "val_loss": self.val_loss,
            "val_accuracy": self.val_accuracy,
        }


_HISTORY_FIELDS = ("loss", "accuracy", "val_loss", "val_accuracy")


@dataclass
class Checkpoint:
    """Everything needed to continue a run exactly: parameters, optimizer state, epoch, history.

    The RNG state is (seed, epoch): each epoch's generator is derived from them.
    """

    epoch: int
    parameters: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray]
    history: list[EpochRecord]
    seed: int

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat dict of plain arrays (no objects): np.savez it, np.load(allow_pickle=False) it."""
        out: dict[str, np.ndarray] = {
            "epoch": np.array(self.epoch, dtype=np.int64),
            "seed": np.array(self.seed, dtype=np.int64),
        }
        for k, v in self.parameters.items():
            out[f"param.{k}"] = np.asarray(v)
        for k, v in self.optimizer_state.items():
            out[f"opt.{k}"] = np.asarray(v)
        for name in _HISTORY_FIELDS:  # None is stored as NaN
            out[f"history.{name}"] = np.array(
                [np.nan if getattr(r, name) is None else getattr(r, name) for r in self.history], dtype=np.float64
            )
        return out

    @classmethod
    def from_arrays(cls, d: Mapping[str, Any]) -> Checkpoint:
        """The inverse of to_arrays (``d``: a dict, or the NpzFile of np.load)."""
        try:
            epoch, seed = int(d["epoch"]), int(d["seed"])
            params = {k[len("param.") :]: np.asarray(d[k]) for k in d if k.startswith("param.")}
            opt = {k[len("opt.") :]: np.asarray(d[k]) for k in d if k.startswith("opt.")}
            columns = {name: np.asarray(d[f"history.{name}"]) for name in _HISTORY_FIELDS}
        except KeyError as exc:
            raise ValueError(f"Not a dnnq checkpoint: the array {exc.args[0]!r} is missing.") from None

        def value(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        history = [
            EpochRecord(i + 1, float(columns["loss"][i]), *(value(columns[n][i]) for n in _HISTORY_FIELDS[1:]))
            for i in range(len(columns["loss"]))
        ]
        return cls(epoch=epoch, parameters=params, optimizer_state=opt, history=history, seed=seed)


@dataclass
class EpochState:
    """What on_epoch receives after each completed epoch."""

    epoch: int  # completed epochs, 1-based
    epochs: int
    record: EpochRecord
    elapsed_s: float
    _make_checkpoint: Callable[[], Checkpoint] = field(repr=False)
    device: str = "cpu"  # what trains: "cpu" or "gpu:N"

    def checkpoint(self) -> Checkpoint:
        """A host copy of the current state (made only when called; call it inside on_epoch)."""
        return self._make_checkpoint()


@dataclass
class FitResult:
    parameters: dict[str, np.ndarray]
    history: list[EpochRecord]
    device: str
    timings: dict[str, float]
    stopped: bool
    epochs_completed: int
    # GPU only: "on: N steps replayed from K captures", or "off: why" (models/stepgraph.py);
    # None where steps are never graphed (CPU, dropout, unshuffled mini-batches)
    step_graph: str | None = None
    # GPU only: the device generator of the dropout masks and how many the run made, one per epoch
    # with dropout ("Philox4x3210 (65536 states): 3 made"), "...: 0 made" without; None on the CPU
    device_rng: str | None = None
    # which path trained layer 1: "gram" (models/gram.py, W1 in the span of the examples) or
    # "textbook"; path_reason says why fit chose it
    path: str = "textbook"
    path_reason: str | None = None
