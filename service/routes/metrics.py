"""/metrics: Prometheus text from a per-app registry.

Job, queue and worker gauges, and the job outcome counters (dnnq_jobs_finished_total{outcome}: the
counters workers/lua/finish.lua, cancel.lua and requeue_expired.lua keep in keys.STATS), are read from
Redis at scrape time by a custom collector, so every API replica reports the same numbers.

The request histogram is this process's own, except under `dnnq up --api-workers N`: the N processes
then share one port, a scrape reaches any one of them, and each must answer for all. `dnnq up` sets
prometheus_client's PROMETHEUS_MULTIPROC_DIR for them (each process keeps its samples in a file there)
and a scrape sums every process's files.

The process_* metrics (resident memory, CPU seconds, open fds, start time: prometheus_client's
ProcessCollector, from /proc) and python_info describe the API process; with several API processes each
one's process_* samples carry a `pid` label, read from /proc for every process with a file in
PROMETHEUS_MULTIPROC_DIR (multiprocess mode has no process metrics of its own) that had started by its
file's last write: a dead process's file stays, and its pid may since name an unrelated process.

The figures span every tenant, so with API keys on /metrics answers only the operator's scraper:
`Authorization: Bearer <DNNQ_METRICS_KEY>`. A tenant's key gets a 403, and with no metrics key set
/metrics is closed (403) to everyone. Without API keys it is open, as every route is.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
from collections.abc import Iterator

import redis
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from dnnq.service.deps import tenant_for
from dnnq.service.errors import Problem, problems
from dnnq.workers import jobs as jobs_module
from dnnq.workers import keys
from dnnq.workers.recovery import live_workers

router = APIRouter(tags=["metrics"])
# How a job ends, each counted in keys.STATS as jobs_{outcome}_total by the script that ends it.
OUTCOMES = ("succeeded", "failed", "cancelled")
log = logging.getLogger("dnnq.api")


class RedisCollector:
    """Reads job counts, queue depths, stats counters and worker heartbeats from Redis."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r

    def describe(self) -> list:
        return []  # nothing to describe up front: registering must not touch Redis

    def collect(self) -> Iterator[Metric]:
        try:
            counts = jobs_module.count_by_status(self.r)
            depths = {q: jobs_module.queue_depth(self.r, q) for q in keys.QUEUES}
            stats = self.r.hgetall(keys.STATS)
            workers = live_workers(self.r)
        except (redis.ConnectionError, redis.TimeoutError):
            log.warning("metrics: redis unreachable; Redis-derived metrics omitted")
            return
        jobs = GaugeMetricFamily("dnnq_jobs", "Jobs by status.", labels=["status"])
        for status, n in counts.items():
            jobs.add_metric([status], n)
        yield jobs
        depth = GaugeMetricFamily("dnnq_queue_depth", "Tasks waiting in each Celery queue.", labels=["queue"])
        for queue, n in depths.items():
            depth.add_metric([queue], n)
        yield depth
        finished = CounterMetricFamily(
            "dnnq_jobs_finished", "Jobs that ended, by outcome (since the Redis data began).", labels=["outcome"]
        )
        for outcome in OUTCOMES:
            finished.add_metric([outcome], float(stats.get(f"jobs_{outcome}_total", 0) or 0))
        yield finished
        yield CounterMetricFamily(
            "dnnq_epochs", "Epochs trained by all workers.", value=float(stats.get("epochs_total", 0) or 0)
        )
        yield CounterMetricFamily(
            "dnnq_training_seconds",
            "Seconds spent training by all workers.",
            value=float(stats.get("training_seconds_total", 0) or 0),
        )
        yield GaugeMetricFamily("dnnq_workers", "Live workers (heartbeat present).", value=sum(1 for w in workers if w))
        # the training process's own CuPy pool (in live arrays, held from the device) apart from the device's
        # size: memGetInfo's "used" counts every process and context on the GPU, not this worker's
        gauges = (
            ("gpu_memory_used", "dnnq_worker_gpu_memory_bytes", "GPU memory the worker's training process holds."),
            ("gpu_pool_used_bytes", "dnnq_worker_gpu_pool_used_bytes", "Bytes in live arrays of the worker's pool."),
            ("gpu_pool_total_bytes", "dnnq_worker_gpu_pool_held_bytes", "Bytes the worker's pool holds."),
            ("gpu_memory_total", "dnnq_worker_gpu_device_bytes", "Memory of the worker's GPU device."),
        )
        for field, name, text in gauges:
            gauge = GaugeMetricFamily(name, text, labels=["worker"])
            for w in workers:
                if w and w.get(field) not in (None, ""):
                    gauge.add_metric([w.get("name", "?")], float(w[field]))
            yield gauge


class ApiProcessesCollector:
    """process_* of every API process sharing a PROMETHEUS_MULTIPROC_DIR, one `pid` label each: a scrape
    reaches any one of them, and prometheus_client's multiprocess mode has no process metrics."""

    _PID_FILE = re.compile(r"_(\d+)\.db$")  # prometheus_client names each process's file <kind>_<pid>.db

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Metric]:
        last_write: dict[int, float] = {}  # pid -> the newest mtime of its files
        for entry in os.scandir(self.directory):
            if match := self._PID_FILE.search(entry.name):
                pid = int(match.group(1))
                with contextlib.suppress(FileNotFoundError):
                    last_write[pid] = max(last_write.get(pid, 0.0), entry.stat().st_mtime)
        families: dict[str, Metric] = {}
        for pid in sorted(last_write.keys() | {os.getpid()}):
            collected = list(ProcessCollector(pid=functools.partial(str, pid), registry=None).collect())
            if pid != os.getpid() and not _started_by(collected, last_write[pid]):
                continue  # the file's process is gone (/proc has nothing), or its pid now names another process
            for metric in collected:
                family = families.setdefault(metric.name, Metric(metric.name, metric.documentation, metric.type))
                for sample in metric.samples:
                    family.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        yield from families.values()


def _started_by(process_metrics: list[Metric], last_write: float) -> bool:
    """Whether the process these metrics describe had started by ``last_write``, when its pid's file was
    last written: a process started later has only inherited the pid of the file's dead writer."""
    for metric in process_metrics:
        for sample in metric.samples:
            if sample.name == "process_start_time_seconds":
                return sample.value <= last_write + _START_TIME_SLACK_S
    return False


# process_start_time_seconds counts from /proc/stat's boot time, which /proc gives in whole seconds.
_START_TIME_SLACK_S = 1.0


def install(app: FastAPI) -> Histogram:
    """Register the collector and the request histogram; app.state.scrape_registry is what /metrics
    reports: the app's registry, or with several API processes (PROMETHEUS_MULTIPROC_DIR set) the
    Redis collector plus every process's samples."""
    registry = app.state.registry
    redis_collector = RedisCollector(app.state.redis)
    registry.register(redis_collector)
    platform = PlatformCollector(registry=registry)  # python_info
    app.state.scrape_registry = registry
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        shared = CollectorRegistry()
        multiprocess.MultiProcessCollector(shared)
        shared.register(redis_collector)
        shared.register(ApiProcessesCollector(directory))
        shared.register(platform)
        app.state.scrape_registry = shared
    else:
        ProcessCollector(registry=registry)  # process_*: RSS, CPU seconds, open fds, start time (Linux /proc)
    return Histogram(
        "dnnq_http_request_duration_seconds",
        "HTTP request latency by route template.",
        ["route", "method", "status"],
        registry=registry,
    )


async def require_operator(request: Request) -> None:
    """With API keys on: the caller must send the operator's metrics key (DNNQ_METRICS_KEY)."""
    if not request.app.state.api_keys:
        return
    metrics_key = request.app.state.settings.metrics_key
    if not metrics_key:
        raise Problem(
            403,
            "/metrics is closed: API keys are on and no operator metrics key is set. Set "
            "DNNQ_METRICS_KEY on the API and scrape with 'Authorization: Bearer <DNNQ_METRICS_KEY>'.",
        )
    authorization = request.headers.get("authorization", "")
    if tenant_for([(hashlib.sha256(metrics_key.encode()).digest(), "operator")], authorization) is not None:
        return
    if tenant_for(request.app.state.api_keys, authorization) is not None:
        raise Problem(
            403,
            "/metrics reports every tenant's figures: it needs the operator's metrics key "
            "(DNNQ_METRICS_KEY), not a tenant's API key.",
        )
    given = authorization.partition(" ")[2].strip()
    raise Problem(
        401,
        f"Metrics key {'invalid' if given else 'missing'}: send 'Authorization: Bearer <DNNQ_METRICS_KEY>'.",
        headers={"WWW-Authenticate": 'Bearer realm="dnnq-metrics"' + (', error="invalid_token"' if given else "")},
    )


@router.get("/metrics", response_class=Response, responses=problems(401, 403), dependencies=[Depends(require_operator)])
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.scrape_registry), media_type=CONTENT_TYPE_LATEST)
