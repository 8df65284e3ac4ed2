"""python -m bench.sweep_submit: where a 64-trial POST /v1/sweeps spends its time, in process, on a private
Redis (expand + validate, train configs, the Lua arguments, the one create_sweep script, the view; the
Celery sends after the 202 are not in it). ``--http``: the issue's goal itself, a 64-trial sweep accepted
in under 200 ms, timed over real HTTP against `dnnq up` (no worker needed: the trials wait queued).
Figures: docs/perf.md, 'Sweep submit'."""

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


def over_http(repeats: int) -> list[float]:
    """Seconds each 64-trial POST /v1/sweeps took to answer 202 through a live `dnnq up` (each sweep is
    cancelled after, so the next starts from the same state)."""
    import io

    import httpx
    import numpy as np

    from bench.load import start_stack

    took = []
    with tempfile.TemporaryDirectory() as tmp:
        stack = start_stack(1, Path(tmp), {"DNNQ_MAX_QUEUED_JOBS_PER_TENANT": "1000000"})
        try:
            with httpx.Client(base_url=stack.base_url, timeout=60) as http:
                rng = np.random.default_rng(0)
                buf = io.BytesIO()
                np.savez(buf, X=rng.standard_normal((64, 3)), Y=(rng.random((64, 1)) > 0.5).astype(np.float64))
                up = http.post("/v1/datasets", files={"file": ("d.npz", buf.getvalue())})
                up.raise_for_status()
                base = {"dataset_id": up.json()["id"], "model": {"hidden_layers": [4]}, "training": {"epochs": 6}}
                body = {"base": {**base, "wait_for_worker": True}, "grid": GRID}
                for _ in range(repeats):
                    start = time.perf_counter()
                    got = http.post("/v1/sweeps", json=body)
                    took.append(time.perf_counter() - start)
                    got.raise_for_status()
                    http.post(f"/v1/sweeps/{got.json()['id']}/cancel").raise_for_status()
        finally:
            stack.stop()
    return took


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.sweep_submit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=6, help="submits; the first (cold) is left out of the median")
    parser.add_argument("--http", action="store_true", help="time the whole POST over HTTP against `dnnq up`")
    args = parser.parse_args(argv)
    if args.http:
        took_http = over_http(args.repeats)
        median = statistics.median(took_http[1:] or took_http)
        print(f"64-trial sweep accepted over HTTP: median {median * 1e3:.1f} ms (goal < 200 ms: "
              f"{'met' if median < 0.2 else 'missed'}); all {[round(t * 1e3) for t in took_http]} ms")  # fmt: skip
        return
    with tempfile.TemporaryDirectory() as tmp, start_redis(Path(tmp)) as server:
        took = asyncio.run(run(server.url, args.repeats))
    for name, values in took.items():
        print(f"{name:>9}: median {statistics.median(values[1:]) * 1e3:6.1f} ms (first {values[0] * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
