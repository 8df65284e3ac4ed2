"""The Celery app, and the one way a job's message is sent. Imports without CuPy and never touches CUDA
(the API imports it to send tasks).

Each setting carries its reason. Our job record in Redis is the truth; Celery only delivers ids. A
message goes out through Celery's own send_task (its message format is Celery's business), after the
job is listed in the outbox (workers/jobs.py), and whoever sent it then marks it sent.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from dnnq.workers import keys
from dnnq.workers.settings import DEFAULT_REDIS_URL, WorkerSettings, get_settings

__all__ = ["NEW_JOB_PRIORITY", "RESUMED_JOB_PRIORITY", "TASK_NAME", "app", "configure", "sender_app", "send_train"]

TASK_NAME = "dnnq.train"
# A job that has trained before (released by a worker shutting down, or requeued after its worker died)
# goes ahead of jobs that never started: it holds a checkpoint and its client has waited longest.
# kombu's Redis transport serves priority 0 first (keys.BROKER_PRIORITY_STEPS).
RESUMED_JOB_PRIORITY = 0
NEW_JOB_PRIORITY = 3

app = Celery("dnnq")


def configure(celery: Celery, settings: WorkerSettings) -> None:
    broker = settings.redis_url or DEFAULT_REDIS_URL
    celery.conf.update(
        broker_url=broker,
        # No result backend: results are ignored; the job record (workers/jobs.py) is the truth.
        result_backend=None,
        task_ignore_result=True,
        # Acknowledge after the task returns, so a worker that dies mid-job leaves the message to be
        # redelivered; the job itself is resumed by the lease sweeper either way.
        task_acks_late=True,
        # A worker child killed by a signal (OOM, kill -9) rejects (requeues) its message instead of acking it.
        task_reject_on_worker_lost=True,
        # Take one message at a time: a long training job must not hold others hostage in a prefetch buffer.
        worker_prefetch_multiplier=1,
        # The Redis transport redelivers unacked messages after the visibility timeout; it must be longer
        # than the longest allowed job, or a running job would be delivered again (claim makes that harmless).
        # Priorities as kombu's Redis transport keeps them (one list per step; keys.queue_lists names them).
        broker_transport_options={
            "visibility_timeout": settings.max_job_seconds + 3600,
            "priority_steps": list(keys.BROKER_PRIORITY_STEPS),
            "sep": keys.BROKER_PRIORITY_SEP,
        },
        # Hard limit kills the child; the soft limit raises inside the task first so it can finish 'failed'.
        task_time_limit=settings.max_job_seconds + 60,
        task_soft_time_limit=settings.max_job_seconds,
        # Everything goes to 'default' unless sent to 'gpu' explicitly (send_task(..., queue=queue_for(spec))).
        task_default_queue="default",
        # Wait for Redis at start instead of crashing when the worker starts first (docker-compose).
        broker_connection_retry_on_startup=True,
        # JSON only: a message never carries pickled (executable) data.
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        # One training process per worker child; restart children that leak memory between jobs.
        worker_max_tasks_per_child=50,
        # Celery must not hijack the root logger: our runner writes JSON lines.
        worker_hijack_root_logger=False,
        # Task events for Flower / `celery events` only when asked (DNNQ_CELERY_EVENTS): our own liveness
        # is dnnq:worker:* (what /readyz reads); python -m dnnq.workers turns Celery's heartbeat on with them.
        # No task-sent events: the API's submit path would publish one per job, and Flower lists a task
        # from its task-received event on.
        worker_send_task_events=settings.celery_events,
        enable_utc=True,
    )


configure(app, get_settings())
# Register dnnq.train when a worker loads the app (tasks.py imports runner -> models lazily).
app.conf.imports = ("dnnq.workers.tasks",)

_SENDERS: dict[str, Celery] = {}


def sender_app(redis_url: str | None) -> Celery:
    """The Celery app that sends to the broker at redis_url: `app` when it is configured for it (a
    worker process), else one made for sending, once per URL in this process (the API, tests)."""
    url = redis_url or DEFAULT_REDIS_URL
    if app.conf.broker_url == url:
        return app
    sender = _SENDERS.get(url)
    if sender is None:
        sender = Celery("dnnq-sender")
        configure(sender, get_settings().model_copy(update={"redis_url": url}))
        sender = _SENDERS.setdefault(url, sender)
    return sender


def send_train(
    job_id: str, queue: str, celery: Celery | None = None, producer: Any = None, *, resumed: bool = False
) -> None:
    """Send dnnq.train(job_id) to `queue` through `celery` (default: this process's configured app;
    sender_app(url) for another broker), on `producer` when given (one of celery.producer_or_acquire(),
    e.g. inside its batch(), which publishes a run of messages in one round trip).

    A blocking kombu publish: an event loop calls it from a thread. The job must already be listed in
    the outbox (create_job, release, requeue_expired); the caller calls jobs.mark_sent after it.
    `resumed`: the job trained before; it goes ahead of new ones (RESUMED_JOB_PRIORITY)."""
    priority = RESUMED_JOB_PRIORITY if resumed else NEW_JOB_PRIORITY
    (celery or app).send_task(TASK_NAME, args=[job_id], queue=queue, producer=producer, priority=priority)
