"""Tenant names cannot collide with the state machine's keys.

A tenant's own keys live under dnnq:tenant:{tenant}:... . Before, tenant "active" listed its jobs
in dnnq:jobs:active, which is also the set of running jobs: its first submit made that key a
sorted set and from then on every claim of every tenant failed (WRONGTYPE).
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from dnnq.service.app import create_app
from dnnq.service.settings import ApiSettings
from dnnq.workers import datasets, jobs, keys
from dnnq.workers.recovery import register_worker
from dnnq.workers.settings import WorkerSettings


@pytest.mark.parametrize("tenant", ["active", "by_status", "stats", "public"])
def test_a_tenant_named_like_a_state_machine_key_trains_normally(tenant, redis_client, redis_url, data_dir):
    app = create_app(ApiSettings(redis_url=redis_url, data_dir=data_dir, api_keys=f"{tenant}:k1,bob:k2"))
    # a live 'default' worker's heartbeat: a submit no live worker would take is refused
    register_worker(redis_client, WorkerSettings(worker_name="w", heartbeat_seconds=30), "2026-01-01T00:00:00Z")
    with TestClient(app) as c:
        auth = {"Authorization": "Bearer k1"}
        ds = c.post("/v1/datasets/synthetic", json={"name": "moons"}, headers=auth)
        assert ds.status_code == 201, ds.text
        job = c.post("/v1/jobs", json={"dataset_id": ds.json()["id"]}, headers=auth)
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]
        listed = c.get("/v1/jobs", headers=auth).json()
        assert [j["id"] for j in listed["items"]] == [job_id]
        assert c.get("/v1/jobs", headers={"Authorization": "Bearer k2"}).json()["items"] == []
    assert jobs.claim(redis_client, job_id, "token", 1000)  # claims still work for everyone
    assert redis_client.type(keys.ACTIVE) == "set"
    assert redis_client.type(keys.BY_STATUS) == "hash"
    assert redis_client.type(keys.tenant_jobs(tenant)) == "zset"
    assert redis_client.type(datasets.tenant_datasets_key(tenant)) == "zset"
    assert jobs.count_unfinished(redis_client, tenant) == 1
