"""``python -m bench.celery_events``: what Celery's monitoring events (DNNQ_CELERY_EVENTS=1) cost a worker.

Against a Redis of its own, a real `python -m dnnq.workers` process per round, events off and on in
alternating order (so that a slow phase of a shared machine hits both): after one warm-up job, N tiny
jobs (120 x 3, [4, 1], 2 epochs) are sent at once and timed until the last succeeds, with the worker's
CPU seconds (main process and pool child) and Redis's PUBLISH count over them; then the PUBLISHes of an
idle stretch (the heartbeat). `--receiver` also keeps an event receiver subscribed, as Flower would.
Medians over the rounds. Figures go to docs/perf.md ("Celery events"), with this command.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main"]


def _tree_cpu(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    total = sum(proc.cpu_times()[:4])  # user, system, and its children already waited for
    for child in proc.children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _publishes(r: Any) -> int:
    return int(r.info("commandstats").get("cmdstat_publish", {}).get("calls", 0))


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.celery_events", description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=40, help="tiny jobs per round (at most 49: one pool child)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per variant")
    p.add_argument("--idle-seconds", type=float, default=6.0, help="idle stretch whose PUBLISHes are counted")
    p.add_argument("--receiver", action="store_true", help="keep a Celery event receiver subscribed (as Flower)")
    args = p.parse_args(argv)

    from celery import Celery

    from dnnq.workers import datasets, jobs, keys
    from dnnq.workers.artifact_store import LocalArtifactStore
    from dnnq.workers.celery_app import configure, send_train, sender_app
    from dnnq.workers.redis_server import start_redis
    from dnnq.workers.settings import WorkerSettings, redis_client
    from dnnq.workers.spec import JobSpec

    with tempfile.TemporaryDirectory() as tmp:
        server = start_redis(Path(tmp) / "redis")
        url = server.url
        data_dir = Path(tmp) / "data"
        r = redis_client(WorkerSettings(redis_url=url))
        store = LocalArtifactStore(data_dir / "artifacts")
        rng = np.random.default_rng(0)
        X = rng.normal(size=(120, 3))
        ds = datasets.save_dataset(
            r,
            store,
            tenant="public",
            name="tiny",
            source="bench",
            X=X,
            Y=(X[:, 0] > 0).astype(float),
            label_kind="binary",
        )
        spec = JobSpec.model_validate(
            {"dataset_id": ds["id"], "model": {"hidden_layers": [4]}, "training": {"epochs": 2}}
        )
        celery = sender_app(url)
        monitor: dict[str, Any] = {}
        if args.receiver:
            app = Celery("bench-monitor")
            configure(app, WorkerSettings(redis_url=url))

            def listen() -> None:
                with app.connection_for_read() as conn:
                    monitor["receiver"] = app.events.Receiver(conn, handlers={"*": lambda e: None})
                    monitor["receiver"].capture(limit=None, timeout=None, wakeup=False)

            monitor["thread"] = threading.Thread(target=listen, daemon=True)
            monitor["thread"].start()

        def run_jobs(n: int) -> list[str]:
            ids = []
            for _ in range(n):
                job = jobs.create_job(r, tenant="public", spec=spec.model_dump(), queue="default", dataset_id=ds["id"])
                send_train(job["id"], "default", celery)
                jobs.mark_sent(r, job["id"])
                ids.append(job["id"])
            return ids

        def all_done(ids: list[str]) -> bool:
            return all(r.hget(keys.job(i), "status") in ("succeeded", "failed") for i in ids)

        results: dict[str, dict[str, list[float]]] = {
            v: {"ms_per_job": [], "cpu_ms_per_job": [], "publish_per_job": [], "idle_publish_per_s": []}
            for v in ("off", "on")
        }
        try:
            for rnd in range(args.rounds):
                for variant in ("off", "on") if rnd % 2 == 0 else ("on", "off"):
                    name = f"bench-{variant}-{rnd}"
                    env = {k: v for k, v in os.environ.items() if not k.startswith("DNNQ_")}
                    env.update(
                        DNNQ_REDIS_URL=url,
                        DNNQ_DATA_DIR=str(data_dir),
                        DNNQ_WORKER_NAME=name,
                        DNNQ_CELERY_EVENTS="1" if variant == "on" else "0",
                        DNNQ_LOG_LEVEL="WARNING",
                        OMP_NUM_THREADS="1",
                        OPENBLAS_NUM_THREADS="1",
                    )
                    worker = subprocess.Popen(
                        [sys.executable, "-m", "dnnq.workers"],
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                    try:
                        _wait(lambda name=name: r.exists(keys.worker(name)), 60, f"worker {name}")
                        warm = run_jobs(1)
                        _wait(lambda warm=warm: all_done(warm), 60, "the warm-up job")
                        cpu0, pub0, t0 = _tree_cpu(worker.pid), _publishes(r), time.perf_counter()
                        ids = run_jobs(args.jobs)
                        _wait(lambda ids=ids: all_done(ids), 600, f"{args.jobs} jobs")
                        wall, cpu, pub = time.perf_counter() - t0, _tree_cpu(worker.pid) - cpu0, _publishes(r) - pub0
                        pub1 = _publishes(r)
                        time.sleep(args.idle_seconds)
                        idle = (_publishes(r) - pub1) / args.idle_seconds
                    finally:
                        os.killpg(worker.pid, signal.SIGTERM)
                        worker.wait(60)
                    res = results[variant]
                    res["ms_per_job"].append(wall / args.jobs * 1e3)
                    res["cpu_ms_per_job"].append(cpu / args.jobs * 1e3)
                    res["publish_per_job"].append(pub / args.jobs)
                    res["idle_publish_per_s"].append(idle)
                    print(
                        f"round {rnd} events {variant}: {wall / args.jobs * 1e3:.1f} ms/job, "
                        f"worker CPU {cpu / args.jobs * 1e3:.1f} ms/job, {pub / args.jobs:.2f} PUBLISH/job, "
                        f"idle {idle:.2f} PUBLISH/s",
                        flush=True,
                    )
        finally:
            if "receiver" in monitor:
                monitor["receiver"].should_stop = True
                monitor["thread"].join(5)  # before Redis goes: the receiver's loop checks should_stop each second
            server.stop()

        print(f"\nmedians over {args.rounds} rounds of {args.jobs} jobs (receiver subscribed: {args.receiver}):")
        for variant, res in results.items():
            print(f"  events {variant}: " + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in res.items() if v))
        off, on = results["off"], results["on"]
        for k in ("ms_per_job", "cpu_ms_per_job"):
            print(f"  on / off, {k}: {statistics.median(on[k]) / statistics.median(off[k]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
