"""ApiSettings: the one settings class of the API process (env prefix DNNQ_).

It extends WorkerSettings, so the API and the workers read the same limits, Redis URL and data
directory from the same variables; the fields below are the API's own.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from dnnq.workers.settings import WorkerSettings

__all__ = ["ApiSettings", "get_api_settings"]


class ApiSettings(WorkerSettings):
    """Settings read once per API process; tests pass their own instance to create_app()."""

    model_config = SettingsConfigDict(env_prefix="DNNQ_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Address `dnnq api` binds to.")
    port: int = Field(default=8000, ge=0, le=65535)
    cors_origins: str = Field(default="", description="Comma-separated origins allowed by CORS; empty = CORS off.")
    allowed_hosts: str = Field(
        default="",
        description="With API keys off: comma-separated Host names the API answers besides IP addresses and "
        "localhost ('*': any). Other names are a 400: a web page could point them at the API (DNS rebinding). "
        "With API keys on, any Host is answered.",
    )

    max_head_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Largest request line + headers (431 past it; service/http_protocol.py).",
    )
    head_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        allow_inf_nan=False,
        description="A connection whose request head is not complete this long after its first byte (or after "
        "the connection opened) is closed (service/http_protocol.py).",
    )

    # Authentication: "key1,key2" or "tenant:key,..." (or a file with one entry per line).
    api_keys: str | None = Field(default=None, repr=False)
    api_keys_file: str | None = Field(default=None)
    metrics_key: str | None = Field(
        default=None,
        repr=False,
        description="With API keys on, /metrics answers only 'Authorization: Bearer <this key>' (the "
        "operator's scraper): its figures span every tenant. Without API keys /metrics is open.",
    )

    # Request limits that only the API sees.
    max_json_body_bytes: int = Field(default=1024 * 1024, ge=1, description="Largest JSON body.")
    max_decompressed_bytes: int | None = Field(
        default=None,
        ge=1,
        description="Largest declared size of an upload's arrays (default 4 x max_upload_bytes).",
    )
    max_predict_examples: int = Field(default=10_000, ge=1)
    max_predict_body_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Largest binary predict body (.npy/.npz); its values, as float64, may take as much again.",
    )
    max_predict_values: int = Field(
        default=1_000_000,
        ge=1,
        description="Largest predict response, in rows x outputs (each output value is ~20 bytes of JSON).",
    )
    max_predict_model_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024 * 1024,
        description="Largest weights file the API loads to predict (per request, in the API process).",
    )

    # The sandboxed child that parses an upload (service/sandbox.py): hard limits of that process.
    parse_memory_bytes: int | None = Field(
        default=None,
        ge=64 * 1024 * 1024,
        description="Address space the parser child may add to what it starts with (RLIMIT_AS); "
        "default 2 x the declared-size limit + 256 MiB.",
    )
    parse_cpu_seconds: int = Field(default=120, ge=1, description="CPU seconds of the parser child (RLIMIT_CPU).")
    parse_wall_seconds: float = Field(default=180.0, gt=0, description="Wall-clock limit of the parser child.")
    max_dataset_bytes_per_tenant: int = Field(
        default=10 * 1024**3,
        ge=0,
        description="Stored bytes of one API key's datasets, summed (413 for an upload past it); 0: no quota.",
    )
    max_artifact_bytes_per_tenant: int = Field(
        default=32 * 1024**3,
        ge=0,
        description="Bytes one API key's jobs may keep in the artifact store, each job counted at the most its "
        "artifacts may take (workers/artifact_quota.py), from its submit until it is deleted (413 for a job or "
        "sweep past it); 0: no quota. The default has room for the largest job DNNQ_MAX_PARAMETERS allows.",
    )
    max_concurrent_parses: int = Field(
        default=4,
        ge=1,
        description="Uploads parsed and synthetic datasets generated at once by one API process (each may take "
        "its memory limit); a request past them waits a few seconds, then gets a 503 with Retry-After.",
    )
    max_expansion_ratio: float = Field(
        default=200.0,
        ge=1,
        allow_inf_nan=False,
        description="Largest ratio of an upload's declared array bytes to its size on the wire (compression "
        "and chunk bombs); uploads whose arrays declare under 64 MiB are not held to it.",
    )
    max_synthetic_samples: int = Field(default=1_000_000, ge=1)
    max_sweep_trials: int = Field(
        default=64, ge=1, le=4096, description="Most trials one POST /v1/sweeps may ask for (service/routes/sweeps.py)."
    )
    sweep_history_full_max_entries: int = Field(
        default=200_000,
        ge=1,
        description="Most epochs, over all its trials, GET /v1/sweeps/{id}?history=full answers (422 past it: "
        "each trial's /v1/jobs/{id}?history=full instead); the API holds them all at once.",
    )
    artifacts_redirect_seconds: int = Field(
        default=0,
        ge=0,
        le=7 * 24 * 3600,
        description="With an object store (DNNQ_ARTIFACTS_URL): answer a weights download with a 307 to a "
        "presigned URL valid this long, so the bytes skip the API. 0: stream them through the API.",
    )

    # Job views and streams.
    history_full_max: int = Field(
        default=1000, ge=2, description="Histories up to this many epochs are returned whole."
    )
    fast_lane: bool = Field(
        default=True,
        description="Answer status polls and valid submits below FastAPI (service/fastlane.py): "
        "the same responses for less CPU. false: every request goes through FastAPI's routes.",
    )
    sse_poll_seconds: float = Field(default=0.2, gt=0, description="How often /events polls Redis.")
    sse_keepalive_seconds: float = Field(default=15.0, gt=0)
    sse_max_stream_seconds: float = Field(
        default=3600.0, gt=0, description="An event stream ends after this long; the client reconnects."
    )
    max_streams_per_tenant: int = Field(
        default=64, ge=1, description="Event streams one API key may hold open in one API process (429 past it)."
    )

    redis_max_connections: int = Field(
        default=1024,
        ge=1,
        description="Connections the API process's asyncio Redis client may open. A request that finds them all "
        "in use waits (up to redis_socket_timeout) for one instead of failing: redis-py's default pool (100) "
        "raised MaxConnectionsError, answered as a 503 'Redis is unreachable', past 100 requests in flight.",
    )
    redis_socket_timeout: float = Field(
        default=5.0, gt=0, description="Redis socket timeout: a dead Redis gives a 503, not a hang."
    )
    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=1)
    worker_capacity_cache_seconds: float = Field(
        default=1.0,
        ge=0,
        description="How long an API process reuses the live workers' memory for the submit check "
        "(0: read it on every submit). Saves a Redis round trip per submit in a burst.",
    )

    @property
    def decompressed_limit(self) -> int:
        return self.max_decompressed_bytes or 4 * self.max_upload_bytes

    @property
    def parse_memory_limit(self) -> int:
        return self.parse_memory_bytes or 2 * self.decompressed_limit + 256 * 1024 * 1024

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]


@lru_cache(maxsize=1)
def get_api_settings() -> ApiSettings:
    """The process's settings, read once (create_app() without arguments uses them)."""
    return ApiSettings()
