"""dnnq workers: the job state machine, artifact store, Celery tasks and the worker process.

Importing this package is cheap and never touches CUDA: the API imports workers.jobs,
workers.datasets, workers.spec and workers.celery_app to enqueue work by task name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dnnq.workers.settings import WorkerSettings

__all__ = ["main", "run_worker"]


def main(argv: list[str] | None = None) -> int:
    """`python -m dnnq.workers` / `dnnq worker`: start a Celery worker for the configured queues."""
    from dnnq.workers.__main__ import main as _main

    return _main(argv)


def run_worker(settings: WorkerSettings | None = None) -> int:
    """Run a worker process with these WorkerSettings (default: from the environment)."""
    from dnnq.workers.__main__ import run_worker as _run_worker

    return _run_worker(settings)
