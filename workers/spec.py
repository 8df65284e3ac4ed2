"""JobSpec: the body of POST /v1/jobs and the `spec` of a job record.

`to_train_config()` is the one place a spec and its dataset become a models.TrainConfig: the API
calls it at submit time (a 422 before anything is queued) and the worker calls it again.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dnnq.models import (
    ConfigError,
    DeviceName,
    DtypeName,
    HiddenActivationName,
    InitName,
    LrDecayName,
    OptimizerName,
    OutputName,
    TrainConfig,
)
from dnnq.workers.jobs import ID_RE

__all__ = ["JobSpec", "ModelSpec", "PreprocessSpec", "SpecError", "TrainingSpec", "queue_for", "to_train_config"]


class SpecError(ValueError):
    """A spec that does not fit its dataset; `field` is a dotted path like 'model.output'."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class _Strict(BaseModel):
    # allow_inf_nan=False: JSON's NaN, Infinity and overflowing literals (1e999 parses as inf) are a 422
    # naming the field, never a number that poisons the record, the history or a response. strict: a
    # number is a JSON number, not `true` (which trained at learning rate 1.0) or a string ("5"), and a
    # count is an integer (an int is still a float's value).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


_MAX_INT = 2**31 - 1  # counts and periods: far past any real job, so that no number here is unbounded


class ModelSpec(_Strict):
    hidden_layers: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default_factory=lambda: [20, 7, 5], max_length=64, description="Units per hidden layer (0 to 64 layers)."
    )
    hidden_activation: HiddenActivationName = "relu"
    output: OutputName = "sigmoid"


class TrainingSpec(_Strict):
    optimizer: OptimizerName = "adam"
    learning_rate: float = Field(default=0.01, gt=0, le=10)
    beta: float = Field(default=0.9, ge=0, lt=1)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.999, ge=0, lt=1)
    epsilon: float = Field(default=1e-8, gt=0, le=1)
    lr_decay: LrDecayName | None = None
    decay_rate: float = Field(default=0.0, ge=0, le=1e6)
    decay_every: int = Field(default=1, ge=1, le=_MAX_INT)
    epochs: int = Field(default=100, ge=1, le=1_000_000)
    batch_size: int | None = Field(default=None, ge=1, le=_MAX_INT, description="None = full batch.")
    init: InitName = "he"
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    dtype: DtypeName = "float32"
    l2: float = Field(default=0.0, ge=0, le=1e6)
    dropout_keep_prob: float = Field(default=1.0, gt=0, le=1)
    shuffle: bool = True
    checkpoint_every: int | None = Field(
        default=None,
        ge=1,
        le=_MAX_INT,
        description="Epochs between checkpoints; None = the worker's default (DNNQ_CHECKPOINT_EVERY, "
        "else by time: DNNQ_CHECKPOINT_SECONDS).",
    )


class PreprocessSpec(_Strict):
    scale: float | None = Field(
        default=None,
        gt=0,
        le=1e6,
        description="Multiply X by this before the first layer (e.g. 1/255 = 0.00392156862745098 for 0..255 pixels).",
    )

    def apply(self, X: np.ndarray) -> np.ndarray:
        """Raw inputs -> what the network sees: `X * scale` (the one definition; training, the predict
        route and the scoring of the shipped weights all call this)."""
        if self.scale is None:
            return X
        return X * np.asarray(self.scale, dtype=X.dtype)


class JobSpec(_Strict):
    dataset_id: str = Field(pattern=ID_RE.pattern, description="A dataset id from POST /v1/datasets.")
    validation_dataset_id: str | None = Field(default=None, pattern=ID_RE.pattern)
    model: ModelSpec = Field(default_factory=ModelSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    preprocess: PreprocessSpec = Field(default_factory=PreprocessSpec)
    device: DeviceName = "auto"
    wait_for_worker: bool = Field(
        default=False,
        description="Queue the job even when no live worker serves its queue (device 'gpu': the 'gpu' queue, "
        "else 'default'); it waits until one starts. Without it such a submit is a 422 that says which worker "
        "to start.",
    )

    @model_validator(mode="after")
    def _decay_needs_rate(self) -> JobSpec:
        if self.training.lr_decay is not None and self.training.decay_rate <= 0:
            raise ValueError(
                f"training.lr_decay '{self.training.lr_decay}' needs training.decay_rate > 0. "
                f"Got {self.training.decay_rate} instead."
            )
        return self


def queue_for(spec: JobSpec) -> str:
    """The Celery queue a job goes to: 'gpu' only when the client asks for a GPU."""
    return "gpu" if spec.device == "gpu" else "default"


def _output_units(spec: JobSpec, meta: dict[str, Any]) -> int:
    """n_y from the dataset, checking the output layer suits its labels."""
    output, kind, name = spec.model.output, meta["label_kind"], meta.get("name") or meta["id"]
    n_classes = int(meta.get("n_classes") or 0)
    if output == "sigmoid":
        if kind != "binary":
            hint = (
                f"has {n_classes} classes: use output 'softmax'"
                if kind in ("integer", "onehot")
                else "has continuous targets: use output 'linear'"
            )
            if kind == "integer" and n_classes <= 2:
                return 1
            raise SpecError("model.output", f"output 'sigmoid' needs binary labels (0/1); dataset '{name}' {hint}.")
        return 1
    if output == "softmax":
        if kind not in ("binary", "integer", "onehot"):
            raise SpecError(
                "model.output",
                f"output 'softmax' needs class labels (integer or one-hot); dataset '{name}' has continuous "
                "targets: use output 'linear'.",
            )
        if n_classes < 2:
            raise SpecError(
                "model.output", f"output 'softmax' needs at least 2 classes; dataset '{name}' has {n_classes}."
            )
        return n_classes
    return int(meta["n_outputs"])  # linear: any numeric targets, one unit per column


def to_train_config(
    spec: JobSpec, dataset_meta: dict[str, Any], validation_meta: dict[str, Any] | None = None
) -> TrainConfig:
    """Spec + dataset record(s) -> models.TrainConfig. Raises SpecError(field, message)."""
    n_x = int(dataset_meta["n_features"])
    n_y = _output_units(spec, dataset_meta)
    if validation_meta is not None:
        _check_validation(spec, dataset_meta, validation_meta, n_y)

    t = spec.training
    for meta in (dataset_meta, validation_meta):
        if meta is not None:
            _check_range(spec, meta)
    try:
        return TrainConfig(
            layer_dims=[n_x, *spec.model.hidden_layers, n_y],
            hidden_activation=spec.model.hidden_activation,
            output=spec.model.output,
            init=t.init,
            seed=t.seed,
            optimizer=t.optimizer,
            learning_rate=t.learning_rate,
            beta=t.beta,
            beta1=t.beta1,
            beta2=t.beta2,
            epsilon=t.epsilon,
            lr_decay=t.lr_decay,
            decay_rate=t.decay_rate,
            decay_every=t.decay_every,
            epochs=t.epochs,
            batch_size=t.batch_size,
            shuffle=t.shuffle,
            l2=t.l2,
            dropout_keep_prob=t.dropout_keep_prob,
            dtype=t.dtype,
            device=spec.device,
        )
    except ConfigError as exc:
        raise SpecError(_FIELD_OF.get(exc.field, f"training.{exc.field}"), str(exc)) from exc


def _check_validation(spec: JobSpec, train: dict[str, Any], val: dict[str, Any], n_y: int) -> None:
    """The validation set must be scored by the same network: same inputs, labels the output can take."""
    field, vid, output = "validation_dataset_id", val["id"], spec.model.output
    if int(val["n_features"]) != int(train["n_features"]):
        raise SpecError(
            field,
            f"validation dataset '{vid}' has {val['n_features']} features; the training dataset has "
            f"{train['n_features']}. Upload a validation set with the same columns.",
        )
    if output == "linear":
        if int(val["n_outputs"]) != n_y:
            raise SpecError(field, f"validation dataset '{vid}' has {val['n_outputs']} outputs; expected {n_y}.")
        return
    kind, n_classes = val["label_kind"], int(val.get("n_classes") or 0)
    if kind == "continuous":
        raise SpecError(field, f"validation dataset '{vid}' has continuous targets; expected class labels.")
    if output == "sigmoid" and (kind == "onehot" or n_classes > 2):
        raise SpecError(
            field,
            f"validation dataset '{vid}' has {n_classes} classes; the training set is binary (output "
            "'sigmoid'). Upload a validation set with 0/1 labels, or train with output 'softmax'.",
        )
    if output == "softmax" and n_classes > n_y:
        raise SpecError(
            field,
            f"validation dataset '{vid}' has {n_classes} classes; the training set has {n_y}. "
            "Upload a validation set whose labels are among the training set's classes.",
        )
    if output == "softmax" and kind == "onehot" and int(val["n_outputs"]) != n_y:
        raise SpecError(
            field,
            f"validation dataset '{vid}' has one-hot labels {val['n_outputs']} wide; the output layer has "
            f"{n_y} units. Upload a validation set with {n_y} one-hot columns (or integer labels).",
        )
    train_classes, val_classes = train.get("classes") or [], val.get("classes") or []
    named = any(isinstance(c, str) for c in train_classes) and any(isinstance(c, str) for c in val_classes)
    if named and list(val_classes) != list(train_classes)[: len(val_classes)]:
        # a CSV's class names are stored as indices into its own sorted list: both lists must agree
        raise SpecError(
            field,
            f"validation dataset '{vid}' has classes {_short(val_classes)}; the training set has "
            f"{_short(train_classes)}, so its label indices would mean other classes. Upload a validation set "
            "with the training set's class names in the same order.",
        )


def _check_range(spec: JobSpec, meta: dict[str, Any]) -> None:
    """The job's dtype must hold the dataset's values as the network sees them (X after preprocess.scale;
    Y where it is cast): a float32 job on values past 3.4e38 would otherwise reach fit as infinities.
    Records stored before x_abs_max was kept skip this (fit's own finiteness check still stops them)."""
    dtype = spec.training.dtype
    largest = float(np.finfo(dtype).max)
    scale = spec.preprocess.scale or 1.0
    x_max, y_max = meta.get("x_abs_max"), meta.get("y_abs_max")
    fixes = "set training.dtype to 'float64'" if dtype != "float64" else "rescale the data before uploading it"
    if x_max is not None and float(x_max) * scale > largest:
        scaled = f" x preprocess.scale {scale:.6g}" if spec.preprocess.scale is not None else ""
        raise SpecError(
            "training.dtype",
            f"dataset '{meta['id']}' has inputs up to {float(x_max):.6g}{scaled}, past {dtype}'s largest value "
            f"({largest:.6g}): {fixes}, or use a smaller preprocess.scale.",
        )
    cast_y = spec.model.output != "softmax" or meta.get("label_kind") == "onehot"
    if cast_y and y_max is not None and float(y_max) > largest:
        raise SpecError(
            "training.dtype",
            f"dataset '{meta['id']}' has targets up to {float(y_max):.6g}, past {dtype}'s largest value "
            f"({largest:.6g}): {fixes}.",
        )


def _short(classes: list[Any], keep: int = 10) -> str:
    return str(list(classes[:keep]))[:-1] + (", ...]" if len(classes) > keep else "]")


# TrainConfig field -> spec field, for the few that are not training.<same name>.
_FIELD_OF = {
    "layer_dims": "model.hidden_layers",
    "hidden_activation": "model.hidden_activation",
    "output": "model.output",
    "device": "device",
}
