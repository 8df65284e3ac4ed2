"""The "dnnq.train" task: takes a job id only, loads everything else itself."""

from __future__ import annotations

from typing import Any

from celery.signals import task_postrun, task_prerun

from dnnq.workers.celery_app import TASK_NAME, app
from dnnq.workers.logs import set_job

__all__ = ["train"]


@app.task(name=TASK_NAME, bind=True)
def train(self: Any, job_id: str) -> None:
    # Imported here: models (and CuPy, when present) load only in the child process that trains.
    from dnnq.workers.pack_runner import run_trial

    # a sweep trial trains with its pack's queued siblings (workers/pack_runner.py), any other job alone
    run_trial(job_id, celery_task_id=self.request.id)  # the job record keeps it (Flower, `celery events`)


@task_prerun.connect(weak=False)
def _log_job_id(sender: Any = None, args: Any = None, **_: Any) -> None:
    """Tag every log line of the task with its job_id, Celery's own 'succeeded' line included."""
    if getattr(sender, "name", None) == TASK_NAME and args:
        set_job(str(args[0]))


@task_postrun.connect(weak=False)
def _clear_job_id(**_: Any) -> None:
    set_job(None)
