"""``python -m bench.service_latency``: the service figures of issue 3, on loopback.

1. submit-to-start latency with an idle worker: jobs submitted one at a time, each after the previous
   one ended, `started_at - created_at` from the job record (median, p90, max of >= 20);
2. throughput: jobs per second for 200 tiny jobs submitted at once by 20 clients (exactly-once checked);
3. status polls per second (GET /v1/jobs/{id}?history=none, 20 clients, 5 s).

It starts `dnnq up` itself (bench/load.py), in a tmp data dir on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench.load import (
    HttpConn,
    emit_report,
    machine,
    make_dataset,
    poll_status,
    redis_stats,
    start_stack,
    submit_all,
    tiny_spec,
    verify_once,
    wait_all,
)

__all__ = ["main", "submit_to_start"]


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def submit_to_start(port: int, dataset_id: str, n: int, epochs: int) -> list[float]:
    """Seconds from created_at to started_at of n jobs, each submitted when the workers are idle."""
    conn = HttpConn("127.0.0.1", port)
    out = []
    try:
        for k in range(n):
            status, data = await conn.request("POST", "/v1/jobs", tiny_spec(dataset_id, epochs, 10_000 + k))
            assert status == 202, data
            job_id = json.loads(data)["id"]
            while True:
                status, data = await conn.request("GET", f"/v1/jobs/{job_id}?history=none")
                job = json.loads(data)
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    break
                await asyncio.sleep(0.02)
            assert job["status"] == "succeeded", job
            out.append(_ts(job["started_at"]) - _ts(job["created_at"]))
    finally:
        await conn.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.service_latency", description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--latency-jobs", type=int, default=20)
    p.add_argument("--throughput-jobs", type=int, default=200)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--poll-seconds", type=float, default=5.0)
    p.add_argument("--api-processes", type=int, default=1, help="API processes (`dnnq up --api-workers`)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = p.parse_args(argv)
    report = {
        "command": "python -m bench.service_latency " + " ".join(sys.argv[1:] if argv is None else argv),
        **machine(),
        "workers": args.workers,
        "api_processes": args.api_processes,
    }
    with tempfile.TemporaryDirectory(prefix="dnnq-latency-") as tmp:
        stack = start_stack(args.workers, Path(tmp), api_processes=args.api_processes)
        try:
            dataset_id = make_dataset(stack)
            lat = asyncio.run(submit_to_start(stack.port, dataset_id, args.latency_jobs, args.epochs))
            report["submit_to_start_s"] = {
                "median": round(statistics.median(lat), 4),
                "p90": round(sorted(lat)[int(0.9 * (len(lat) - 1))], 4),
                "max": round(max(lat), 4),
                "n": len(lat),
            }
            before = redis_stats(stack.redis_url)
            t0 = time.perf_counter()
            ids, _, _ = asyncio.run(submit_all(stack.port, dataset_id, args.throughput_jobs, args.clients, args.epochs))
            t_done = wait_all(stack.redis_url, ids, 1800)
            check = verify_once(stack.redis_url, ids, args.epochs, before)
            report["throughput"] = {
                "jobs": len(ids),
                "seconds": round(t_done - t0, 2),
                "jobs_per_s": round(len(ids) / (t_done - t0), 2),
                "exactly_once": check["ok"],
            }
            report["status_poll"] = asyncio.run(poll_status(stack.port, ids, args.clients, args.poll_seconds))
        finally:
            stack.stop()
    emit_report(report, args.json)
    return 0 if report["throughput"]["exactly_once"] else 1


if __name__ == "__main__":
    sys.exit(main())
