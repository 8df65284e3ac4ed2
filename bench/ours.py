"""Our side: ``models.fit`` on a workload, timed epoch by epoch through its ``on_epoch`` hook.

fit reads the loss back to the host once per epoch, so on a GPU the hook's clock already sits
after a device sync; the first epoch also carries fit's setup (init, data to device) and is the
warm-up left out of the median.
"""

from __future__ import annotations

import time

import numpy as np

from bench.workloads import Case


def available() -> str | None:
    """None when ``models.fit`` can be used, else why not."""
    try:
        from dnnq import models

        models.fit, models.TrainConfig  # noqa: B018 - attribute check
    except (ImportError, AttributeError) as exc:
        return f"models.fit is not available yet ({exc})"
    return None


def config(case: Case, device: str):
    from dnnq.models import TrainConfig

    return TrainConfig(
        layer_dims=list(case.layer_dims),
        hidden_activation="relu",
        output=case.output,
        init=case.init,
        seed=case.seed,
        optimizer=case.optimizer,
        learning_rate=case.learning_rate,
        beta1=0.9,
        beta2=0.999,
        epsilon=1e-8,
        epochs=case.epochs,
        batch_size=case.batch_size,
        shuffle=case.batch_size is not None,
        dtype=case.dtype,
        device=device,
    )


def train(case: Case, device: str = "cpu", step_graphs: bool = True, path: str = "auto") -> dict:
    """``step_graphs=False``: every GPU step kernel by kernel (models/stepgraph.py), for comparison;
    ``path``: fit's layer-1 path ("auto", "textbook", "gram"; models/gram.py)."""
    from dnnq.models import fit, stepgraph

    cfg = config(case, device)
    X = case.X.T  # (n_x, m): a view, as DESIGN.md allows
    Y = case.y if case.output == "softmax" else case.y.reshape(1, -1)
    stamps: list[float] = []
    with stepgraph.switched(step_graphs):
        t0 = time.perf_counter()
        result = fit(X, Y, cfg, on_epoch=lambda state: stamps.append(time.perf_counter()), path=path)
        total = time.perf_counter() - t0
    epoch_s = list(np.diff([t0, *stamps]))
    return {
        "epoch_s": [float(s) for s in epoch_s],
        "loss": float(result.history[-1].loss),
        "total_s": total,
        "parameters": result.parameters,
        "device": result.device,
        "fit_timings": dict(result.timings or {}),
        "step_graph": result.step_graph,
        "path": result.path,
        "history": [r.loss for r in result.history],
    }
