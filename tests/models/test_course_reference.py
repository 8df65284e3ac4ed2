"""Published reference values: the course's 4-layer cat classifier (Deep Neural Network - Application).

The course prints "Cost after iteration 0: 0.771749" and "Cost after iteration 100: 0.672053" for
layer_dims [12288, 20, 7, 5, 1], relu/sigmoid, W = randn / sqrt(n_{l-1}) after np.random.seed(1)
(init="xavier", seed=1 here), learning rate 0.0075, full-batch gd, inputs scaled by 1/255.
"""

import os
from pathlib import Path

import numpy as np
import pytest

from dnnq.models import TrainConfig, fit

CAT_TRAIN = Path(os.environ.get("DNNQ_CAT_TRAIN_H5", "/work/shared/data/catvnoncat/train_catvnoncat.h5"))


@pytest.mark.slow
@pytest.mark.skipif(not CAT_TRAIN.exists(), reason=f"cat data set {CAT_TRAIN} not present (set DNNQ_CAT_TRAIN_H5)")
def test_course_costs_on_the_cat_data_set():
    h5py = pytest.importorskip("h5py", reason="h5py not installed")
    with h5py.File(CAT_TRAIN, "r") as f:
        images, labels = np.array(f["train_set_x"]), np.array(f["train_set_y"])
    X = images.reshape(images.shape[0], -1).T / 255.0  # (12288, 209)
    Y = labels.reshape(1, -1)
    cfg = TrainConfig(
        layer_dims=[12288, 20, 7, 5, 1],
        init="xavier",
        seed=1,
        learning_rate=0.0075,
        epochs=101,
        dtype="float64",
        device="cpu",
    )
    history = fit(X, Y, cfg).history
    assert round(history[0].loss, 6) == 0.771749
    assert round(history[100].loss, 6) == 0.672053
