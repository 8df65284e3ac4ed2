"""``python -m bench.first_epoch``: a fresh training process's first fit, cold and after warm_up().

Each run is a new Python process that imports what a worker's parent preloads
(``preload_training_modules``), then, for "warm", calls ``models.warm_up()`` (a worker's pool child
does so on a thread when it starts, before any job), then times one job's fit from its call to the
end of its first epoch (``on_epoch``): the wait a job sees before its first progress. The job is a
small workload-A-like one (784-256-128-10 softmax, batch 256, 2,048 examples, float32) with each
optimizer. Runs alternate cold and warm; medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

_CHILD = r"""
import json, sys, time
from dnnq.workers.__main__ import preload_training_modules
preload_training_modules()
import numpy as np
from dnnq.models import TrainConfig, fit, warm_up
warm = sys.argv[1] == "warm"
warm_s = warm_up() if warm else 0.0
rng = np.random.default_rng(0)
X, y = rng.random((784, 2048), dtype=np.float32), rng.integers(0, 10, 2048)
cfg = TrainConfig(layer_dims=[784, 256, 128, 10], output="softmax", optimizer=sys.argv[2], learning_rate=1e-3,
                  epochs=2, batch_size=256, dtype="float32", device="cpu")
marks = []
t0 = time.perf_counter()
fit(X, y, cfg, on_epoch=lambda s: marks.append(time.perf_counter() - t0))
print(json.dumps({"first_epoch_s": marks[0], "second_epoch_s": marks[1] - marks[0], "warm_up_s": warm_s}))
"""


def run(kind: str, optimizer: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, kind, optimizer], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.first_epoch", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--optimizer", default="adam", choices=["gd", "momentum", "rmsprop", "adam"])
    args = p.parse_args(argv)
    runs: dict[str, list[dict]] = {"cold": [], "warm": []}
    for _ in range(args.repeats):
        for kind in runs:
            runs[kind].append(run(kind, args.optimizer))
            print(kind, runs[kind][-1], flush=True)
    for kind, rs in runs.items():
        first = statistics.median(r["first_epoch_s"] for r in rs)
        second = statistics.median(r["second_epoch_s"] for r in rs)
        once = statistics.median(r["first_epoch_s"] - r["second_epoch_s"] for r in rs)  # what the first pays extra
        extra = f", warm_up() itself {statistics.median(r['warm_up_s'] for r in rs):.3f} s" if kind == "warm" else ""
        print(
            f"{kind}: call to first epoch {first:.3f} s, second epoch {second:.3f} s, "
            f"first minus second {once:.3f} s (medians){extra}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
