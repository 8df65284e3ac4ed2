"""The "dnnq.train" task: takes a job id only, loads everything else itself."""

from __future__ import annotations

from workers.celery_app import app

__all__ = ["train"]


@app.task(name="dnnq.train")
def train(job_id: str) -> None:
    # Imported here: models (and CuPy, when present) load only in the child process that trains.
    from workers.runner import run_job

    run_job(job_id)
