"""A configuration fault: a tenant named like one of the state machine's own keys.

Tenant "active" lists its jobs in dnnq:jobs:active, which is also the set of running jobs; its first
submit made that key a sorted set and from then on every claim of every tenant failed (WRONGTYPE), so
no job could start. The API now refuses such tenant names at start, with a message that says why.
"""

from __future__ import annotations

import pytest

from service.app import create_app
from service.settings import ApiSettings
from workers import jobs


@pytest.mark.parametrize("tenant", ["active", "by_status"])
def test_reserved_tenant_names_are_refused_at_start(tenant, redis_url, data_dir):
    assert f"dnnq:jobs:{tenant}" in {jobs.ACTIVE_KEY, jobs.BY_STATUS_KEY}
    with pytest.raises(ValueError) as info:
        create_app(ApiSettings(redis_url=redis_url, data_dir=data_dir, api_keys=f"bob:k2,{tenant}:k1"))
    message = str(info.value)
    assert f"'{tenant}' is reserved" in message and "choose another tenant name" in message
    assert "k1" not in message  # the key itself is never echoed


def test_other_tenants_still_start_and_claims_work(redis_client, redis_url, data_dir):
    from fastapi.testclient import TestClient

    app = create_app(ApiSettings(redis_url=redis_url, data_dir=data_dir, api_keys="actives:k1,bob:k2"))
    with TestClient(app) as c:
        auth = {"Authorization": "Bearer k1"}
        ds = c.post("/v1/datasets/synthetic", json={"name": "moons"}, headers=auth)
        assert ds.status_code == 201, ds.text
        job = c.post("/v1/jobs", json={"dataset_id": ds.json()["id"]}, headers=auth)
        assert job.status_code == 202, job.text
    assert redis_client.type(jobs.ACTIVE_KEY) in ("none", "set")
    assert jobs.claim(redis_client, job.json()["id"], "token", 1000)
    assert redis_client.type(jobs.ACTIVE_KEY) == "set"
