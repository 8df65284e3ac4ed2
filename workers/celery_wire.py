"""The Celery message of one "dnnq.train" task, as kombu's Redis transport keeps it in a queue list.

Why build it here instead of calling ``send_task``: on the submit path Celery's publish was ~1.7 ms
of CPU per job (message construction through several layers, then a kombu publish), most of what a
submit cost. Built here it takes microseconds, and the job-create script (workers/jobs.py) LPUSHes
it in the same atomic step that writes the job, so there is no moment at which a job exists
without its message (nothing for the sweeper to catch up on, no extra round trip).

The format is Celery's task message protocol v2 (headers + a JSON body ``[args, kwargs, embed]``,
https://docs.celeryq.dev/en/stable/internals/protocol.html) inside kombu's Redis envelope (body
base64-encoded, ``properties`` with a unique ``delivery_tag`` and the routing). For a priority-0
message on the default exchange, kombu's Redis transport pushes it onto the list named after the
queue, which the workers BRPOP. tests/workers/test_celery_wire.py compares it field by field with
what the installed Celery's own send_task writes, and every end-to-end test trains jobs sent this
way; a Celery upgrade that changes the format fails those tests, not production.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid

__all__ = ["TASK_NAME", "train_message"]

TASK_NAME = "dnnq.train"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def _origin() -> str:
    return f"gen{os.getpid()}@{socket.gethostname()}"  # as Celery writes it: informational only


def train_message(job_id: str, queue: str) -> str:
    """The JSON to LPUSH onto the Redis list ``queue`` for a worker to run dnnq.train(job_id)."""
    task_id = str(uuid.uuid4())
    body = json.dumps([[job_id], {}, _EMBED]).encode()
    return json.dumps(
        {
            "body": base64.b64encode(body).decode("ascii"),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": TASK_NAME,
                "id": task_id,
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": task_id,
                "parent_id": None,
                "argsrepr": repr([job_id]),
                "kwargsrepr": "{}",
                "origin": _origin(),
                "ignore_result": None,
                "replaced_task_nesting": 0,
                "stamped_headers": None,
                "stamps": {},
            },
            "properties": {
                "correlation_id": task_id,
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )
