"""``python -m bench.redis_memory``: Redis memory held by finished jobs with long histories.

Against a Redis of its own (workers.redis_server, append-only file off: only memory is measured) and a
temporary artifact store, each job goes the real way: create_job, claim, its epochs written with
record_epochs (the worker's batched write), then finish (the worker's finish path: with the artifact
store where finish takes one, so a long history moves there). It prints INFO memory's used_memory
before and after, the difference per job, MEMORY USAGE (SAMPLES 0: exact) of a finished job's keys
(its record and its history; medians over 20 jobs) and the median time of one finish call.

Figures go to docs/perf.md ("Redis memory of finished jobs"), with this command.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis


def _entries(epochs: int, seed: int = 0) -> list[dict[str, Any]]:
    """Epoch records as the worker writes them (EpochRecord.to_dict: full-precision floats)."""
    rng = np.random.default_rng(seed)
    loss = np.exp(-np.linspace(0, 5, epochs)) + rng.random(epochs) * 1e-3
    acc = 1 - loss / 2
    return [
        {
            "epoch": i + 1,
            "loss": float(loss[i]),
            "accuracy": float(acc[i]),
            "val_loss": float(loss[i] * 1.1),
            "val_accuracy": float(acc[i] * 0.99),
        }
        for i in range(epochs)
    ]


def _used(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def run(r: redis.Redis, store: Any, n_jobs: int, epochs: int, batch: int) -> dict[str, Any]:
    from dnnq.workers import jobs, keys

    takes_store = "store" in inspect.signature(jobs.finish).parameters
    entries = _entries(epochs)
    spec = {"dataset_id": "d" * 24, "training": {"epochs": epochs}}
    r.flushdb()
    before = _used(r)
    t0 = time.perf_counter()
    ids, finish_s = [], []
    for n in range(n_jobs):
        job_id = jobs.create_job(r, tenant="bench", spec=spec, queue="default", dataset_id="d" * 24)["id"]
        jobs.mark_sent(r, job_id)
        token = f"bench:{n}"
        assert jobs.claim(r, job_id, token, 600_000)
        for start in range(0, epochs, batch):
            chunk = entries[start : start + batch]
            progress = {"epoch": chunk[-1]["epoch"], "epochs": epochs, "loss": chunk[-1]["loss"]}
            jobs.record_epochs(r, job_id, token, chunk, progress, device="cpu" if start == 0 else None)
        extra = {"store": store} if takes_store else {}
        t_finish = time.perf_counter()
        ok = jobs.finish(
            r,
            job_id,
            token,
            "succeeded",
            metrics={"final_loss": entries[-1]["loss"], "train_accuracy": 0.98, "validation_accuracy": 0.97},
            artifacts={"npz": "0" * 64, "safetensors": "1" * 64, "onnx": "2" * 64, "model_json": "3" * 64},
            device="cpu",
            timings={"load_s": 0.01, "fit_s": 12.3, "total_s": 12.5},
            **extra,
        )
        finish_s.append(time.perf_counter() - t_finish)
        assert ok
        ids.append(job_id)
    seconds = time.perf_counter() - t0
    after = _used(r)
    sample = ids[:: max(1, len(ids) // 20)]
    record = [int(r.memory_usage(keys.job(i), samples=0) or 0) for i in sample]
    history = [int(r.memory_usage(keys.job_history(i), samples=0) or 0) for i in sample]
    assert len(jobs.get_history(r, ids[0], store=store) if takes_store else jobs.get_history(r, ids[0])) == epochs
    return {
        "jobs": n_jobs,
        "epochs": epochs,
        "finish_takes_store": takes_store,
        "used_memory_before": before,
        "used_memory_after": after,
        "bytes_per_job": (after - before) / n_jobs,
        "memory_usage_record_median": statistics.median(record),
        "memory_usage_history_median": statistics.median(history),
        "finish_seconds_median": round(statistics.median(finish_s), 4),
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000, help="epochs per record_epochs call")
    args = parser.parse_args(argv)

    from dnnq.workers.artifact_store import LocalArtifactStore
    from dnnq.workers.redis_server import start_redis

    with tempfile.TemporaryDirectory() as tmp, start_redis(Path(tmp) / "redis") as server:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        r.config_set("appendonly", "no")
        store = LocalArtifactStore(Path(tmp) / "artifacts")
        print(json.dumps(run(r, store, args.jobs, args.epochs, args.batch)))


if __name__ == "__main__":
    main()
