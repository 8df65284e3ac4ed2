"""scikit-learn reference: MLPClassifier with the same architecture and optimizer settings.

No momentum, no L2 (alpha=0), constant learning rate, shuffling on, no early stopping and no
convergence stop (tol=0, n_iter_no_change > epochs), so it runs exactly ``epochs`` passes.
MLPClassifier does not take initial weights, so its loss is a looser sanity check than torch's.
"""

from __future__ import annotations

import time
import warnings


def available() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def train(case, threads: int | None = None) -> dict:
    """Fit once for ``case.epochs`` epochs; per-epoch time is total / epochs (no per-epoch hook)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(
        hidden_layer_sizes=tuple(case.layer_dims[1:-1]),
        activation="relu",
        solver="adam" if case.optimizer == "adam" else "sgd",
        alpha=0.0,
        batch_size=case.batch_size or case.m,
        learning_rate="constant",
        learning_rate_init=case.learning_rate,
        momentum=0.0,
        nesterovs_momentum=False,
        max_iter=case.epochs,
        tol=0.0,
        n_iter_no_change=case.epochs + 1,
        early_stopping=False,
        shuffle=True,
        random_state=case.seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t0 = time.perf_counter()
        clf.fit(case.X, case.y)
        total = time.perf_counter() - t0
    return {"total_s": total, "epoch_s": total / case.epochs, "loss": float(clf.loss_curve_[-1]), "epochs": clf.n_iter_}
