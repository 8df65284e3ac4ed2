"""Every list of valid names, declared once as a ``Literal`` type; the tuples are read from them.

The tables that implement the names (``ACTIVATIONS``, ``DERIVATIVES``, ``LOSSES``, ``OPTIMIZERS``,
``INITS``) check at import that they hold exactly these names (``check_table``), so a name added
in one place and forgotten in the other fails at once. Import them as ``from dnnq.models import
OptimizerName`` (a pydantic model or a CLI's ``choices=get_args(OptimizerName)``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

__all__ = [
    "HiddenActivationName",
    "OutputName",
    "ActivationName",
    "LossName",
    "OptimizerName",
    "InitName",
    "LrDecayName",
    "DtypeName",
    "DeviceName",
    "HIDDEN_ACTIVATIONS",
    "OUTPUTS",
    "ACTIVATION_NAMES",
    "LOSS_NAMES",
    "OPTIMIZER_NAMES",
    "INIT_NAMES",
    "LR_DECAYS",
    "DTYPES",
    "DEVICES",
    "check_table",
]

HiddenActivationName = Literal["relu", "leaky_relu", "tanh", "sigmoid"]
OutputName = Literal["sigmoid", "softmax", "linear"]  # the output layer's activation; it picks the loss
ActivationName = Literal["sigmoid", "relu", "leaky_relu", "tanh", "softmax", "linear"]  # keys of ACTIVATIONS
LossName = Literal["binary_crossentropy", "categorical_crossentropy", "mse"]
OptimizerName = Literal["gd", "momentum", "rmsprop", "adam"]
InitName = Literal["small", "xavier", "he"]
LrDecayName = Literal["inverse_time", "exponential", "step"]  # TrainConfig.lr_decay may also be None
DtypeName = Literal["float32", "float64"]
DeviceName = Literal["auto", "cpu", "gpu"]

HIDDEN_ACTIVATIONS: tuple[HiddenActivationName, ...] = get_args(HiddenActivationName)
OUTPUTS: tuple[OutputName, ...] = get_args(OutputName)
ACTIVATION_NAMES: tuple[ActivationName, ...] = get_args(ActivationName)
LOSS_NAMES: tuple[LossName, ...] = get_args(LossName)
OPTIMIZER_NAMES: tuple[OptimizerName, ...] = get_args(OptimizerName)
INIT_NAMES: tuple[InitName, ...] = get_args(InitName)
LR_DECAYS: tuple[LrDecayName | None, ...] = (None, *get_args(LrDecayName))
DTYPES: tuple[DtypeName, ...] = get_args(DtypeName)
DEVICES: tuple[DeviceName, ...] = get_args(DeviceName)


def check_table(what: str, names: Iterable[str], table: Iterable[str]) -> None:
    """Raise if ``table``'s keys are not exactly ``names`` (a Literal's values): called at import."""
    names, keys = set(names), set(table)
    if names != keys:
        raise AssertionError(
            f"The {what} table and its Literal type disagree: only in the type {sorted(names - keys)}, "
            f"only in the table {sorted(keys - names)}."
        )


# Every hidden and every output activation is an activation.
check_table("activation", ACTIVATION_NAMES, set(HIDDEN_ACTIVATIONS) | set(OUTPUTS))
