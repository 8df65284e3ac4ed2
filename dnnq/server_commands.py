"""The server commands of `dnnq`: `up` (everything, supervised: dnnq/up.py), `api` and `worker` alone.

Each imports what it runs only when called, so that `dnnq --help` and the client commands stay light.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from dnnq.client import CliError

__all__ = ["cmd_api", "cmd_up", "cmd_worker", "worker_env"]


def _require_redis_url() -> str:
    url = os.environ.get("DNNQ_REDIS_URL", "").strip()
    if not url:
        raise CliError(
            "DNNQ_REDIS_URL is not set: point it at your Redis (e.g. redis://127.0.0.1:6379/0), "
            "or run everything at once with `dnnq up`",
            exit_code=2,
        )
    return url


def _settings() -> object:
    """The API's settings (a superset of the workers'), read from DNNQ_*; a bad value refuses to start in
    one line naming the variable and what it allows (as `dnnq worker` does), not pydantic's traceback."""
    from dnnq.service.settings import ApiSettings
    from dnnq.workers.settings import settings_error_line

    try:
        return ApiSettings()
    except ValueError as exc:  # pydantic's ValidationError
        raise CliError(settings_error_line(exc), exit_code=2) from None


def cmd_up(args: argparse.Namespace) -> int:
    from dnnq.up import UpOptions, default_api_workers, run_up

    _settings()  # before Redis, the workers and the API start: each would fail alone, in its own traceback
    options = UpOptions(
        host=args.host,
        port=args.port,
        data_dir=Path(args.data_dir),
        workers=args.workers,
        queues=args.queues,
        allow_remote_without_keys=args.allow_remote_without_keys,
        grace_s=args.grace,
        api_workers=args.api_workers or default_api_workers(),
        access_log=args.access_log,
    )
    return run_up(options)


def _require_store(settings: object) -> None:
    """Refuse to start, in one line, when the artifact store cannot be used (DNNQ_ARTIFACTS_URL)."""
    from dnnq.workers.artifact_store import StoreConfigError, open_store

    try:
        open_store(settings).check()  # type: ignore[arg-type]
    except StoreConfigError as exc:
        raise CliError(str(exc), exit_code=2) from None


def cmd_api(args: argparse.Namespace) -> int:
    from dnnq.up import check_bind_allowed

    settings = _settings()
    _require_redis_url()
    _require_store(settings)
    note = check_bind_allowed(args.host, args.allow_remote_without_keys)
    if note:
        print(f"dnnq: {note}", file=sys.stderr, flush=True)
    import uvicorn

    from dnnq.service.http_protocol import HTTP_PROTOCOL  # limits on each request head

    uvicorn.run("dnnq.service.app:create_app", factory=True, host=args.host, port=args.port, http=HTTP_PROTOCOL)
    return 0


def worker_env(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment `dnnq worker` runs `python -m dnnq.workers` with (queues, GPU, concurrency, name)."""
    env = dict(os.environ if env is None else env)
    queues = args.queues
    if args.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = env["DNNQ_CUDA_VISIBLE_DEVICES"] = str(args.gpu)
        queues = queues or "gpu"
    env["DNNQ_QUEUES"] = queues or "default"
    env["DNNQ_CONCURRENCY"] = str(args.concurrency)
    if args.name:
        env["DNNQ_WORKER_NAME"] = args.name
    return env


def cmd_worker(args: argparse.Namespace) -> int:
    _require_redis_url()
    env = worker_env(args)
    argv = [sys.executable, "-m", "dnnq.workers"]
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)  # the worker takes this pid: signals reach Celery directly
    return 0  # not reached
