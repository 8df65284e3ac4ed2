"""A bounded run of bench/load.py: `dnnq up --workers 2`, 60 tiny jobs from 10 concurrent clients;
every job ends succeeded exactly once. No timing asserts (the figures come from `python -m bench.load`)."""

from __future__ import annotations

import asyncio

import pytest
import redis

from bench.load import make_dataset, poll_status, start_stack, submit_all, verify_once, wait_all
from dnnq.workers import jobs

pytestmark = pytest.mark.e2e


def test_sixty_jobs_from_ten_clients_each_succeed_exactly_once(tmp_path):
    stack = start_stack(workers=2, data_dir=tmp_path)
    try:
        r = redis.Redis.from_url(stack.redis_url, decode_responses=True)
        dataset_id = make_dataset(stack)
        ids, latencies, views = asyncio.run(submit_all(stack.port, dataset_id, n_jobs=60, clients=10, epochs=3))
        assert len(ids) == len(set(ids)) == 60 and len(latencies) == 60
        assert {v["status"] for v in views} <= {"queued", "running", "succeeded"}
        assert jobs.count_unfinished(r, "public") <= 60
        wait_all(stack.redis_url, ids, timeout=300)
        check = verify_once(stack.redis_url, ids, epochs=3, stats_before={})
        assert check["ok"], check
        assert check["succeeded_counter"] == 60 and check["epochs_counter"] == 180
        assert jobs.count_unfinished(r, "public") == 0  # every terminal transition left the set
        polls = asyncio.run(poll_status(stack.port, ids, clients=10, seconds=1.0))
        assert polls["requests"] > 0 and polls["non_200"] == 0, polls
    finally:
        stack.stop()
    assert stack.proc.returncode is not None
