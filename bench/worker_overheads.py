"""``python -m bench.worker_overheads``: what the worker's per-epoch and per-job savings are worth.

In one process, against a Redis of its own (workers.redis_server) and a temporary artifact store:

1. the course's cat job (209 x 12288 inputs, [20, 7, 5, 1], full-batch gd, float64) through
   run_job: as configured (epochs to Redis at most every 0.1 s, checkpoints by time), with a round
   trip per epoch (DNNQ_PROGRESS_FLUSH_SECONDS=0), and with a checkpoint every ten epochs; then,
   steadier on a busy machine, the median of one epoch's write to Redis (jobs.record_epochs) and of
   one fsynced write of the cat network's parameters (what a checkpoint of a gd job writes);
2. a tiny job (120 x 3, [4, 1], 2 epochs) with the process's Redis client and with a new client per job;
3. importlib.metadata.version("dnnq") per call, against the tiny job's time;
4. a new Redis connection (connect + PING) with and without a resolved DriverInfo;
5. CPU seconds a fresh process spends importing the training stack (what the worker preloads).

Figures go to docs/perf.md ("Worker"), with this command.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main"]


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.worker_overheads", description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2500, help="epochs of the cat job (the course's 2,500)")
    p.add_argument("--tiny-jobs", type=int, default=30, help="tiny jobs per variant")
    args = p.parse_args(argv)

    import redis

    from dnnq.workers import datasets, jobs
    from dnnq.workers.artifact_store import LocalArtifactStore
    from dnnq.workers.redis_server import start_redis
    from dnnq.workers.runner import process_redis, run_job
    from dnnq.workers.settings import WorkerSettings, redis_client, redis_client_options
    from dnnq.workers.spec import JobSpec

    with tempfile.TemporaryDirectory() as tmp:
        server = start_redis(Path(tmp) / "redis")
        url = server.url
        settings = WorkerSettings(redis_url=url, data_dir=Path(tmp) / "data", worker_name="bench")
        r = redis_client(settings)
        store = LocalArtifactStore(Path(tmp) / "data" / "artifacts")
        rng = np.random.default_rng(0)

        def new_job(ds: dict[str, Any], spec: dict[str, Any]) -> str:
            valid = JobSpec.model_validate({"dataset_id": ds["id"], **spec})
            job = jobs.create_job(r, tenant="public", spec=valid.model_dump(), queue="default", dataset_id=ds["id"])
            return str(job["id"])

        def save(X: np.ndarray, y: np.ndarray, name: str) -> dict[str, Any]:
            return datasets.save_dataset(
                r, store, tenant="public", name=name, source="bench", X=X, Y=y, label_kind="binary"
            )

        try:
            cat = save(rng.random((209, 12288)), (rng.random(209) > 0.5).astype(float), "cat-like")
            cat_spec = {
                "model": {"hidden_layers": [20, 7, 5], "output": "sigmoid"},
                "training": {"epochs": args.epochs, "optimizer": "gd", "learning_rate": 0.0075, "dtype": "float64"},
            }
            warm = new_job(cat, {**cat_spec, "training": {**cat_spec["training"], "epochs": 2}})
            assert run_job(warm, settings=settings, r=r, store=store) == "succeeded"  # imports, first reads
            print(f"1. cat job, {args.epochs} epochs through run_job (wall seconds):")
            variants = {
                "as configured (flush <= every 0.1 s, checkpoints by time)": settings,
                "a round trip per epoch (progress_flush_seconds=0)": settings.model_copy(
                    update={"progress_flush_seconds": 0.0}
                ),
                "a checkpoint every 10 epochs (checkpoint_every=10)": settings.model_copy(
                    update={"checkpoint_every": 10}
                ),
            }
            for label, s in variants.items():
                job_id = new_job(cat, cat_spec)
                t = time.perf_counter()
                assert run_job(job_id, settings=s, r=r, store=store) == "succeeded"
                print(f"   {label}: {time.perf_counter() - t:.2f}")

            from dnnq.workers import artifacts

            job_id = new_job(cat, cat_spec)
            assert jobs.claim(r, job_id, "bench", 60_000)
            entry = {"epoch": 1, "loss": 0.5, "accuracy": 0.5, "val_loss": None, "val_accuracy": None}
            write = _median_seconds(lambda: jobs.record_epochs(r, job_id, "bench", [entry], {"epoch": 1}), 200)
            dims = [12288, 20, 7, 5, 1]
            params = {f"W{l}": rng.normal(size=(dims[l], dims[l - 1])) for l in range(1, 5)}
            params |= {f"b{l}": np.zeros((dims[l], 1)) for l in range(1, 5)}
            blob = artifacts.weights_npz_bytes(params)
            fsynced = _median_seconds(lambda: store.put(f"jobs/{job_id}/checkpoint.npz", blob), 20)
            print(f"   one epoch's write to Redis: {write * 1e3:.2f} ms (median of 200)")
            print(f"   one fsynced write of the parameters ({len(blob) / 1e6:.2f} MB): {fsynced * 1e3:.1f} ms")

            tiny = save(rng.normal(size=(120, 3)), (rng.random(120) > 0.5).astype(float), "tiny")
            tiny_spec = {"model": {"hidden_layers": [4]}, "training": {"epochs": 2}}
            runs: dict[str, list[float]] = {"shared": [], "fresh": []}
            for _ in range(args.tiny_jobs):  # interleaved, so that a slow phase of the machine hits both
                for how in runs:
                    job_id = new_job(tiny, tiny_spec)
                    t = time.perf_counter()
                    client = process_redis(settings) if how == "shared" else redis_client(settings)
                    assert run_job(job_id, settings=settings, r=client, store=store) == "succeeded"
                    runs[how].append(time.perf_counter() - t)
            shared, fresh = statistics.median(runs["shared"]), statistics.median(runs["fresh"])
            print(f"2. tiny job, median of {args.tiny_jobs} (ms): the process's client {shared * 1e3:.1f}, ")
            print(f"   a new client per job {fresh * 1e3:.1f} (+{(fresh - shared) / shared:.1%})")

            from importlib.metadata import version

            per_call = _median_seconds(lambda: version("dnnq"), 50)
            print(
                f"3. importlib.metadata.version('dnnq'): {per_call * 1e3:.2f} ms a call, "
                f"{per_call / shared:.1%} of a tiny job"
            )

            def connect(**options: Any) -> None:
                client = redis.Redis.from_url(url, decode_responses=True, **options)
                client.ping()
                client.close()

            plain = _median_seconds(connect, 50)
            resolved = _median_seconds(lambda: connect(**redis_client_options()), 50)
            print(f"4. new connection + PING (ms): without DriverInfo {plain * 1e3:.2f}, with {resolved * 1e3:.2f}")
            process_redis(settings).close()
        finally:
            server.stop()

    code = (
        "import time; t = time.process_time(); from dnnq.workers.__main__ import preload_training_modules; "
        "preload_training_modules(); print(time.process_time() - t)"
    )
    cpu = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)]
    cpu += [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)]
    print(f"5. importing the training stack in a fresh process: {min(cpu):.2f} s of CPU (best of 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
