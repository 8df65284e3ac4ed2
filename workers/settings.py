"""WorkerSettings: the one settings class of a worker process (env prefix DNNQ_)."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    import redis

__all__ = [
    "DEFAULT_REDIS_URL",
    "WorkerSettings",
    "get_settings",
    "redis_client",
    "redis_client_options",
    "reset_settings",
    "set_settings",
    "settings_error_line",
]


class WorkerSettings(BaseSettings):
    """Settings read once per process from DNNQ_* environment variables."""

    model_config = SettingsConfigDict(env_prefix="DNNQ_", extra="ignore")

    redis_url: str | None = Field(
        default=None, description="Redis URL; unset means the embedded server started by `dnnq up`."
    )
    data_dir: Path = Field(default=Path("./dnnq-data"), description="Artifact store root.")
    artifacts_url: str | None = Field(
        default=None,
        description="s3://bucket/prefix (gs://, az://): artifacts in that object store, endpoint and credentials "
        "from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION; data_dir then holds only "
        "upload staging files and a worker's dataset cache. Unset: data_dir/artifacts.",
    )
    artifacts_retry_seconds: float = Field(
        default=60.0,
        ge=0,
        allow_inf_nan=False,
        description="How long an object-store request is retried (back-off) before the job fails: an outage "
        "shorter than this only delays a checkpoint.",
    )
    dataset_cache_bytes: int = Field(
        default=2 * 1024**3, ge=0, description="Most bytes of datasets a worker keeps from the object store."
    )
    lease_seconds: float = Field(default=60.0, gt=0, description="How long a dead worker's job waits.")
    heartbeat_seconds: float | None = Field(default=None, gt=0, description="Lease renewal period (default lease/4).")
    checkpoint_every: int | None = Field(
        default=None,
        ge=1,
        description="Default checkpoint period in epochs; unset: by time (checkpoint_seconds).",
    )
    checkpoint_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Without an epoch period (here or in the job's spec), a checkpoint at the first epoch "
        "that ends this long after the last one: a crash loses at most about this much training.",
    )
    progress_flush_seconds: float = Field(
        default=0.1,
        ge=0,
        description="A training job writes its finished epochs to Redis at most this often (one round trip "
        "for all of them; 0 = after every epoch). Cancellation is seen at the next write.",
    )
    max_attempts: int = Field(
        default=3,
        ge=0,
        description="Starts of one job before the sweeper fails it instead of requeueing (0 = no limit).",
    )
    max_job_seconds: int = Field(default=6 * 3600, ge=1, description="Hard time limit of one job.")
    retention_days: float = Field(
        default=0.0,
        ge=0,
        le=36_500,  # a century; 1e308 days would overflow the sweeper's milliseconds
        allow_inf_nan=False,
        description="Finished jobs (succeeded, failed, cancelled) are deleted this many days after they ended, "
        "record, history and artifacts, by the workers' sweeper, as DELETE /v1/jobs/{id} does; 0 = kept for ever. "
        "A fraction is allowed (0.5 = 12 hours).",
    )

    # Limits (the API enforces them at submit time; workers read them too).
    max_upload_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    max_examples: int = Field(default=10_000_000, ge=1)
    max_features: int = Field(default=1_000_000, ge=1)
    max_parameters: int = Field(default=500_000_000, ge=1)
    max_epochs: int = Field(default=100_000, ge=1)
    max_classes: int = Field(
        default=1000,
        ge=2,
        description="Most classes (or output columns) a dataset may have: bounds a model's output layer "
        "and every predict response.",
    )
    max_queued_jobs_per_tenant: int = Field(default=100, ge=1)
    max_workers_per_tenant: int = Field(
        default=0,
        ge=0,
        description="Most worker processes one tenant's jobs may occupy at once (a sweep pack is one process); "
        "past it a job stays queued and the sweeper sends it again. 0: no cap.",
    )
    worker_memory_bytes: int | None = Field(default=None, ge=1)
    fit_path: Literal["auto", "textbook"] = Field(
        default="auto",
        description="'textbook' keeps every fit on the textbook path; 'auto' lets fit train layer 1 on the "
        "Gram path where that is exact and cheaper (models/gram.py).",
    )

    # Worker process.
    queues: str = Field(default="default", description="Comma-separated queues; a GPU worker uses 'gpu'.")
    concurrency: int = Field(default=1, ge=1, description="Training processes per worker (one per GPU).")
    worker_name: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="Name in dnnq:worker:{name}; unique per worker process.",
    )
    cuda_visible_devices: str | None = Field(
        default=None, description="Set CUDA_VISIBLE_DEVICES for a gpu worker before anything forks."
    )
    log_level: str = Field(default="INFO")
    celery_events: bool = Field(
        default=False,
        description="Send Celery's monitoring events (task received/started/succeeded, worker online and a "
        "heartbeat every 2 s) so that Flower or `celery events` see the workers and their tasks.",
    )

    @model_validator(mode="after")
    def _default_heartbeat(self) -> WorkerSettings:
        if self.heartbeat_seconds is None:
            self.heartbeat_seconds = self.lease_seconds / 4
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError(
                f"The 'heartbeat_seconds' parameter must be < lease_seconds ({self.lease_seconds}). "
                f"Got {self.heartbeat_seconds} instead."
            )
        return self

    @property
    def queue_list(self) -> list[str]:
        return [q.strip() for q in self.queues.split(",") if q.strip()]

    @property
    def lease_ms(self) -> int:
        return int(self.lease_seconds * 1000)


def settings_error_line(exc: Exception) -> str:
    """A settings ValidationError in one line, naming each variable: for a process that refuses to start."""
    errors = getattr(exc, "errors", None)
    if errors is None:
        return str(exc).splitlines()[0]
    parts = []
    for err in errors():
        loc = "_".join(str(p) for p in err.get("loc", ()))
        given = f"={err['input']!r}" if loc and "input" in err else ""
        parts.append(f"DNNQ_{loc.upper()}{given}: {err['msg']}" if loc else str(err["msg"]))
    return "; ".join(parts)


@lru_cache(maxsize=1)
def get_settings() -> WorkerSettings:
    """The process's settings, read once. Tests call reset_settings() after changing the env."""
    return _override or WorkerSettings()


def reset_settings() -> None:
    """Forget the settings read, so that the next get_settings() reads the environment again."""
    get_settings.cache_clear()


def redis_client(settings: WorkerSettings | None = None) -> redis.Redis:
    """A decode_responses Redis client for settings.redis_url (redis://127.0.0.1:6379/0 if unset)."""
    import redis

    settings = settings or get_settings()
    return redis.Redis.from_url(
        settings.redis_url or DEFAULT_REDIS_URL, decode_responses=True, **redis_client_options()
    )


@lru_cache(maxsize=1)
def redis_client_options() -> dict[str, Any]:
    """Keyword arguments every dnnq Redis client takes (sync and asyncio alike).

    redis-py 8 resolves its own version for CLIENT SETINFO in every new connection's constructor
    (importlib.metadata parses the wheel's METADATA) unless the client is given a DriverInfo, resolved
    once here: a burst of requests that grows a pool paid it per connection, on the event loop
    (docs/perf.md, "Worker"). Versions without DriverInfo read their version once, at import.
    """
    try:
        from redis.driver_info import DriverInfo
    except ImportError:
        return {}
    return {"driver_info": DriverInfo()}


DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def set_settings(settings: WorkerSettings) -> None:
    """Make `settings` what get_settings() returns in this process (and in children it forks)."""
    global _override
    _override = settings
    reset_settings()


_override: WorkerSettings | None = None  # set_settings(): what get_settings() returns instead of the env
