"""The benchmark workloads: their data, shapes, hyper-parameters and FLOP counts.

Every workload is built once per process from a fixed seed and then handed to every
implementation (ours, PyTorch, scikit-learn), so all sides train on the same arrays.
Arrays are kept examples-first (m, n_x); ``models.fit`` gets the transposed view (n_x, m).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CAT_TRAIN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "catvnoncat" / "train_catvnoncat.h5"


@dataclass
class Case:
    """One timed training setup; ``X`` is examples-first (m, n_x), ``y`` labels (m,)."""

    name: str
    workload: str
    layer_dims: list[int]
    output: str  # "softmax" (integer labels) or "sigmoid" (0/1 labels)
    optimizer: str  # "gd" or "adam" (models.TrainConfig names)
    learning_rate: float
    batch_size: int | None  # None = full batch
    epochs: int  # epochs (or full-batch iterations) per timed run
    dtype: str
    init: str
    seed: int
    X: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    data_note: str = ""
    sklearn: bool = False  # also time scikit-learn's MLPClassifier
    warmup: int = 1  # leading epochs left out of the median

    @property
    def m(self) -> int:
        return self.X.shape[0]

    def flops_per_epoch(self) -> float:
        return training_flops(self.layer_dims, self.m)


def training_flops(layer_dims: list[int], m: int) -> float:
    """Matmul FLOPs of one pass over m examples: forward, dW of every layer, dA of layers 2..L.

    Each weight matrix n_l x n_{l-1} costs 2*m*n_l*n_{l-1} per product; the forward pass and dW
    need one product per layer, dA_{l-1} = W_l^T dZ_l one per layer except the first (dA0, the
    gradient of the input, is never needed). Elementwise work (activations, loss, optimizer) is
    left out: it is O(m * n) against the O(m * n^2) matmuls.
    """
    per_layer = [2.0 * m * n_l * n_prev for n_prev, n_l in zip(layer_dims[:-1], layer_dims[1:], strict=True)]
    return 2.0 * sum(per_layer) + sum(per_layer[1:])


def teacher_classification(m: int, n_x: int, n_classes: int, dtype: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-like inputs uniform in [0, 1) labelled by a fixed random linear teacher + argmax."""
    rng = np.random.default_rng(seed)
    X = rng.random((m, n_x), dtype=np.float32).astype(dtype, copy=False)
    teacher = rng.standard_normal((n_x, n_classes)).astype(np.float32)
    y = np.argmax((X - 0.5) @ teacher, axis=1).astype(np.int64)  # centred: classes come out balanced
    return X, y


def cat_images(dtype: str, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The course's 209 cat/non-cat training images scaled to [0, 1], or uniform noise of that shape."""
    try:
        import h5py
    except ImportError:  # a bare GPU box may lack h5py: fall back to the synthetic set
        h5py = None
    if h5py is not None and CAT_TRAIN.exists():
        with h5py.File(CAT_TRAIN, "r") as f:
            X = np.asarray(f["train_set_x"]).reshape(209, -1).astype(dtype) / 255.0
            y = np.asarray(f["train_set_y"]).astype(np.int64).ravel()
        return X, y, f"real cat set {CAT_TRAIN}"
    rng = np.random.default_rng(seed)
    X = rng.random((209, 12288)).astype(dtype)
    y = rng.integers(0, 2, size=209).astype(np.int64)
    why = "h5py not installed" if h5py is None else "cat set not found"
    return X, y, f"synthetic uniform [0,1) pixels, random 0/1 labels ({why})"


def workload_a(quick: bool) -> list[Case]:
    """60,000 x 784 float32, 784-256-128-10 ReLU/softmax, batch 256: plain SGD and Adam."""
    X, y = teacher_classification(60_000, 784, 10, "float32", seed=0)
    epochs = 4 if quick else 5
    note = "synthetic 60000x784 uniform[0,1) float32, 10 classes from a random linear teacher (seed 0)"
    common: dict[str, Any] = {
        "workload": "A",
        "layer_dims": [784, 256, 128, 10],
        "output": "softmax",
        "batch_size": 256,
        "epochs": epochs,
        "dtype": "float32",
        "init": "he",
        "seed": 1,
        "X": X,
        "y": y,
        "data_note": note,
        "sklearn": True,
    }
    return [
        Case(name="A-sgd", optimizer="gd", learning_rate=0.1, **common),
        Case(name="A-adam", optimizer="adam", learning_rate=1e-3, **common),
    ]


def workload_b(quick: bool) -> list[Case]:
    """The course's deep model: [12288, 20, 7, 5, 1], float64, full-batch gd, lr 0.0075."""
    X, y, note = cat_images("float64", seed=0)
    return [
        Case(
            name="B-gd",
            workload="B",
            layer_dims=[12288, 20, 7, 5, 1],
            output="sigmoid",
            optimizer="gd",
            learning_rate=0.0075,
            batch_size=None,
            epochs=300 if quick else 2500,
            dtype="float64",
            init="xavier",
            seed=1,
            X=X,
            y=y,
            data_note=note,
        )
    ]


def workload_wide(quick: bool, device: str) -> list[Case]:
    """4096-4096-4096-10, batch 1024, float32 on synthetic data (sized down on a CPU)."""
    m = (16_384 if quick else 65_536) if device == "gpu" else 4096
    X, y = teacher_classification(m, 4096, 10, "float32", seed=2)
    note = f"synthetic {m}x4096 uniform[0,1) float32, 10 classes from a random linear teacher (seed 2)"
    return [
        Case(
            name="wide-sgd",
            workload="wide",
            layer_dims=[4096, 4096, 4096, 10],
            output="softmax",
            optimizer="gd",
            learning_rate=0.01,
            batch_size=1024,
            epochs=4 if quick else 6,
            dtype="float32",
            init="he",
            seed=1,
            X=X,
            y=y,
            data_note=note,
        )
    ]


def build(workload: str, quick: bool, device: str) -> list[Case]:
    cases: list[Case] = []
    if workload in ("A", "all"):
        cases += workload_a(quick)
    if workload in ("B", "all"):
        cases += workload_b(quick)
    if workload == "wide" or (workload == "all" and device == "gpu"):
        cases += workload_wide(quick, device)
    return cases


def initial_parameters(case: Case) -> dict[str, np.ndarray]:
    """The parameters ``models.fit`` starts from, so the references can start from the same point.

    Uses ``models.initialize_parameters_deep`` when it exists; otherwise the documented recipe
    (RandomState(seed).randn(n_l, n_{l-1}) layer by layer, scaled by the init rule; zero biases).
    """
    try:
        from dnnq.models import initialize_parameters_deep
    except ImportError:
        initialize_parameters_deep = None
    if initialize_parameters_deep is not None:
        params = initialize_parameters_deep(case.layer_dims, seed=case.seed, init=case.init, dtype=case.dtype)
        return {k: np.asarray(v) for k, v in params.items()}
    rs = np.random.RandomState(case.seed)
    params = {}
    for l in range(1, len(case.layer_dims)):
        n_prev, n_l = case.layer_dims[l - 1], case.layer_dims[l]
        scale = {"small": 0.01, "xavier": 1 / np.sqrt(n_prev), "he": np.sqrt(2 / n_prev)}[case.init]
        params[f"W{l}"] = (rs.randn(n_l, n_prev) * scale).astype(case.dtype)
        params[f"b{l}"] = np.zeros((n_l, 1), dtype=case.dtype)
    return params
