"""Synthetic classification datasets (NumPy only): moons, circles, spiral, blobs.

Each generator returns X (m, n_features) float64 and integer labels y (m,), reproducible by seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import numpy as np

__all__ = ["GENERATORS", "PARAMETERS", "SYNTHETIC_NAMES", "SyntheticName", "class_count", "generate"]

SyntheticName = Literal["moons", "circles", "spiral", "blobs"]
SYNTHETIC_NAMES: tuple[SyntheticName, ...] = get_args(SyntheticName)
Generator = Callable[..., tuple[np.ndarray, np.ndarray]]


def _split(n: int, k: int) -> list[int]:
    """n examples over k classes as evenly as possible."""
    return [n // k + (1 if c < n % k else 0) for c in range(k)]


def moons(n_samples: int, noise: float, rng: np.random.Generator, **_) -> tuple[np.ndarray, np.ndarray]:
    n_out, n_in = _split(n_samples, 2)
    t_out = np.linspace(0, np.pi, n_out)
    t_in = np.linspace(0, np.pi, n_in)
    X = np.concatenate(
        [
            np.stack([np.cos(t_out), np.sin(t_out)], axis=1),
            np.stack([1 - np.cos(t_in), 1 - np.sin(t_in) - 0.5], axis=1),
        ]
    )
    y = np.concatenate([np.zeros(n_out), np.ones(n_in)])
    return X + rng.normal(scale=noise, size=X.shape), y


def circles(
    n_samples: int, noise: float, rng: np.random.Generator, factor: float = 0.5, **_: object
) -> tuple[np.ndarray, np.ndarray]:
    n_out, n_in = _split(n_samples, 2)
    t_out = np.linspace(0, 2 * np.pi, n_out, endpoint=False)
    t_in = np.linspace(0, 2 * np.pi, n_in, endpoint=False)
    X = np.concatenate(
        [
            np.stack([np.cos(t_out), np.sin(t_out)], axis=1),
            factor * np.stack([np.cos(t_in), np.sin(t_in)], axis=1),
        ]
    )
    y = np.concatenate([np.zeros(n_out), np.ones(n_in)])
    return X + rng.normal(scale=noise, size=X.shape), y


def spiral(
    n_samples: int, noise: float, rng: np.random.Generator, n_classes: int = 3, **_: object
) -> tuple[np.ndarray, np.ndarray]:
    """CS231n's spiral: k arms of radius 0..1, angle noise scaled by `noise`."""
    Xs, ys = [], []
    for c, n in enumerate(_split(n_samples, n_classes)):
        r = np.linspace(0.0, 1.0, n)
        t = np.linspace(c * 4.0, (c + 1) * 4.0, n) + rng.normal(scale=noise, size=n)
        Xs.append(np.stack([r * np.sin(t), r * np.cos(t)], axis=1))
        ys.append(np.full(n, c))
    return np.concatenate(Xs), np.concatenate(ys)


def blobs(
    n_samples: int, noise: float, rng: np.random.Generator, n_classes: int = 3, n_features: int = 2, **_: object
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around centres drawn in [-5, 5]^n_features; `noise` is the std (default 1)."""
    centres = rng.uniform(-5.0, 5.0, size=(n_classes, n_features))
    std = noise if noise > 0 else 1.0
    Xs, ys = [], []
    for c, n in enumerate(_split(n_samples, n_classes)):
        Xs.append(centres[c] + rng.normal(scale=std, size=(n, n_features)))
        ys.append(np.full(n, c))
    return np.concatenate(Xs), np.concatenate(ys)


GENERATORS: dict[SyntheticName, Generator] = {"moons": moons, "circles": circles, "spiral": spiral, "blobs": blobs}
# The request's fields each generator uses (the others are ignored): they name the dataset.
PARAMETERS: dict[SyntheticName, tuple[str, ...]] = {
    "moons": ("n_samples", "noise", "seed"),
    "circles": ("n_samples", "noise", "seed"),
    "spiral": ("n_samples", "noise", "seed", "n_classes"),
    "blobs": ("n_samples", "noise", "seed", "n_classes", "n_features"),
}


def class_count(name: SyntheticName, n_classes: int) -> int:
    """The classes a generator makes: moons and circles always two, the others `n_classes`."""
    return 2 if name in ("moons", "circles") else n_classes


def generate(
    name: SyntheticName, n_samples: int, noise: float, seed: int, n_classes: int = 3, n_features: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """(X (m, n_features), y (m,)) shuffled with the same seed."""
    rng = np.random.default_rng(seed)
    X, y = GENERATORS[name](n_samples, noise, rng, n_classes=n_classes, n_features=n_features)
    order = rng.permutation(len(y))
    return X[order], y[order].astype(np.int64)
