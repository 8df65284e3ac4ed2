"""`python -m dnnq.workers`: a Celery worker for the configured queues, plus the maintenance thread.

The main process never imports CuPy: it only consumes messages and forks a prefork child, which
imports models (and CUDA, for a gpu worker) when it trains. CUDA_VISIBLE_DEVICES is set here,
before anything forks, so each GPU worker sees exactly its device.

Shutdown (SIGTERM, or Ctrl-C: SIGINT, which Celery's pool children ignore) is Celery's warm shutdown,
which waits for the running tasks. So that it does not wait for a whole training job, the main process
forwards it to its pool children as shutdown.RELEASE_SIGNAL: a training child stops at the end of its
epoch, checkpoints and releases the job (queued again with its message, its attempt not spent), and
its task returns normally, so the delivery is acknowledged and the job record alone says what is next.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
from typing import Any

from dnnq.workers.settings import WorkerSettings, get_settings, set_settings, settings_error_line

__all__ = ["main", "preload_training_modules", "run_worker"]


def preload_training_modules() -> None:
    """Import the training stack once, here, before Celery forks its pool children.

    Each prefork child (a new one every worker_max_tasks_per_child jobs) inherits the modules its
    parent has imported; left to itself it imported them at its first job, CPU that a small machine's
    API then lacked (docs/perf.md, "Worker"). Never CuPy: importing models does not import it (only a
    child asking for a GPU does), so CUDA is still initialised only after the fork.
    """
    import h5py  # noqa: F401
    import safetensors.numpy  # noqa: F401

    import dnnq.models
    import dnnq.workers.runner

    with contextlib.suppress(ImportError):  # onnx missing: artifacts.py skips the ONNX file the same way
        import dnnq.workers.onnx_export  # noqa: F401


def run_worker(settings: WorkerSettings | None = None) -> int:
    """Run a Celery worker with these settings (default: from the environment) until it shuts down."""
    settings = settings or get_settings()
    from dnnq.workers.artifact_store import StoreConfigError, open_store

    try:  # a malformed DNNQ_ARTIFACTS_URL, a missing bucket, refused credentials: one line, no worker
        open_store(settings).check()
    except StoreConfigError as exc:
        print(f"dnnq worker: error: {exc}", file=sys.stderr, flush=True)
        return 2
    set_settings(settings)  # the prefork children inherit these exact settings
    if settings.cuda_visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = settings.cuda_visible_devices

    from celery.signals import setup_logging as celery_setup_logging
    from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown, worker_shutting_down

    from dnnq.workers.celery_app import app, configure
    from dnnq.workers.logs import event, setup_logging
    from dnnq.workers.recovery import Maintenance, celery_sender
    from dnnq.workers.settings import redis_client
    from dnnq.workers.shutdown import RELEASE_SIGNAL, install_release_handler

    setup_logging(settings.log_level)
    configure(app, settings)
    import dnnq.workers.tasks  # noqa: F401  (registers dnnq.train)

    preload_training_modules()

    state: dict[str, Any] = {}

    @celery_setup_logging.connect(weak=False)
    def _keep_json_logging(**_: Any) -> None:  # a receiver here stops Celery from replacing our handlers
        setup_logging(settings.log_level)

    @worker_ready.connect(weak=False)
    def _start_maintenance(sender: Any = None, **_: Any) -> None:
        state["thread"] = Maintenance(redis_client(settings), settings, celery_sender(app))
        state["thread"].start()
        event("worker.ready", worker=settings.worker_name, queues=settings.queue_list, pid=os.getpid())

    @worker_init.connect(weak=False)
    def _keep_worker(sender: Any = None, **_: Any) -> None:
        state["worker"] = sender

    @worker_process_init.connect(weak=False)
    def _child_releases_on_signal(**_: Any) -> None:  # in each pool child, before it takes a task
        install_release_handler()
        # fit's one-time costs (Numba's kernels, the BLAS pool) paid while the child waits for a job;
        # a thread: Celery kills a child whose start takes longer than worker_proc_alive_timeout
        threading.Thread(target=_warm_up, name="dnnq-warm-up", daemon=True).start()

    @worker_shutting_down.connect(weak=False)
    def _release_running_jobs(
        sig: Any = None, how: Any = None, **_: Any
    ) -> None:  # in the main process's signal handler
        pids = _pool_pids(state.get("worker"))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, RELEASE_SIGNAL)
        event("worker.shutting_down", signal=sig, how=how, children_told=len(pids))

    @worker_shutdown.connect(weak=False)
    def _stop_maintenance(sender: Any = None, **_: Any) -> None:
        if "thread" in state:
            state["thread"].stop()

    argv = [
        "--quiet",  # no ASCII banner: stdout/stderr carry JSON lines only
        "worker",
        "--pool=prefork",  # training runs in a forked child: CUDA is initialised only there
        f"--concurrency={settings.concurrency}",  # one training process per GPU (default 1)
        f"--queues={','.join(settings.queue_list)}",
        f"--hostname={settings.worker_name}@%h",
        f"--loglevel={settings.log_level}",
        "--without-gossip",  # no worker listens to the others: it would read every event of every worker
        "--without-mingle",  # nothing to sync at start: revokes are never used, and job state is in Redis
    ]
    if not settings.celery_events:  # Flower's "online" needs Celery's worker heartbeat (DNNQ_CELERY_EVENTS)
        argv.append("--without-heartbeat")  # liveness is our own dnnq:worker:{name} key and job leases
    try:
        app.worker_main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _warm_up() -> None:
    from dnnq.models import warm_up
    from dnnq.workers.logs import event

    try:
        event("worker.warmed_up", seconds=round(warm_up(), 3))
    except Exception as exc:  # a cold first job is slower, never wrong
        event("worker.warm_up_failed", error=repr(exc))


def _pool_pids(worker: Any) -> list[int]:
    """The prefork pool's child processes (the pool's own list; billiard's children as a fallback)."""
    try:
        return [p.pid for p in worker.pool._pool._pool if p.pid]
    except AttributeError:
        from billiard.process import active_children

        return [p.pid for p in active_children() if p.pid]


def main(argv: list[str] | None = None) -> int:
    """`python -m dnnq.workers [--queues Q] [--concurrency N] [--name NAME] [--gpu DEVICES]`."""
    parser = argparse.ArgumentParser(prog="python -m dnnq.workers", description="Run a dnnq training worker.")
    parser.add_argument(
        "--queues", help="comma-separated queues (default: DNNQ_QUEUES or 'default'; a GPU worker: 'gpu')"
    )
    parser.add_argument("--concurrency", type=int, help="training processes (default: DNNQ_CONCURRENCY or 1)")
    parser.add_argument("--name", help="worker name (default: DNNQ_WORKER_NAME or host-pid)")
    parser.add_argument("--gpu", help="CUDA_VISIBLE_DEVICES for this worker, e.g. 0")
    args = parser.parse_args(argv)
    overrides = {
        k: v
        for k, v in {
            "queues": args.queues,
            "concurrency": args.concurrency,
            "worker_name": args.name,
            "cuda_visible_devices": args.gpu,
        }.items()
        if v is not None
    }
    try:
        base = get_settings()
    except ValueError as exc:  # pydantic's ValidationError: a bad DNNQ_* value refuses to start, in one line
        print(f"dnnq worker: {settings_error_line(exc)}", file=sys.stderr)
        return 2
    return run_worker(base.model_copy(update=overrides) if overrides else base)


if __name__ == "__main__":
    sys.exit(main())
