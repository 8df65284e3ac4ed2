"""JobSpec validation and the one spec -> TrainConfig mapping."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dnnq.workers.spec import JobSpec, SpecError, queue_for, to_train_config

DS = "ab" * 12


def meta(kind="binary", n_features=4, n_outputs=1, n_classes=2, name="toy", id=DS):
    return {
        "id": id,
        "name": name,
        "label_kind": kind,
        "n_features": n_features,
        "n_outputs": n_outputs,
        "n_classes": n_classes,
    }


def test_defaults():
    spec = JobSpec(dataset_id=DS)
    assert spec.model.output == "sigmoid" and spec.model.hidden_activation == "relu"
    t = spec.training
    assert (t.optimizer, t.learning_rate, t.epochs, t.init, t.seed, t.dtype) == ("adam", 0.01, 100, "he", 0, "float32")
    assert spec.device == "auto"


def test_maps_every_field():
    spec = JobSpec.model_validate(
        {
            "dataset_id": DS,
            "model": {"hidden_layers": [20, 7, 5], "hidden_activation": "tanh", "output": "sigmoid"},
            "training": {
                "optimizer": "momentum",
                "learning_rate": 0.05,
                "beta": 0.8,
                "beta1": 0.85,
                "beta2": 0.99,
                "epsilon": 1e-7,
                "lr_decay": "inverse_time",
                "decay_rate": 0.5,
                "decay_every": 3,
                "epochs": 7,
                "batch_size": 32,
                "init": "xavier",
                "seed": 11,
                "dtype": "float64",
                "l2": 0.1,
                "dropout_keep_prob": 0.8,
                "shuffle": False,
            },
            "device": "cpu",
        }
    )
    cfg = to_train_config(spec, meta(n_features=12))
    assert cfg.layer_dims == [12, 20, 7, 5, 1]
    assert (cfg.hidden_activation, cfg.output, cfg.optimizer, cfg.init) == ("tanh", "sigmoid", "momentum", "xavier")
    assert (cfg.learning_rate, cfg.beta, cfg.beta1, cfg.beta2, cfg.epsilon) == (0.05, 0.8, 0.85, 0.99, 1e-7)
    assert (cfg.lr_decay, cfg.decay_rate, cfg.decay_every) == ("inverse_time", 0.5, 3)
    assert (cfg.epochs, cfg.batch_size, cfg.seed, cfg.dtype, cfg.shuffle) == (7, 32, 11, "float64", False)
    assert (cfg.l2, cfg.dropout_keep_prob, cfg.device) == (0.1, 0.8, "cpu")


@pytest.mark.parametrize(
    "kind, n_outputs, n_classes, n_y",
    [("integer", 1, 5, 5), ("onehot", 3, 3, 3), ("binary", 1, 2, 2)],
)
def test_softmax_output_size_from_classes(kind, n_outputs, n_classes, n_y):
    spec = JobSpec(dataset_id=DS, model={"hidden_layers": [8], "output": "softmax"})
    assert to_train_config(spec, meta(kind, n_outputs=n_outputs, n_classes=n_classes)).layer_dims == [4, 8, n_y]


def test_linear_output_size_from_columns():
    spec = JobSpec(dataset_id=DS, model={"hidden_layers": [], "output": "linear"})
    assert to_train_config(spec, meta("continuous", n_outputs=3, n_classes=0)).layer_dims == [4, 3]


def test_sigmoid_on_multiclass_says_use_softmax():
    spec = JobSpec(dataset_id=DS)
    with pytest.raises(SpecError) as info:
        to_train_config(spec, meta("integer", n_classes=3, name="iris"))
    assert info.value.field == "model.output"
    assert str(info.value) == (
        "output 'sigmoid' needs binary labels (0/1); dataset 'iris' has 3 classes: use output 'softmax'."
    )


def test_sigmoid_on_continuous_says_use_linear():
    with pytest.raises(SpecError, match="continuous targets: use output 'linear'") as info:
        to_train_config(JobSpec(dataset_id=DS), meta("continuous", n_classes=0))
    assert info.value.field == "model.output"


def test_softmax_on_continuous_refused():
    spec = JobSpec(dataset_id=DS, model={"output": "softmax"})
    with pytest.raises(SpecError, match="output 'softmax' needs class labels"):
        to_train_config(spec, meta("continuous", n_classes=0))


def test_config_error_keeps_field_name():
    spec = JobSpec(dataset_id=DS, training={"lr_decay": "exponential", "decay_rate": 2.0})
    with pytest.raises(SpecError) as info:
        to_train_config(spec, meta())
    assert info.value.field == "training.decay_rate"
    assert "The 'decay_rate' parameter must be in (0, 1]" in str(info.value)


def test_validation_set_must_match_features():
    spec = JobSpec(dataset_id=DS, validation_dataset_id="cd" * 12)
    with pytest.raises(SpecError, match="has 5 features; the training dataset has 4") as info:
        to_train_config(spec, meta(), meta(n_features=5, id="cd" * 12))
    assert info.value.field == "validation_dataset_id"


@pytest.mark.parametrize(
    "body, loc",
    [
        ({"dataset_id": "nothex"}, ("dataset_id",)),
        ({"dataset_id": DS, "model": {"hidden_layers": [0]}}, ("model", "hidden_layers", 0)),
        ({"dataset_id": DS, "model": {"hidden_layers": [70000]}}, ("model", "hidden_layers", 0)),
        ({"dataset_id": DS, "model": {"hidden_layers": [1] * 65}}, ("model", "hidden_layers")),
        ({"dataset_id": DS, "model": {"output": "relu"}}, ("model", "output")),
        ({"dataset_id": DS, "training": {"learning_rate": -0.1}}, ("training", "learning_rate")),
        ({"dataset_id": DS, "training": {"epochs": 0}}, ("training", "epochs")),
        ({"dataset_id": DS, "training": {"optimizer": "sgd"}}, ("training", "optimizer")),
        ({"dataset_id": DS, "training": {"dropout_keep_prob": 0}}, ("training", "dropout_keep_prob")),
        ({"dataset_id": DS, "device": "tpu"}, ("device",)),
        ({"dataset_id": DS, "surprise": 1}, ("surprise",)),
        ({"dataset_id": DS, "training": {"lr": 0.1}}, ("training", "lr")),
    ],
)
def test_bad_specs_name_the_field(body, loc):
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(body)
    assert info.value.errors()[0]["loc"] == loc


def test_decay_without_rate_refused():
    with pytest.raises(ValidationError, match="needs training.decay_rate > 0"):
        JobSpec.model_validate({"dataset_id": DS, "training": {"lr_decay": "step"}})


def test_queue_for():
    assert queue_for(JobSpec(dataset_id=DS, device="gpu")) == "gpu"
    assert queue_for(JobSpec(dataset_id=DS, device="auto")) == "default"
    assert queue_for(JobSpec(dataset_id=DS, device="cpu")) == "default"


def test_spec_round_trips_through_json():
    spec = JobSpec(dataset_id=DS, training={"batch_size": 16})
    assert JobSpec.model_validate_json(spec.model_dump_json()) == spec


@pytest.mark.parametrize(
    "section, name",
    [
        ("preprocess", "scale"),
        ("training", "learning_rate"),
        ("training", "beta"),
        ("training", "beta1"),
        ("training", "beta2"),
        ("training", "epsilon"),
        ("training", "decay_rate"),
        ("training", "l2"),
        ("training", "dropout_keep_prob"),
    ],
)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_every_float_is_finite(section, name, value):
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate({"dataset_id": DS, section: {name: value}})
    error = info.value.errors()[0]
    assert (error["loc"], error["type"]) == ((section, name), "finite_number")


@pytest.mark.parametrize(
    "section, name, too_big",
    [
        ("preprocess", "scale", 1e6 * 1.0001),
        ("training", "learning_rate", 10.5),
        ("training", "l2", 2e6),
        ("training", "decay_rate", 2e6),
        ("training", "epsilon", 2.0),
        ("training", "batch_size", 2**31),
        ("training", "decay_every", 2**31),
        ("training", "checkpoint_every", 2**31),
    ],
)
def test_every_number_is_bounded(section, name, too_big):
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate({"dataset_id": DS, section: {name: too_big}})
    assert info.value.errors()[0]["loc"] == (section, name)


def test_wait_for_worker_defaults_off():
    assert JobSpec(dataset_id=DS).wait_for_worker is False
    assert JobSpec(dataset_id=DS, wait_for_worker=True).model_dump()["wait_for_worker"] is True


VAL = "cd" * 12


@pytest.mark.parametrize(
    "output, train, val, fragment",
    [
        ("sigmoid", meta(), meta("integer", n_classes=3, id=VAL), "has 3 classes; the training set is binary"),
        ("sigmoid", meta(), meta("onehot", n_outputs=2, n_classes=2, id=VAL), "the training set is binary"),
        (
            "softmax",
            meta("integer", n_classes=3),
            meta("integer", n_classes=4, id=VAL),
            "has 4 classes; the training set has 3",
        ),
        (
            "softmax",
            meta("integer", n_classes=3),
            meta("onehot", n_outputs=2, n_classes=2, id=VAL),
            "one-hot labels 2 wide; the output layer has 3 units",
        ),
        (
            "softmax",
            meta("onehot", n_outputs=3, n_classes=3),
            meta("onehot", n_outputs=4, n_classes=4, id=VAL),
            "has 4 classes; the training set has 3",
        ),
        (
            "softmax",
            {**meta("integer", n_classes=3), "classes": ["cat", "dog", "fish"]},
            {**meta("integer", n_classes=2, id=VAL), "classes": ["cat", "fish"]},
            "its label indices would mean other classes",
        ),
        (
            "linear",
            meta("continuous", n_outputs=2, n_classes=0),
            meta("continuous", n_outputs=3, n_classes=0, id=VAL),
            "has 3 outputs; expected 2",
        ),
        ("softmax", meta("integer", n_classes=3), meta("continuous", n_classes=0, id=VAL), "continuous targets"),
    ],
)
def test_validation_labels_must_fit_the_output(output, train, val, fragment):
    spec = JobSpec(dataset_id=DS, validation_dataset_id=VAL, model={"output": output})
    with pytest.raises(SpecError, match=fragment) as info:
        to_train_config(spec, train, val)
    assert info.value.field == "validation_dataset_id" and VAL in info.value.message


@pytest.mark.parametrize(
    "output, train, val",
    [
        ("sigmoid", meta(), meta(id=VAL)),
        ("sigmoid", meta("integer", n_classes=2), meta("binary", id=VAL)),
        ("softmax", meta("integer", n_classes=3), meta("binary", n_classes=2, id=VAL)),  # a subset of the classes
        ("softmax", meta("integer", n_classes=3), meta("onehot", n_outputs=3, n_classes=3, id=VAL)),
        (
            "softmax",
            {**meta("integer", n_classes=3), "classes": ["cat", "dog", "fish"]},
            {**meta("integer", n_classes=2, id=VAL), "classes": ["cat", "dog"]},
        ),
        (
            "softmax",
            {**meta("integer", n_classes=3), "classes": ["cat", "dog", "fish"]},
            {**meta("integer", n_classes=3, id=VAL), "classes": [0, 1, 2]},
        ),  # indices the client encoded itself
    ],
)
def test_validation_sets_that_fit_are_accepted(output, train, val):
    spec = JobSpec(dataset_id=DS, validation_dataset_id=VAL, model={"output": output})
    assert to_train_config(spec, train, val).layer_dims[0] == 4


def test_the_accepted_names_are_the_public_contract_and_come_from_models():
    """JobSpec's enums are the API's contract (written out here) and dnnq.models' name types: a name
    added to models reaches the API, and this test says so before a client notices."""
    from dnnq import models

    schema = JobSpec.model_json_schema()
    defs = schema["$defs"]

    def enum(section: str | None, field: str) -> list:
        props = (defs[section] if section else schema)["properties"][field]
        options = props.get("anyOf", [props])  # lr_decay: a name or null
        return next(o["enum"] for o in options if "enum" in o)

    cases = [
        ("ModelSpec", "hidden_activation", ["relu", "leaky_relu", "tanh", "sigmoid"], models.HIDDEN_ACTIVATIONS),
        ("ModelSpec", "output", ["sigmoid", "softmax", "linear"], models.OUTPUTS),
        ("TrainingSpec", "optimizer", ["gd", "momentum", "rmsprop", "adam"], models.OPTIMIZER_NAMES),
        ("TrainingSpec", "init", ["small", "xavier", "he"], models.INIT_NAMES),
        ("TrainingSpec", "lr_decay", ["inverse_time", "exponential", "step"], models.LR_DECAYS[1:]),
        ("TrainingSpec", "dtype", ["float32", "float64"], models.DTYPES),
        (None, "device", ["auto", "cpu", "gpu"], models.DEVICES),
    ]
    for section, field, public, from_models in cases:
        assert enum(section, field) == public == list(from_models), field
