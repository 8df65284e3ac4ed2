"""workers.celery_wire builds the message the installed Celery's send_task writes for dnnq.train,
field by field (ids and origin aside), so a Celery upgrade that changes the format fails here."""

import base64
import json

from dnnq.workers.celery_wire import TASK_NAME, train_message

VARYING = {"id", "root_id", "origin"}  # per message or per process


def _sent_by_celery(celery_client, redis_client, job_id: str, queue: str) -> dict:
    celery_client.send_task(TASK_NAME, args=[job_id], queue=queue)
    (raw,) = redis_client.lrange(queue, 0, -1)
    return json.loads(raw)


def test_message_matches_what_send_task_writes(celery_client, redis_client):
    job_id = "0123456789abcdef0123456789abcdef"
    theirs = _sent_by_celery(celery_client, redis_client, job_id, "gpu")
    ours = json.loads(train_message(job_id, "gpu"))
    assert ours.keys() == theirs.keys()
    assert {k: v for k, v in ours.items() if k not in ("body", "headers", "properties")} == {
        k: v for k, v in theirs.items() if k not in ("body", "headers", "properties")
    }
    assert json.loads(base64.b64decode(ours["body"])) == json.loads(base64.b64decode(theirs["body"]))
    assert ours["headers"].keys() == theirs["headers"].keys()
    for key in ours["headers"].keys() - VARYING:
        assert ours["headers"][key] == theirs["headers"][key], key
    assert ours["headers"]["root_id"] == ours["headers"]["id"] == ours["properties"]["correlation_id"]
    assert ours["properties"].keys() == theirs["properties"].keys()
    for key in ours["properties"].keys() - {"correlation_id", "delivery_tag", "reply_to"}:
        assert ours["properties"][key] == theirs["properties"][key], key


def test_each_message_has_its_own_ids():
    a, b = (json.loads(train_message("a" * 32, "default")) for _ in range(2))
    assert a["headers"]["id"] != b["headers"]["id"]
    assert a["properties"]["delivery_tag"] != b["properties"]["delivery_tag"]
    assert a["properties"]["delivery_info"] == {"exchange": "", "routing_key": "default"}
