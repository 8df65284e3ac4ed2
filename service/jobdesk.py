"""The job desk: what POST /v1/jobs and GET /v1/jobs/{id} do once the request is parsed.

The routes (service/routes/jobs.py) and the fast lane (service/fastlane.py) both call a JobDesk, so
they cannot drift apart. It owns what the submit path keeps between requests: the dataset records it
has read, the live workers' capacity per queue, the Redis reads that concurrent requests share, and the
thread that sends the jobs' Celery messages.

A submit writes the job into the outbox (jobs.create_job_async), then sends its message with Celery's
own send_task and marks it sent (TaskSender). If the process dies in between, the workers' sweeper
sends it (workers/recovery.py); a job sent twice is claimed once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from starlette.concurrency import run_in_threadpool

from dnnq.service.errors import Problem, field_error
from dnnq.service.idempotency import reserve
from dnnq.service.schemas import FiniteJSONResponse, job_view, thin_history
from dnnq.service.settings import ApiSettings
from dnnq.workers import datasets, jobs, keys
from dnnq.workers.artifact_quota import max_artifact_bytes
from dnnq.workers.artifact_store import ArtifactStore, open_store
from dnnq.workers.celery_app import send_train, sender_app
from dnnq.workers.recovery import live_workers_async
from dnnq.workers.spec import JobSpec, SpecError, queue_for, to_train_config

__all__ = ["DATASET_CACHE_SIZE", "HistoryChoice", "JobDesk", "TaskSender", "job_not_found"]

log = logging.getLogger("dnnq.api")

# Dataset records a desk keeps (see JobDesk.dataset); a few hundred bytes each.
DATASET_CACHE_SIZE = 4096
HistoryChoice = Literal["thin", "full", "none"]


def job_not_found(job_id: str) -> Problem:
    shown = job_id if len(job_id) <= 64 else job_id[:64] + "..."  # a client's 10,000-character id is not echoed
    return Problem(404, f"No job with id '{shown}'.")


class TaskSender:
    """Sends new jobs' dnnq.train messages and marks them sent, on a thread of its own: Celery's send_task
    is a blocking kombu publish, and the event loop must not wait on it.

    Requests queue their job here and await it; the thread takes every job queued meanwhile in one go,
    publishes them on one producer in one round trip, marks them all sent with one ZREM and wakes each
    waiting loop once. A send that fails leaves its jobs in the outbox, for the sweeper
    (workers/recovery.py); the request still answers 202."""

    def __init__(self, r: Any, redis_url: str | None) -> None:
        self.r, self.redis_url = r, redis_url
        self._lock = threading.Lock()
        self._queued: list[tuple[str, str, asyncio.Future]] = []
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._warmed = threading.Event()

    async def send(self, job_id: str, queue: str) -> bool:
        """Queue the job for the sender's thread and wait until it is sent (True) or left to the
        sweeper (False)."""
        done = asyncio.get_running_loop().create_future()
        with self._lock:
            self._queued.append((job_id, queue, done))
            self._start(warm=False)
        self._wake.set()
        return await done

    def start(self) -> threading.Event:
        """Start the thread now (the API's start-up): it first connects to the broker and loads what
        Celery loads on a first send (its result backend, the queues' declarations), so a process's
        first submits do not wait for that. Returns an event set once it has (or has given up)."""
        with self._lock:
            self._start(warm=True)
        return self._warmed

    def _start(self, warm: bool) -> None:
        if self._thread is None:
            self._closing = False
            self._thread = threading.Thread(target=self._run, args=(warm,), name="dnnq-send", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Send what is queued, then stop the thread (a later send starts another)."""
        with self._lock:
            thread, self._closing = self._thread, True
        self._wake.set()
        if thread is not None:
            thread.join()

    def _publish(self, batch: list[tuple[str, str, asyncio.Future]]) -> bool:
        """Send the batch's messages on one producer, in one round trip where kombu can (its
        Producer.batch, kombu >= 5.7); False when any failed: the whole batch stays in the outbox."""
        celery = sender_app(self.redis_url)
        try:
            with celery.producer_or_acquire() as producer:
                batching = getattr(producer, "batch", None)
                with batching() if batching is not None else contextlib.nullcontext():
                    for job_id, queue, _ in batch:
                        send_train(job_id, queue, celery, producer)
        except Exception:
            log.warning("sending %d jobs failed; the sweeper will send them", len(batch), exc_info=True)
            return False
        return True

    def _warm(self) -> None:
        celery = sender_app(self.redis_url)
        with celery.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=0)  # no broker: no waiting here
            celery.backend  # noqa: B018  (loads the result backend: Celery does it on a first send)
            for queue in keys.QUEUES:
                producer.maybe_declare(celery.amqp.queues[queue])

    def _run(self, warm: bool) -> None:
        if warm:
            try:
                self._warm()
            except Exception:  # the broker is not there yet: the first send connects
                log.debug("sender warm-up failed", exc_info=True)
            self._warmed.set()
        while True:
            self._wake.wait()
            with self._lock:
                self._wake.clear()  # under the lock: a job queued after this sets it again
                batch, self._queued = self._queued, []
                if not batch:
                    if self._closing:
                        self._thread = None
                        return
                    continue
            sent = self._publish(batch)
            if sent:
                try:
                    jobs.mark_sent(self.r, *(job_id for job_id, _, _ in batch))
                except Exception:  # sent but still listed: the sweeper sends them again, a harmless duplicate
                    log.warning("marking %d jobs sent failed", len(batch), exc_info=True)
            self._resolve(batch, sent)

    @staticmethod
    def _resolve(batch: list[tuple[str, str, asyncio.Future]], sent: bool) -> None:
        """Wake each waiting event loop once."""
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future]] = {}
        for _, _, done in batch:
            by_loop.setdefault(done.get_loop(), []).append(done)
        for loop, waiting in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits any more
                loop.call_soon_threadsafe(_set_results, waiting, sent)


def _set_results(waiting: list[asyncio.Future], sent: bool) -> None:
    for done in waiting:
        if not done.done():  # (a waiter whose request was cancelled)
            done.set_result(sent)


class JobDesk:
    """Submit and read jobs for one API process. `clock`, `read_dataset` and `read_workers` are the
    seams tests replace (the worker-capacity cache's clock, and the two Redis reads it caches)."""

    def __init__(self, settings: ApiSettings, r: Any, async_redis: Any, *, sender: TaskSender | None = None) -> None:
        self.settings, self.r, self.async_redis = settings, r, async_redis
        self.sender = sender or TaskSender(r, settings.redis_url)
        self.clock: Callable[[], float] = time.monotonic
        self.read_dataset: Callable[[Any, str], Awaitable[dict | None]] = datasets.get_dataset_async
        self.read_workers: Callable[[Any], Awaitable[list[dict]]] = live_workers_async
        self.dataset_records: dict[str, dict] = {}  # id -> record
        self.worker_capacity: dict[str, tuple] = {}  # queue -> (read at, served, capacity)
        self.reads_in_flight: dict[tuple, asyncio.Future] = {}  # key -> the read requests share
        self._store: ArtifactStore | None = None

    @property
    def store(self) -> ArtifactStore:
        """The artifact store finished jobs' histories are read from (opened on first use)."""
        if self._store is None:
            self._store = open_store(self.settings)
        return self._store

    def close(self) -> None:
        self.sender.close()

    # --- reads the submit path shares and keeps -----------------------------------------------

    async def _read_once(self, key: tuple, read: Callable[[], Awaitable[Any]]) -> Any:
        """Await ``read()``, one call per key at a time in this process: requests that miss a cache
        together share one Redis read instead of each making its own. Shielded, so a waiter whose client
        goes away does not cancel the read the others wait on."""
        in_flight = self.reads_in_flight
        task = in_flight.get(key)
        if task is None or task.get_loop() is not asyncio.get_running_loop():  # (a test client's loop per request)
            task = in_flight[key] = asyncio.ensure_future(read())

            def done(finished: asyncio.Future) -> None:
                if in_flight.get(key) is finished:
                    del in_flight[key]
                if not finished.cancelled():
                    finished.exception()  # retrieved here too, for when every waiter has gone

            task.add_done_callback(done)
        return await asyncio.shield(task)

    async def dataset(self, ar: Any, dataset_id: str, tenant: str) -> dict | None:
        """The dataset's record, from this desk's cache once read: a record never changes after it is
        written (its id is the hash of its tenant and content), so only the tenant check is repeated. A
        deleted one may still be cached here: create_job checks that it exists in its own script
        (require_datasets), and the desk then forgets it. Absent ids are not cached: the dataset may be
        uploaded a moment later."""
        cache = self.dataset_records
        meta = cache.get(dataset_id)
        if meta is None:
            meta = await self._read_once(("dataset", dataset_id), lambda: self.read_dataset(ar, dataset_id))
            if meta is None:
                return None
            if len(cache) >= DATASET_CACHE_SIZE:
                cache.pop(next(iter(cache)))  # the oldest entry
            cache[dataset_id] = meta
        return meta if meta.get("tenant") == tenant else None

    async def queue_workers(self, ar: Any, queue: str) -> tuple[bool, tuple[int, str] | None]:
        """(whether a live worker serves `queue`, the memory one job may use there): the largest such
        worker's GPU memory for the gpu queue, its host memory otherwise; None when none says.

        Read from Redis at most once per DNNQ_WORKER_CAPACITY_CACHE_SECONDS: workers come and go on a
        scale of seconds, not milliseconds. "No worker" is never taken from the cache: it refuses the
        submit, and a worker that started a moment ago must count."""
        cache = self.worker_capacity
        now = self.clock()
        cached = cache.get(queue)
        if cached is not None and cached[1] and now - cached[0] < self.settings.worker_capacity_cache_seconds:
            return cached[1], cached[2]
        field = "gpu_memory_total" if queue == "gpu" else "memory_bytes"

        async def read() -> tuple[bool, tuple[int, str] | None]:
            serving = [w for w in await self.read_workers(ar) if queue in (w.get("queues") or "").split(",")]
            sizes = [int(w[field]) for w in serving if (w.get(field) or "").isdigit()]
            capacity = (max(sizes), f"the largest live '{queue}' worker's memory") if sizes else None
            cache[queue] = (now, bool(serving), capacity)
            return bool(serving), capacity

        return await self._read_once(("worker capacity", queue), read)

    # --- POST /v1/jobs ----------------------------------------------------------------------------

    async def _check_limits(self, ar: Any, spec: JobSpec, cfg: Any, meta: dict, val_meta: dict | None = None) -> None:
        """Epochs, parameters, a live worker for the job's queue, memory (``val_meta``: the validation
        set's record, whose rows the job holds and scores too); the per-tenant job limit and artifact
        quota are checked by create_job itself."""
        settings = self.settings
        if spec.training.epochs > settings.max_epochs:
            raise field_error(
                "training.epochs",
                f"{spec.training.epochs} epochs is over the limit of "
                f"{settings.max_epochs} (DNNQ_MAX_EPOCHS); train fewer epochs.",
            )
        n_params = cfg.parameter_count()
        if n_params > settings.max_parameters:
            raise field_error(
                "model.hidden_layers",
                f"this network has {n_params} parameters; the limit is "
                f"{settings.max_parameters} (DNNQ_MAX_PARAMETERS). Use fewer or smaller hidden layers.",
            )
        capacity = None
        if not (spec.wait_for_worker and settings.worker_memory_bytes):  # else nothing below needs the workers
            queue = queue_for(spec)
            served, capacity = await self.queue_workers(ar, queue)
            if not served and not spec.wait_for_worker:
                raise _no_worker(queue)
        if settings.worker_memory_bytes:
            capacity = settings.worker_memory_bytes, "DNNQ_WORKER_MEMORY_BYTES"
        if capacity is not None:
            n_val = int(val_meta["n_examples"]) if val_meta else 0
            need = cfg.estimate_memory_bytes(int(meta["n_examples"]), n_val)
            if need > capacity[0]:
                raise field_error(
                    "training.batch_size",
                    f"training needs about {need} bytes, more than {capacity[0]} ({capacity[1]}). "
                    "Set a smaller training.batch_size, use float32, or shrink the network.",
                )

    async def _create(
        self, ar: Any, spec: JobSpec, body: dict, tenant: str, idempotency_key: str | None = None
    ) -> dict:
        """Check the spec against its datasets and the limits, then write the job (into the outbox)."""
        meta = await self.dataset(ar, spec.dataset_id, tenant)
        if meta is None:
            raise field_error(
                "dataset_id", f"no dataset with id '{spec.dataset_id}'; upload one with POST /v1/datasets."
            )
        val_meta = None
        if spec.validation_dataset_id is not None:
            val_meta = await self.dataset(ar, spec.validation_dataset_id, tenant)
            if val_meta is None:
                raise field_error("validation_dataset_id", f"no dataset with id '{spec.validation_dataset_id}'.")
        try:
            cfg = to_train_config(spec, meta, val_meta)
        except SpecError as exc:
            raise field_error(exc.field, exc.message) from None
        await self._check_limits(ar, spec, cfg, meta, val_meta)
        try:
            return await jobs.create_job_async(
                ar,
                tenant=tenant,
                spec=body,
                queue=queue_for(spec),
                dataset_id=spec.dataset_id,
                validation_dataset_id=spec.validation_dataset_id,
                max_unfinished=self.settings.max_queued_jobs_per_tenant,
                require_datasets=True,
                idempotency_key=idempotency_key,
                artifact_bytes=max_artifact_bytes(cfg, meta.get("classes")),
                max_artifact_bytes=self.settings.max_artifact_bytes_per_tenant,
            )
        except jobs.TooManyUnfinished as exc:
            raise _too_many(self.settings, exc.unfinished) from None
        except jobs.ArtifactQuotaExceeded as exc:  # 413, as the dataset quota answers: the same kind of refusal
            raise Problem(413, str(exc)) from None
        except jobs.DatasetMissing as exc:  # deleted since this desk cached its record
            for dataset_id in exc.dataset_ids:
                self.dataset_records.pop(dataset_id, None)
            raise field_error("dataset_id", f"{exc} It was deleted; upload it again with POST /v1/datasets.") from None

    async def submit(self, spec: JobSpec, tenant: str, idempotency_key: str | None) -> FiniteJSONResponse:
        """POST /v1/jobs's work once the body is a valid JobSpec: the 202 with the new (or, for a replayed
        Idempotency-Key, the original) job, or a Problem.

        On the asyncio Redis client: a submit makes one or two round trips on the event loop (the create
        script; the live workers at most once a second), then the send on the sender's thread. The
        Idempotency-Key path is rarer and stays on the sync client in the thread pool."""
        ar = self.async_redis.get()
        body = spec.model_dump(mode="json")
        reservation = None
        if idempotency_key is not None:
            # Idempotency first: a replay returns the original job even if the limits would now refuse a new one.
            body_sha = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
            reservation, replay_id = await run_in_threadpool(
                reserve,
                self.r,
                tenant=tenant,
                route="jobs",
                key=idempotency_key,
                body_sha256=body_sha,
                ttl=self.settings.idempotency_ttl_seconds,
            )
            if replay_id is not None and (job := await jobs.get_job_async(ar, replay_id, tenant)) is not None:
                return _accepted(job, None)
        try:
            job = await self._create(ar, spec, body, tenant, reservation.redis_key if reservation else None)
        except BaseException:  # a refused or failed submit frees its key: the client may fix the body and retry
            if reservation:
                await run_in_threadpool(reservation.release)
            raise
        await self.sender.send(job["id"], job["queue"])
        if reservation:
            await run_in_threadpool(reservation.complete, job["id"])
        return _accepted(job, [])

    # --- GET /v1/jobs/{id} ------------------------------------------------------------------------

    async def view(self, job_id: str, tenant: str, history: HistoryChoice) -> dict | None:
        """GET /v1/jobs/{id}'s body, None when the caller may not see such a job."""
        ar = self.async_redis.get()
        job = await jobs.get_job_async(ar, job_id, tenant)
        if job is None:
            return None
        hist = None
        if history != "none":
            hist = await jobs.get_history_async(ar, job_id, store=self.store, job=job)
            if history == "thin":
                hist = thin_history(hist, self.settings.history_full_max)
        return job_view(job, hist)


def _no_worker(queue: str) -> Problem:
    if queue == "gpu":
        return field_error(
            "device",
            "no live worker serves the 'gpu' queue, so this job would wait with nothing to run it. "
            "Start one with `dnnq worker --queues gpu --gpu 0` (or `dnnq up --queues default,gpu`), use device "
            "'auto' to train on a CPU worker, or send \"wait_for_worker\": true to queue the job until a GPU "
            "worker starts.",
        )
    return field_error(
        "wait_for_worker",
        f"no live worker serves the '{queue}' queue, so this job would wait with nothing to "
        f'run it. Start one with `dnnq worker --queues {queue}` (or `dnnq up`), or send "wait_for_worker": '
        "true to queue the job until one starts.",
    )


def _too_many(settings: ApiSettings, active: int) -> Problem:
    return Problem(
        429,
        f"This tenant already has {active} queued or running jobs, the limit "
        f"(DNNQ_MAX_QUEUED_JOBS_PER_TENANT = {settings.max_queued_jobs_per_tenant}); "
        "wait for some to finish or cancel them.",
        headers={"Retry-After": "10"},
    )


def _accepted(job: dict, history: list | None) -> FiniteJSONResponse:
    return FiniteJSONResponse(job_view(job, history), status_code=202, headers={"Location": f"/v1/jobs/{job['id']}"})
