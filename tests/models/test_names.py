"""Every list of valid names is declared once (models/names.py) and matches the table that implements it."""

from typing import get_args

import pytest

from dnnq import models
from dnnq.models import names
from dnnq.models.network import INITS


@pytest.mark.parametrize(
    "alias,table",
    [
        (models.ActivationName, models.ACTIVATIONS),
        (models.ActivationName, models.DERIVATIVES),
        (models.LossName, models.LOSSES),
        (models.LossName, models.LOSS_GRADIENTS),
        (models.OutputName, models.OUTPUT_LOSS),
        (models.OptimizerName, models.OPTIMIZERS),
        (models.InitName, INITS),
    ],
)
def test_each_table_holds_exactly_its_literal_names(alias, table):
    assert sorted(get_args(alias)) == sorted(table)


def test_the_tuples_are_the_literals_values():
    assert models.HIDDEN_ACTIVATIONS == ("relu", "leaky_relu", "tanh", "sigmoid")
    assert models.OUTPUTS == ("sigmoid", "softmax", "linear")
    assert get_args(models.OptimizerName) == models.OPTIMIZER_NAMES
    assert models.LR_DECAYS == (None, "inverse_time", "exponential", "step")
    assert set(models.HIDDEN_ACTIVATIONS) | set(models.OUTPUTS) == set(models.ACTIVATION_NAMES)


def test_check_table_names_what_disagrees():
    with pytest.raises(AssertionError, match=r"only in the type \['b'\], only in the table \['c'\]"):
        names.check_table("demo", ("a", "b"), {"a": 1, "c": 2})


def test_config_rejects_a_name_outside_its_literal():
    with pytest.raises(models.ConfigError, match="'optimizer' parameter must be one of 'gd', 'momentum'"):
        models.TrainConfig(optimizer="sgd")
