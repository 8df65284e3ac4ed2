"""TrainConfig validation messages, schedules and helpers."""

import math

import pytest

from dnnq.models import ConfigError, TrainConfig


def test_learning_rate_message_and_field():
    with pytest.raises(ConfigError) as info:
        TrainConfig(learning_rate=-0.1)
    assert info.value.field == "learning_rate"
    assert str(info.value) == "The 'learning_rate' parameter must be > 0. Got -0.1 instead."
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("layer_dims", [3], "a list of at least 2 positive integers"),
        ("layer_dims", [3, 0, 1], "a list of at least 2 positive integers"),
        ("hidden_activation", "softmax", "one of 'relu'"),
        ("output", "relu", "one of 'sigmoid', 'softmax', 'linear'"),
        ("init", "zeros", "one of 'small'"),
        ("optimizer", "sgd", "one of 'gd', 'momentum', 'rmsprop', 'adam'"),
        ("beta1", 1.0, "in [0, 1)"),
        ("epochs", 0, "an integer >= 1"),
        ("batch_size", 0, "None (full batch) or an integer >= 1"),
        ("l2", -1.0, ">= 0"),
        ("dropout_keep_prob", 0.0, "in (0, 1]"),
        ("dtype", "float16", "one of 'float32', 'float64'"),
        ("device", "tpu", "one of 'auto', 'cpu', 'gpu'"),
        ("lr_decay", "cosine", "one of None"),
        ("decay_every", 0, "an integer >= 1"),
        ("seed", -1, "an integer in [0, 2**32)"),
    ],
)
def test_each_field_is_checked(field, value, words):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{field: value})
    assert info.value.field == field
    assert str(info.value).startswith(f"The '{field}' parameter must be {words}")
    assert str(info.value).endswith(f"Got {value!r} instead.")


def test_softmax_needs_two_classes():
    with pytest.raises(ConfigError) as info:
        TrainConfig(layer_dims=[4, 1], output="softmax")
    assert info.value.field == "layer_dims" and "number of classes" in str(info.value)


def test_round_trip_and_unknown_keys():
    cfg = TrainConfig(
        layer_dims=[5, 3, 2], output="softmax", optimizer="adam", batch_size=32, lr_decay="step", decay_rate=0.5
    )
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again == cfg
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({**cfg.to_dict(), "learnig_rate": 0.1})
    assert info.value.field == "learnig_rate" and "Unknown" in str(info.value)


def test_parameter_count_of_the_course_network():
    # 12288*20+20 + 20*7+7 + 7*5+5 + 5*1+1, summed by hand
    assert TrainConfig(layer_dims=[12288, 20, 7, 5, 1]).parameter_count() == 245973


def test_learning_rate_schedules():
    c = TrainConfig(learning_rate=0.5, lr_decay="inverse_time", decay_rate=1.0, decay_every=10)
    assert [c.learning_rate_at(e) for e in (0, 9, 10, 25)] == [0.5, 0.5, 0.25, 0.5 / 3]
    c = TrainConfig(learning_rate=0.5, lr_decay="exponential", decay_rate=0.5, decay_every=2)
    assert c.learning_rate_at(1) == pytest.approx(0.5 * math.sqrt(0.5)) and c.learning_rate_at(4) == pytest.approx(
        0.125
    )
    c = TrainConfig(learning_rate=0.5, lr_decay="step", decay_rate=0.1, decay_every=3)
    assert [c.learning_rate_at(e) for e in (0, 2)] == [0.5, 0.5] and c.learning_rate_at(3) == pytest.approx(0.05)
    assert TrainConfig(learning_rate=0.5).learning_rate_at(100) == 0.5


def test_estimate_memory_grows_with_examples_and_covers_the_data():
    cfg = TrainConfig(layer_dims=[784, 256, 128, 10], output="softmax", batch_size=256, optimizer="adam")
    small, large = cfg.estimate_memory_bytes(1000), cfg.estimate_memory_bytes(60000)
    assert large > small >= 1000 * (784 + 10) * 4
    assert large >= 60000 * (784 + 10) * 4 + cfg.parameter_count() * 4 * 3
