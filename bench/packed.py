"""``python -m bench.packed``: K trials trained as one pack (models.packed.fit_packed) against the
same K trials fit one after another, in one process, alternating, medians of the whole times.

The trials differ in learning rate only (a sweep's first question); the network, data and batch
size are given on the command line (default: 784-64-10 softmax, 4,096 synthetic examples float32,
batch 256, Adam, 5 epochs, K = 8). ``--cat``: the course's cat model instead ([12288, 20, 7, 5, 1],
209 images, full-batch gd, float64, 8 learning rates), where ``--path gram`` stacks the trials on the
Gram path (fit_packed(path="gram")) against fit's own Gram path one trial after another.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from typing import Any

import numpy as np

from bench.workloads import cat_images, teacher_classification


def main(argv: list[str] | None = None) -> int:
    from dnnq.models import TrainConfig, fit
    from dnnq.models.packed import fit_packed

    p = argparse.ArgumentParser(prog="python -m bench.packed", description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--examples", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--optimizer", default="adam", choices=["gd", "momentum", "rmsprop", "adam"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cat", action="store_true", help="the course's cat model, full-batch gd, float64")
    p.add_argument("--path", default="textbook", choices=["textbook", "gram"], help="the pack's and the solos' path")
    p.add_argument(
        "--per-step",
        action="store_true",
        help="CPU time of one step: fits of --epochs and of --epochs/10 epochs, the difference per epoch "
        "(full batch: per step), the pack against one solo fit",
    )
    args = p.parse_args(argv)
    if args.cat:
        Xe, labels, _ = cat_images("float64", 0)
        X, y = Xe, labels.reshape(-1, 1).astype(np.float64).T
        base = TrainConfig(
            layer_dims=[12288, 20, 7, 5, 1], optimizer="gd", epochs=args.epochs, dtype="float64", device="cpu", seed=1
        )
        configs = [dataclasses.replace(base, learning_rate=0.0025 * (k + 1)) for k in range(args.trials)]
    else:
        X, y = teacher_classification(args.examples, 784, 10, "float32", seed=0)
        base = TrainConfig(
            layer_dims=[784, args.hidden, 10],
            output="softmax",
            optimizer=args.optimizer,
            epochs=args.epochs,
            batch_size=args.batch_size,
            dtype="float32",
            device="cpu",
        )
        configs = [dataclasses.replace(base, learning_rate=1e-3 * 1.5**k) for k in range(args.trials)]
    if args.per_step:
        return _per_step(fit_packed, fit, X.T, y, configs, args)
    times: dict[str, list[float]] = {"packed": [], "one by one": []}
    cpu: dict[str, list[float]] = {"packed": [], "one by one": []}  # process CPU time: the work, on a shared machine
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        packed = fit_packed(X.T, y, configs, path=args.path)
        times["packed"].append(time.perf_counter() - t0)
        cpu["packed"].append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        solo = [fit(X.T, y, c, path=args.path) for c in configs]
        times["one by one"].append(time.perf_counter() - t0)
        cpu["one by one"].append(time.process_time() - c0)
        print({k: round(v[-1], 3) for k, v in times.items()}, {f"{k} cpu": round(v[-1], 3) for k, v in cpu.items()})
    diff = max(
        abs(a.history[-1].loss - b.history[-1].loss) / abs(b.history[-1].loss)
        for a, b in zip(packed, solo, strict=True)
        if hasattr(a, "history")
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    print(
        f"{args.trials} trials, medians: packed {med['packed']:.3f} s, one by one {med['one by one']:.3f} s, "
        f"one by one / packed {med['one by one'] / med['packed']:.2f}x; final losses within {diff:.1e} relative"
    )
    print(
        f"per epoch (whole run / epochs): packed {1e3 * med['packed'] / args.epochs:.3f} ms, one by one "
        f"{1e3 * med['one by one'] / args.epochs:.3f} ms; CPU time medians: packed {cmed['packed']:.3f} s, one by one "
        f"{cmed['one by one']:.3f} s, one by one / packed {cmed['one by one'] / cmed['packed']:.2f}x"
    )
    print(f"command: python -m bench.packed {' '.join(argv if argv is not None else sys.argv[1:])}")
    return 0


def _per_step(fit_packed: Any, fit: Any, X: Any, y: Any, configs: list[Any], args: argparse.Namespace) -> int:
    """Per-epoch CPU time without the setup (initial weights, Gram matrix, forming W1): the pack's and
    one solo fit's, from runs of E and E/10 epochs, alternating, medians."""
    long, short = args.epochs, max(1, args.epochs // 10)

    def cpu(run: Any, epochs: int) -> float:
        c0 = time.process_time()
        run(epochs)
        return time.process_time() - c0

    pack = lambda e: fit_packed(X, y, [dataclasses.replace(c, epochs=e) for c in configs], path=args.path)  # noqa: E731
    solo = lambda e: fit(X, y, dataclasses.replace(configs[0], epochs=e), path=args.path)  # noqa: E731
    pack(2), solo(2)  # warm: imports, Numba's kernels, the BLAS pool
    per: dict[str, list[float]] = {"packed": [], "solo": []}
    for _ in range(args.repeats):
        for name, run in (("packed", pack), ("solo", solo)):
            per[name].append((cpu(run, long) - cpu(run, short)) / (long - short))
    med = {k: statistics.median(v) for k, v in per.items()}
    print({k: [round(1e3 * t, 3) for t in v] for k, v in per.items()})
    print(
        f"CPU ms per epoch, medians: packed ({len(configs)} trials) {1e3 * med['packed']:.3f}, one solo fit "
        f"{1e3 * med['solo']:.3f}; {len(configs)} solo / packed {len(configs) * med['solo'] / med['packed']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
