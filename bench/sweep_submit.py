"""python -m bench.sweep_submit: where a 64-trial POST /v1/sweeps spends its time, in process, on a private
Redis (expand + validate, train configs, the Lua arguments, the one create_sweep script, the view; the
Celery sends after the 202 are not in it). Figures: docs/perf.md, 'Sweep submit'."""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

from dnnq.service.sweep_schemas import sweep_view
from dnnq.workers import sweeps
from dnnq.workers.redis_server import start_redis
from dnnq.workers.spec import JobSpec, to_train_config

DATASET = "ab" * 12
META = {"id": DATASET, "tenant": "t", "n_features": "3", "n_examples": "64", "n_outputs": "1",
        "label_kind": "binary", "n_classes": "2"}  # fmt: skip
STEPS = ("validate", "configs", "lua_args", "script", "view")
GRID = {"lr": [0.1 * (i + 1) for i in range(8)], "seed": list(range(8))}


async def run(url: str, repeats: int) -> dict[str, list[float]]:
    ar = aioredis.Redis.from_url(url, decode_responses=True)
    base = JobSpec(dataset_id=DATASET, model={"hidden_layers": [4]}, training={"epochs": 6}).model_dump(mode="json")
    took: dict[str, list[float]] = {}
    for _ in range(repeats):
        marks = [time.perf_counter()]
        overrides = sweeps.expand(GRID, None, 64)
        specs = sweeps.trial_specs(base, overrides)
        marks.append(time.perf_counter())
        for spec in specs:
            cfg = to_train_config(spec, META, None)
            cfg.estimate_memory_bytes(64)
        marks.append(time.perf_counter())
        trials = [sweeps.Trial(o, s) for o, s in zip(overrides, specs, strict=True)]
        sweep, _, script_keys, args = sweeps._plan("t", base, trials, None, None)
        marks.append(time.perf_counter())
        await sweeps._CREATE_SWEEP.run_async(ar, script_keys, args)
        marks.append(time.perf_counter())
        json.dumps(sweep_view(sweeps.decode_sweep(sweep), [{"status": "queued"} for _ in trials], "loss"))
        marks.append(time.perf_counter())
        for name, a, b in zip(STEPS, marks[:-1], marks[1:], strict=True):
            took.setdefault(name, []).append(b - a)
    await ar.aclose()
    return took


def main(repeats: int = 6) -> None:
    with tempfile.TemporaryDirectory() as tmp, start_redis(Path(tmp)) as server:
        took = asyncio.run(run(server.url, repeats))
    for name, values in took.items():
        print(f"{name:>9}: median {statistics.median(values[1:]) * 1e3:6.1f} ms (first {values[0] * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
