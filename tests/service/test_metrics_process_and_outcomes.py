"""/metrics reports the API process (process_*, python_info) and how jobs ended
(dnnq_jobs_finished_total{outcome}), each job ended through the real state machine on the real Redis."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from dnnq.service.app import create_app
from dnnq.workers import jobs

DATASET = "ab" * 12


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus text page."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def new_job(r) -> str:
    return jobs.create_job(r, tenant="default", spec={"training": {"epochs": 1}}, queue="default", dataset_id=DATASET)[
        "id"
    ]


def claimed(r, lease_ms: int = 60_000) -> tuple[str, str]:
    job_id, token = new_job(r), f"test:{uuid.uuid4().hex}"
    assert jobs.claim(r, job_id, token, lease_ms)
    return job_id, token


def outcomes(client) -> dict[str, float]:
    page = samples(client.get("/metrics").text)
    return {o: page[("dnnq_jobs_finished_total", (("outcome", o),))] for o in ("succeeded", "failed", "cancelled")}


def test_job_outcome_counters_count_every_way_a_job_ends(client, redis_client):
    assert outcomes(client) == {"succeeded": 0, "failed": 0, "cancelled": 0}

    for _ in range(3):  # a worker finishes it
        assert jobs.finish(redis_client, *claimed(redis_client), "succeeded")
    assert jobs.finish(redis_client, *claimed(redis_client), "failed", error="boom")
    assert jobs.request_cancel(redis_client, new_job(redis_client)) == "cancelled"  # cancelled while queued
    job_id, token = claimed(redis_client)  # cancelled while running: the worker stops and ends it
    assert jobs.request_cancel(redis_client, job_id) == "cancelling"
    assert jobs.finish(redis_client, job_id, token, "cancelled")
    claimed(redis_client, lease_ms=50)  # its worker died on its last attempt: the sweeper fails it
    time.sleep(0.2)
    assert jobs.requeue_expired(redis_client, max_attempts=1) == []
    new_job(redis_client)  # still queued: not an outcome

    assert outcomes(client) == {"succeeded": 3, "failed": 2, "cancelled": 2}
    page = client.get("/metrics").text
    assert "# TYPE dnnq_jobs_finished_total counter" in page
    assert 'dnnq_jobs{status="queued"} 1.0' in page


def test_process_metrics_describe_the_api_process(client):
    page = samples(client.get("/metrics").text)
    rss = page[("process_resident_memory_bytes", ())]
    with open("/proc/self/status") as f:  # the kernel's own figure, in kB
        vm_rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    assert 0.5 * vm_rss < rss < 2 * vm_rss
    assert page[("process_open_fds", ())] == pytest.approx(len(os.listdir("/proc/self/fd")), abs=10)
    assert 0 < page[("process_cpu_seconds_total", ())] <= time.process_time() + 1
    assert time.time() - 24 * 3600 < page[("process_start_time_seconds", ())] <= time.time()
    info = [k for k in page if k[0] == "python_info"]
    assert len(info) == 1 and dict(info[0][1])["version"] == platform.python_version()


def test_several_api_processes_report_each_ones_process_metrics_by_pid(api_settings, tmp_path, monkeypatch):
    """Under `dnnq up --api-workers N` a scrape reaches any one process: it reports every process with
    a file in PROMETHEUS_MULTIPROC_DIR (here a second one, started with a counter of its own)."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    before = time.time()
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from prometheus_client import Counter; Counter('dnnq_test_other', 'x').inc(); "
            "print('ready', flush=True); time.sleep(60)",
        ],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "ready"
        assert any(Path(directory).glob(f"*_{other.pid}.db"))
        with TestClient(create_app(api_settings)) as c:
            page = samples(c.get("/metrics").text)
        assert page[("dnnq_test_other_total", ())] == 1.0  # the other process's own samples, summed in
        mine, theirs = (("pid", str(os.getpid())),), (("pid", str(other.pid)),)
        assert page[("process_resident_memory_bytes", mine)] > 0
        assert page[("process_resident_memory_bytes", theirs)] > 0
        assert before - 1 <= page[("process_start_time_seconds", theirs)] <= time.time() + 1
        assert page[("process_start_time_seconds", mine)] < before
        assert ("process_resident_memory_bytes", ()) not in page  # no unlabelled figure for one arbitrary process
    finally:
        other.kill()
        other.wait()


def test_a_dead_api_process_s_file_does_not_lend_its_pid_to_a_newer_process(api_settings, tmp_path, monkeypatch):
    """An API process that died leaves its file; when its pid is reused by a process started after that
    file's last write, the newcomer's memory and CPU are not reported as an API process's."""
    from prometheus_client.mmap_dict import MmapedDict

    directory = tmp_path / "metrics"
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    newcomer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = directory / f"counter_{newcomer.pid}.db"  # as if the pid's earlier owner had written it
        MmapedDict(str(stale)).close()
        an_hour_ago = time.time() - 3600
        os.utime(stale, (an_hour_ago, an_hour_ago))
        with TestClient(create_app(api_settings)) as c:
            page = samples(c.get("/metrics").text)
        assert ("process_resident_memory_bytes", (("pid", str(newcomer.pid)),)) not in page
        assert page[("process_resident_memory_bytes", (("pid", str(os.getpid())),))] > 0
    finally:
        newcomer.kill()
        newcomer.wait()
