"""`python -m workers`: a Celery worker for the configured queues, plus the maintenance thread.

The main process never imports CuPy: it only consumes messages and forks a prefork child, which
imports models (and CUDA, for a gpu worker) when it trains. CUDA_VISIBLE_DEVICES is set here,
before anything forks, so each GPU worker sees exactly its device.
"""

from __future__ import annotations

import argparse
import os
import sys

from workers.settings import WorkerSettings, get_settings, set_settings

__all__ = ["main", "run_worker"]


def _preload_training_modules() -> None:
    """Import the training stack once, here, before Celery forks its pool children.

    Each prefork child (a new one every worker_max_tasks_per_child jobs) inherits the modules its
    parent has imported; left to itself it spent ~0.7 s of CPU importing them at its first job. On a
    2-core machine that starved the API: bench.load's submits stalled ~250 ms in bursts (its p99).
    Never CuPy: importing models does not import it (only a child asking for a GPU does), so CUDA
    is still initialised only after the fork.
    """
    import h5py  # noqa: F401
    import safetensors.numpy  # noqa: F401

    import models  # noqa: F401
    import workers.runner  # noqa: F401

    try:
        import workers.onnx_export  # noqa: F401
    except ImportError:  # onnx missing: artifacts.py skips the ONNX file the same way
        pass


def run_worker(settings: WorkerSettings | None = None) -> int:
    settings = settings or get_settings()
    set_settings(settings)  # the prefork children inherit these exact settings
    if settings.cuda_visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = settings.cuda_visible_devices

    from celery.signals import setup_logging as celery_setup_logging
    from celery.signals import worker_ready, worker_shutdown

    from workers.celery_app import app, configure
    from workers.logs import event, setup_logging
    from workers.recovery import Maintenance, celery_sender
    from workers.settings import redis_client

    setup_logging(settings.log_level)
    configure(app, settings)
    import workers.tasks  # noqa: F401  (registers dnnq.train)

    _preload_training_modules()

    state: dict = {}

    @celery_setup_logging.connect(weak=False)
    def _keep_json_logging(**_):  # a receiver here stops Celery from replacing our handlers
        setup_logging(settings.log_level)

    @worker_ready.connect(weak=False)
    def _start_maintenance(sender=None, **_):
        state["thread"] = Maintenance(redis_client(settings), settings, celery_sender(app))
        state["thread"].start()
        event("worker.ready", worker=settings.worker_name, queues=settings.queue_list, pid=os.getpid())

    @worker_shutdown.connect(weak=False)
    def _stop_maintenance(sender=None, **_):
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
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",  # liveness is our own dnnq:worker:{name} key and job leases
    ]
    try:
        app.worker_main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers", description="Run a dnnq training worker.")
    parser.add_argument("--queues", help="comma-separated queues (default: DNNQ_QUEUES or 'default'; a GPU worker: 'gpu')")
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
    settings = get_settings().model_copy(update=overrides) if overrides else get_settings()
    return run_worker(settings)


if __name__ == "__main__":
    sys.exit(main())
