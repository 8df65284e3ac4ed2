"""``python -m bench.submit_cost``: the API's CPU per ``POST /v1/jobs``, in-process.

The whole ASGI app (fast lane on) through httpx's ASGI transport, on a private Redis with one
registered worker and no worker process: a warm-up, then rounds of N submits from C concurrent
tasks. Reports the process's CPU per submit (the client's included, every thread: the API's sender
thread too) and the wall time, per round, as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main"]


async def _rounds(app, n: int, clients: int, rounds: int, warmup: int) -> list[tuple[float, float]]:
    import httpx

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            created = await client.post("/v1/datasets/synthetic", json={"name": "moons", "n_samples": 200, "seed": 0})
            dataset_id = created.json()["id"]

            def body(seed: int) -> dict:
                return {
                    "dataset_id": dataset_id,
                    "model": {"hidden_layers": [8]},
                    "training": {"epochs": 2, "seed": seed},
                }

            for _ in range(warmup):
                assert (await client.post("/v1/jobs", json=body(0))).status_code == 202
            per_round = []
            for _ in range(rounds):
                todo = list(range(n))

                async def submitter(todo: list[int] = todo) -> None:
                    while todo:
                        resp = await client.post("/v1/jobs", json=body(todo.pop()))
                        assert resp.status_code == 202, resp.text

                cpu0, wall0 = time.process_time(), time.perf_counter()
                await asyncio.gather(*(submitter() for _ in range(clients)))
                per_round.append(((time.process_time() - cpu0) / n, (time.perf_counter() - wall0) / n))
            return per_round


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.submit_cost", description=__doc__.splitlines()[0])
    p.add_argument("--submits", type=int, default=600, help="submits per round")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=60)
    args = p.parse_args(argv)

    import redis

    from dnnq.service.app import create_app
    from dnnq.service.settings import ApiSettings
    from dnnq.workers import jobs
    from dnnq.workers.recovery import register_worker
    from dnnq.workers.redis_server import start_redis
    from dnnq.workers.settings import WorkerSettings

    with tempfile.TemporaryDirectory(prefix="dnnq-submit-cost-") as tmp, start_redis(Path(tmp) / "redis") as server:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        worker = WorkerSettings(worker_name="bench", queues="default", lease_seconds=1000, heartbeat_seconds=500)
        register_worker(r, worker, "2026-01-01T00:00:00Z")
        settings = ApiSettings(redis_url=server.url, data_dir=Path(tmp) / "data", max_queued_jobs_per_tenant=10**6)
        per_round = asyncio.run(_rounds(create_app(settings), args.submits, args.clients, args.rounds, args.warmup))
        report = {
            "command": "python -m bench.submit_cost " + " ".join(sys.argv[1:] if argv is None else argv),
            "cpus": os.cpu_count(),
            "cpu_us_per_submit": [round(cpu * 1e6) for cpu, _ in per_round],
            "wall_us_per_submit": [round(wall * 1e6) for _, wall in per_round],
            "median_cpu_us": round(statistics.median(cpu for cpu, _ in per_round) * 1e6),
            "messages_queued": jobs.queue_depth(r, "default"),
        }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
