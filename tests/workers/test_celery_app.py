"""The Celery app's settings and the worker command line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from celery import Celery
from pydantic import ValidationError

from dnnq.workers.celery_app import configure
from dnnq.workers.settings import WorkerSettings


def test_settings_that_make_delivery_safe():
    app = Celery("check")
    configure(app, WorkerSettings(redis_url="redis://127.0.0.1:1/0", max_job_seconds=100))
    c = app.conf
    assert c.broker_url == "redis://127.0.0.1:1/0"
    assert c.task_acks_late is True and c.task_reject_on_worker_lost is True
    assert c.worker_prefetch_multiplier == 1
    assert c.broker_transport_options["visibility_timeout"] > 100
    assert c.task_soft_time_limit == 100 and c.task_time_limit > 100
    assert c.accept_content == ["json"] and c.task_serializer == "json"
    assert c.task_ignore_result is True and not c.result_backend
    assert c.task_default_queue == "default"


def test_worker_settings_from_env(monkeypatch):
    monkeypatch.setenv("DNNQ_LEASE_SECONDS", "8")
    monkeypatch.setenv("DNNQ_QUEUES", "gpu, default")
    s = WorkerSettings()
    assert s.heartbeat_seconds == 2.0 and s.lease_ms == 8000
    assert s.queue_list == ["gpu", "default"]


def test_heartbeat_must_be_shorter_than_lease():
    with pytest.raises(ValidationError, match="heartbeat_seconds"):
        WorkerSettings(lease_seconds=1, heartbeat_seconds=2)


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "dnnq.workers", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--queues" in out.stdout
