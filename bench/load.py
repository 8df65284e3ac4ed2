"""``python -m bench.load``: the whole service under load, on loopback only, bounded in size and time.

It starts ``dnnq up --workers W`` itself (embedded Redis, a tmp data dir, a free port), creates a tiny
synthetic dataset, submits N tiny jobs from C concurrent clients (submit latency p50/p99), waits for
all of them, checks that every job ended succeeded exactly once (attempts == 1, full history, and the
workers' own counters in dnnq:stats: jobs_succeeded_total == N, epochs_total == N x epochs), then
measures status polls (GET /v1/jobs/{id}?history=none) from C clients for a few seconds.

The load client is deliberately light: plain asyncio streams speaking HTTP/1.1 keep-alive (one
connection per client, no httpx), so on a 2-core machine most of the CPU goes to the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Stack", "HttpConn", "percentile", "start_stack", "run_load", "main"]

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = {"succeeded", "failed", "cancelled"}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(1000 * percentile(values, 50), 2),
        "p99_ms": round(1000 * percentile(values, 99), 2),
        "max_ms": round(1000 * max(values), 2),
        "n": len(values),
    }


class HttpConn:
    """One keep-alive HTTP/1.1 connection: request() -> (status, body bytes). Content-Length bodies only
    (what uvicorn sends for JSON); cheap enough that the client does not eat the server's CPU."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            await self._connect()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        status_line = await self.reader.readline()
        if not status_line:  # the server closed the keep-alive connection: reconnect once
            await self.close()
            await self._connect()
            return await self.request(method, path, body)
        status = int(status_line.split(b" ", 2)[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        data = await self.reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


@dataclass
class Stack:
    proc: subprocess.Popen
    port: int
    redis_url: str
    data_dir: Path
    log_path: Path
    env: dict = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, grace: float = 20.0) -> None:
        """Ctrl-C for `dnnq up` (it stops the API, the workers, then Redis), SIGKILL its group if stuck."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(10)


def _free_port() -> int:
    from dnnq.workers.redis_server import free_port

    return free_port()


def start_stack(
    workers: int,
    data_dir: Path,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
    *,
    api_processes: int = 1,
    access_log: bool = False,
    queues: str = "default",
) -> Stack:
    """`python -m dnnq up --workers N --api-workers P` on 127.0.0.1 and a free port; returns once /readyz is 200.

    The API process count goes on the command line: `dnnq up` always passes uvicorn an explicit
    `--workers`, which wins over WEB_CONCURRENCY (setting that variable here used to change nothing)."""
    import httpx

    port = _free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DNNQ_")}
    full_env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "DNNQ_LOG_LEVEL": "WARNING",
            # N jobs are queued at once on purpose: lift the per-tenant queue limit for the run.
            "DNNQ_MAX_QUEUED_JOBS_PER_TENANT": "1000000",
        }
    )
    full_env.update(env or {})
    log_path = data_dir / "dnnq-up.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dnnq",
                "up",
                "--workers",
                str(workers),
                "--api-workers",
                str(api_processes),
                *(["--access-log"] if access_log else []),
                "--queues",
                queues,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir / "data"),
            ],
            cwd=ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack = Stack(proc, port, "", data_dir, log_path, full_env)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"dnnq up exited with {proc.returncode}:\n{stack.log()[-3000:]}")
            found = re.search(r"Redis embedded at redis://(\S+)", stack.log())
            if found:  # printed without its password, which dnnq up keeps in the data dir
                password = (data_dir / "data" / "redis" / "password").read_text(encoding="utf-8").strip()
                stack.redis_url = f"redis://:{password}@{found.group(1)}"
                try:
                    ready = httpx.get(f"{stack.base_url}/readyz", timeout=2.0)
                    if ready.status_code == 200 and ready.json()["workers"] >= workers:
                        return stack
                except httpx.TransportError:
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"dnnq up was not ready within {timeout:.0f} s:\n{stack.log()[-3000:]}")
    except BaseException:
        stack.stop()
        raise


def make_dataset(stack: Stack) -> str:
    import httpx

    resp = httpx.post(
        f"{stack.base_url}/v1/datasets/synthetic", json={"name": "moons", "n_samples": 200, "seed": 0}, timeout=30
    )
    resp.raise_for_status()
    return resp.json()["id"]


def tiny_spec(dataset_id: str, epochs: int, seed: int) -> bytes:
    return json.dumps(
        {
            "dataset_id": dataset_id,
            "model": {"hidden_layers": [8]},
            "training": {"epochs": epochs, "learning_rate": 0.05, "seed": seed},
        }
    ).encode()


async def submit_all(
    port: int, dataset_id: str, n_jobs: int, clients: int, epochs: int
) -> tuple[list[str], list[float], list[dict]]:
    """N POST /v1/jobs from `clients` connections; returns (ids, latencies, created views)."""
    todo = list(range(n_jobs))
    ids, latencies, views, errors = [], [], [], []

    async def client() -> None:
        conn = HttpConn("127.0.0.1", port)
        try:
            while todo:
                seed = todo.pop()
                t0 = time.perf_counter()
                status, data = await conn.request("POST", "/v1/jobs", tiny_spec(dataset_id, epochs, seed))
                latencies.append((t0, time.perf_counter() - t0))
                if status != 202:
                    errors.append((status, data[:300]))
                    continue
                view = json.loads(data)
                ids.append(view["id"])
                views.append(view)
        finally:
            await conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    if errors:
        raise RuntimeError(f"{len(errors)} submissions failed, e.g. {errors[0]}")
    return ids, [lat for _, lat in sorted(latencies)], views  # latencies in the order they were sent


async def poll_status(port: int, ids: list[str], clients: int, seconds: float) -> dict:
    """GET /v1/jobs/{id}?history=none from `clients` connections for `seconds`."""
    latencies: list[float] = []
    bad: list[int] = []
    stop_at = time.perf_counter() + seconds

    async def client(k: int) -> None:
        rng = random.Random(k)
        conn = HttpConn("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                status, _ = await conn.request("GET", f"/v1/jobs/{rng.choice(ids)}?history=none")
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    bad.append(status)
        finally:
            await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    elapsed = time.perf_counter() - t0
    return {
        "requests": len(latencies),
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "non_200": len(bad),
        **_ms(latencies),
    }


def wait_all(redis_url: str, ids: list[str], timeout: float) -> float:
    """Block until every job is terminal (read from Redis, one pipeline per check); returns when."""
    import redis

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pipe = r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(f"dnnq:job:{job_id}", "status")
        if all(s in TERMINAL for s in pipe.execute()):
            return time.perf_counter()
        time.sleep(0.2)
    raise RuntimeError(f"not every job ended within {timeout:.0f} s")


def verify_once(redis_url: str, ids: list[str], epochs: int, stats_before: dict) -> dict:
    """Every job succeeded exactly once: status, attempts == 1, a full history, and the workers'
    counters moved by exactly N jobs and N x epochs epochs (an epoch trained twice would show)."""
    import redis

    from dnnq.workers import jobs

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    problems = []
    for job_id in ids:
        job = jobs.get_job(r, job_id)
        n_hist = r.llen(f"dnnq:job:{job_id}:history")
        if job is None or job["status"] != "succeeded" or job["attempts"] != 1 or n_hist != epochs:
            problems.append(
                {
                    "id": job_id,
                    "status": job and job["status"],
                    "attempts": job and job["attempts"],
                    "history": n_hist,
                    "error": job and job["error"],
                }
            )
    stats = r.hgetall("dnnq:stats")

    def moved(name: str) -> int:
        return int(float(stats.get(name, 0))) - int(float(stats_before.get(name, 0)))

    result = {
        "jobs": len(ids),
        "distinct_ids": len(set(ids)),
        "not_succeeded_once": problems[:5],
        "n_problems": len(problems),
        "succeeded_counter": moved("jobs_succeeded_total"),
        "failed_counter": moved("jobs_failed_total"),
        "epochs_counter": moved("epochs_total"),
        "epochs_expected": len(ids) * epochs,
    }
    result["ok"] = (
        not problems
        and result["distinct_ids"] == len(ids)
        and result["succeeded_counter"] == len(ids)
        and result["failed_counter"] == 0
        and result["epochs_counter"] == len(ids) * epochs
    )
    return result


def redis_stats(redis_url: str) -> dict:
    import redis

    return redis.Redis.from_url(redis_url, decode_responses=True).hgetall("dnnq:stats")


def run_load(
    stack: Stack, n_jobs: int, clients: int, epochs: int, poll_seconds: float, wait_timeout: float = 1800
) -> dict:
    dataset_id = make_dataset(stack)
    before = redis_stats(stack.redis_url)
    t0 = time.perf_counter()
    ids, submit_lat, _ = asyncio.run(submit_all(stack.port, dataset_id, n_jobs, clients, epochs))
    t_submitted = time.perf_counter()
    t_done = wait_all(stack.redis_url, ids, wait_timeout)
    check = verify_once(stack.redis_url, ids, epochs, before)
    polls = asyncio.run(poll_status(stack.port, ids, clients, poll_seconds)) if poll_seconds > 0 else None
    return {
        "submit": {
            **_ms(submit_lat),
            "submits_per_s": round(len(ids) / (t_submitted - t0), 1),
            # The first `clients` requests meet a cold API (lazy imports, broker connections).
            "warm": _ms(submit_lat[clients:]) if len(submit_lat) > clients else None,
        },
        "jobs_per_s": round(len(ids) / (t_done - t0), 2),
        "all_done_s": round(t_done - t0, 2),
        "exactly_once": check,
        "status_poll": polls,
    }


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
    }


def emit_report(report: dict, json_path: str | None) -> None:
    """Print the figures as JSON, and write them to json_path too when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=500)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--workers", type=int, default=2, help="`dnnq up --workers` (Celery workers)")
    p.add_argument("--epochs", type=int, default=2, help="epochs of each tiny job")
    p.add_argument("--poll-seconds", type=float, default=5.0, help="status-poll phase length (0 = skip)")
    p.add_argument("--api-processes", type=int, default=1, help="API processes (`dnnq up --api-workers`)")
    p.add_argument("--access-log", action="store_true", help="`dnnq up --access-log` (off by default, as in dnnq up)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = {"command": "python -m bench.load " + " ".join(sys.argv[1:] if argv is None else argv), **machine()}
    with tempfile.TemporaryDirectory(prefix="dnnq-load-") as tmp:
        stack = start_stack(args.workers, Path(tmp), api_processes=args.api_processes, access_log=args.access_log)
        try:
            result = run_load(stack, args.jobs, args.clients, args.epochs, args.poll_seconds)
        finally:
            stack.stop()
    report = {
        **info,
        "jobs": args.jobs,
        "clients": args.clients,
        "workers": args.workers,
        "epochs": args.epochs,
        "api_processes": args.api_processes,
        "access_log": args.access_log,
        **result,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    emit_report(report, args.json)
    return 0 if result["exactly_once"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
