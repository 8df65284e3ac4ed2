"""dnnq models: the textbook-exact L-layer network engine (NumPy, CuPy or any array-API array).

Importing this package never imports CuPy (only models.backend does, lazily, when a GPU is asked for).
"""

from .activations import ACTIVATIONS, DERIVATIVES, LEAKY_SLOPE
from .backend import DeviceUnavailable, get_namespace
from .config import ConfigError, TrainConfig
from .gradcheck import gradient_check
from .layers import linear_activation_backward, linear_activation_forward, linear_backward, linear_forward
from .losses import LOSS_GRADIENTS, LOSSES, OUTPUT_LOSS
from .names import (
    ACTIVATION_NAMES,
    DEVICES,
    DTYPES,
    HIDDEN_ACTIVATIONS,
    INIT_NAMES,
    LOSS_NAMES,
    LR_DECAYS,
    OPTIMIZER_NAMES,
    OUTPUTS,
    ActivationName,
    DeviceName,
    DtypeName,
    HiddenActivationName,
    InitName,
    LossName,
    LrDecayName,
    OptimizerName,
    OutputName,
)
from .network import (
    compute_cost,
    initialize_parameters_deep,
    labels_from_output,
    model_backward,
    model_forward,
    predict,
    update_parameters,
)
from .optimizers import GD, OPTIMIZERS, Adam, Momentum, RMSProp
from .training import Checkpoint, EpochRecord, EpochState, FitResult, TrainingDiverged, fit
from .warmup import warm_up

__all__ = [
    # textbook functional API
    "initialize_parameters_deep",
    "linear_forward",
    "linear_activation_forward",
    "model_forward",
    "compute_cost",
    "linear_backward",
    "linear_activation_backward",
    "model_backward",
    "update_parameters",
    "predict",
    "labels_from_output",
    "gradient_check",
    "ACTIVATIONS",
    "DERIVATIVES",
    "LEAKY_SLOPE",
    "LOSSES",
    "LOSS_GRADIENTS",
    "OUTPUT_LOSS",
    "get_namespace",
    # valid names, declared once (models/names.py): Literal types and their values as tuples
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
    # training API (docs/DESIGN.md)
    "TrainConfig",
    "fit",
    "warm_up",
    "FitResult",
    "EpochRecord",
    "EpochState",
    "Checkpoint",
    "OPTIMIZERS",
    "GD",
    "Momentum",
    "RMSProp",
    "Adam",
    # errors
    "ConfigError",
    "TrainingDiverged",
    "DeviceUnavailable",
]
