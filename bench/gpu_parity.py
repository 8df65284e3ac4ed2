"""CuPy against NumPy on the same seeds: ``python -m bench.gpu_parity`` (used by scripts/gpu-check).

1. functional: model_forward / model_backward of one float64 network on both backends, gradients
   compared. 2. fit: a small net trained 20 epochs (mini-batches, shuffling, Adam; then full-batch gd)
   on device="cpu" and device="gpu", float64; history and final parameters must agree to ~1e-9
   relative; then gd on shuffled mini-batches with a learning rate that decays every epoch.
   Dropout is left off: its masks come from each device's own generator. The GPU runs replay their
   steps from CUDA graphs (models/stepgraph.py), each from one capture (the decaying rate too: it is
   read from device memory); each is run again kernel by kernel, which must give the same history
   and parameters bit for bit, and the line says how many captures (or why no graphs).
This module never imports CuPy itself: it reaches the GPU through models.backend.
"""

from __future__ import annotations

import sys

import numpy as np

RTOL = 1e-9


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def _toy(m: int = 600, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((5, m))  # (n_x, m)
    y = (X[0] * X[1] + 0.5 * X[2] > 0).astype(np.int64)  # nonlinear binary rule
    y3 = (np.digitize(X[0] + X[3], [-0.5, 0.5])).astype(np.int64)  # 3 classes
    return X, y, y3


def functional_check() -> tuple[bool, str]:
    from dnnq.models.backend import select_device, to_host
    from dnnq.models.network import initialize_parameters_deep, model_backward, model_forward

    gpu = select_device("gpu")
    X, y, _ = _toy(200)
    Y = y.reshape(1, -1).astype(np.float64)
    worst = 0.0
    for hidden in ("relu", "tanh", "sigmoid", "leaky_relu"):
        out = {}
        for xp in (np, gpu.xp):
            params = initialize_parameters_deep([5, 8, 4, 1], seed=3, init="xavier", xp=xp, dtype="float64")
            AL, caches = model_forward(xp.asarray(X), params, hidden, "sigmoid")
            grads = model_backward(AL, xp.asarray(Y), caches, hidden, "sigmoid")
            out[xp.__name__] = {"AL": to_host(AL), **{k: to_host(v) for k, v in grads.items()}}
        host, dev = out["numpy"], out[gpu.xp.__name__]
        worst = max(worst, *(_rel(dev[k], host[k]) for k in host))
    return worst <= RTOL, f"forward+backward, 4 hidden activations: max rel diff {worst:.2e} (tol {RTOL:g})"


def fit_check() -> tuple[bool, str]:
    from dnnq.models import TrainConfig, fit, stepgraph

    X, y, y3 = _toy()
    lines, ok = [], True
    setups = [
        (
            "adam, batch 64, shuffle, sigmoid",
            {
                "layer_dims": [5, 16, 8, 1],
                "output": "sigmoid",
                "optimizer": "adam",
                "learning_rate": 0.01,
                "batch_size": 64,
            },
            y.reshape(1, -1),
        ),
        (
            "gd, full batch, softmax, l2",
            {
                "layer_dims": [5, 16, 3],
                "output": "softmax",
                "optimizer": "gd",
                "learning_rate": 0.1,
                "batch_size": None,
                "l2": 0.01,
            },
            y3,
        ),
        (
            "gd, batch 64, shuffle, lr decay every epoch",
            {
                "layer_dims": [5, 16, 3],
                "output": "softmax",
                "optimizer": "gd",
                "learning_rate": 0.2,
                "lr_decay": "inverse_time",
                "decay_rate": 0.5,
                "batch_size": 64,
            },
            y3,
        ),
    ]
    for label, kw, Y in setups:
        res = {}
        for device in ("cpu", "gpu", "gpu kernel by kernel"):
            cfg = TrainConfig(init="he", seed=1, epochs=20, dtype="float64", device=device.split()[0], **kw)
            with stepgraph.switched(device != "gpu kernel by kernel"):
                res[device] = fit(X, Y, cfg)
        cpu, gpu, eager = res["cpu"], res["gpu"], res["gpu kernel by kernel"]
        hist = _rel([h.loss for h in gpu.history], [h.loss for h in cpu.history])
        par = max(_rel(gpu.parameters[k], cpu.parameters[k]) for k in cpu.parameters)
        same = [h.to_dict() for h in gpu.history] == [h.to_dict() for h in eager.history] and all(
            np.array_equal(gpu.parameters[k], eager.parameters[k]) for k in eager.parameters
        )
        one_capture = (gpu.step_graph or "").endswith(" from 1 capture")  # one graph for the run, lr decay too
        good = hist <= RTOL and par <= RTOL and same and one_capture and gpu.device.startswith("gpu")
        good &= len(gpu.history) == 20
        ok &= good
        lines.append(
            f"fit {label} on {gpu.device}: history rel diff {hist:.2e}, parameters {par:.2e}, "
            f"step graphs {gpu.step_graph}, {'same' if same else 'NOT the same'} bits as kernel by "
            f"kernel -> {'ok' if good else 'MISMATCH'}"
        )
    return ok, "; ".join(lines)


def main() -> int:
    failed = 0
    for name, check in (("functional", functional_check), ("fit", fit_check)):
        try:
            ok, msg = check()
        except Exception as exc:  # report any failure as a readable line, then go on
            ok, msg = False, f"{type(exc).__name__}: {exc}"
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'} {name}: {msg}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
