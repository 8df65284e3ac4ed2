"""TaskSender: concurrent submits share one publish batch; every message goes out and is marked sent."""

from __future__ import annotations

import asyncio
import json

import pytest

from workers import jobs

DATASET = "ab" * 12


def test_concurrent_sends_go_out_in_one_batch_and_are_marked_sent(app, redis_client):
    sender = app.state.task_sender
    created = [jobs.create_job(redis_client, tenant="public", spec={}, queue=q, dataset_id=DATASET)
               for q in ("default", "default", "gpu", "default")]
    batches: list[list[str]] = []
    publish = sender._publish
    sender._publish = lambda batch: (batches.append([job_id for job_id, _, _ in batch]), publish(batch))

    async def send_all() -> None:
        await asyncio.gather(*(sender.send(job["id"], job["queue"]) for job in created))

    asyncio.run(send_all())
    assert batches == [[job["id"] for job in created]]  # one publish for the four submits of one loop turn
    by_queue = {q: [json.loads(m)["headers"]["argsrepr"] for m in redis_client.lrange(q, 0, -1)]
                for q in ("default", "gpu")}
    assert sorted(by_queue["default"]) == sorted(repr([j["id"]]) for j in created if j["queue"] == "default")
    assert by_queue["gpu"] == [repr([created[2]["id"]])]
    assert jobs.unsent(redis_client) == []


def test_a_failed_publish_reaches_every_caller_and_leaves_the_jobs_unsent(app, redis_client):
    sender = app.state.task_sender
    created = [jobs.create_job(redis_client, tenant="public", spec={}, queue="default", dataset_id=DATASET)
               for _ in range(3)]

    def broken(batch):
        raise ConnectionError("broker gone")

    sender._publish = broken

    async def send_all() -> list:
        return await asyncio.gather(*(sender.send(job["id"], "default") for job in created), return_exceptions=True)

    outcomes = asyncio.run(send_all())
    assert [type(o) for o in outcomes] == [ConnectionError] * 3
    assert jobs.unsent(redis_client) == sorted(job["id"] for job in created)  # the sweeper will send them
    assert redis_client.llen("default") == 0


@pytest.mark.parametrize("n", [300])
def test_more_than_one_batch_of_sends(app, redis_client, n):
    sender = app.state.task_sender
    created = [jobs.create_job(redis_client, tenant="public", spec={}, queue="default", dataset_id=DATASET)
               for _ in range(n)]

    async def send_all() -> None:
        await asyncio.gather(*(sender.send(job["id"], "default") for job in created))

    asyncio.run(send_all())
    assert redis_client.llen("default") == n and jobs.unsent(redis_client) == []
