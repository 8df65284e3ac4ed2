"""TaskSender: the API's Celery publisher, sending the messages of concurrent submits together.

The submit route awaits `sender.send(job_id, queue)`: the message is with the broker (and the job
marked sent) before the route answers 202, as it always was. Submits that arrive while the event
loop is busy are published together at the next loop turn, in one kombu publish batch (one
pipelined LPUSH round trip), then marked sent with one SREM (group commit).

Why on the event loop, blocking, and not in a thread: kombu has no asyncio publish, and a sender
thread competes with the event loop for the GIL on every socket call of either; in-process (20
concurrent submits, no HTTP) it cost as much CPU as this (2.85 vs 2.74 ms per submit), for a second
thread. Most of a submit's CPU is Celery's publish itself (~1.7 of the 2.7 ms; 1.0 ms without it).
A batch costs one round trip to the same Redis the route has just written to; the broker socket has
a timeout (BROKER_SOCKET_TIMEOUT_S), so a dead broker stalls the loop for at most that long.

If the process dies between the publish and the SREM, the ids are still in dnnq:jobs:unsent and a
worker's sweeper sends them again: a duplicate message is harmless (claim is atomic).
"""

from __future__ import annotations

import asyncio
import logging

from workers import jobs

__all__ = ["BROKER_SOCKET_TIMEOUT_S", "TaskSender"]

log = logging.getLogger("dnnq.api")

# The most messages one publish batch holds; more waiting go in the next batch.
MAX_BATCH = 256
# The API's broker connection: a publish never blocks the event loop longer than this.
BROKER_SOCKET_TIMEOUT_S = 5.0


class TaskSender:
    """Publishes "dnnq.train" messages for the submit route, batched per event-loop turn.

    `await sender.send(job_id, queue)` returns once the message is out and the job marked sent, or
    raises what the broker raised. `warm()` opens the broker connection and loads Celery's lazy
    parts, so that the first submits do not pay for them (~50 ms each, and they queue behind it).
    """

    def __init__(self, celery_app, ar_for_loop) -> None:
        self.celery_app = celery_app
        self.ar_for_loop = ar_for_loop  # () -> the running loop's redis.asyncio client
        self._pending: list[tuple[str, str, asyncio.Future]] = []
        self._flushing: set[asyncio.Task] = set()  # a reference per running flush (the loop keeps only weak ones)

    def warm(self) -> None:
        try:
            self.celery_app.backend  # noqa: B018  (a lazy property: resolving it is the point)
            with self.celery_app.producer_or_acquire() as producer:
                producer.connection.ensure_connection(max_retries=1)
        except Exception as exc:  # broker down at start: the first send reports it to its caller
            log.warning("task sender: broker not reachable at start (%s)", type(exc).__name__)

    async def send(self, job_id: str, queue: str) -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._pending.append((job_id, queue, done))
        if len(self._pending) == 1:
            # A task's first step runs after every callback already ready, so the submits of this loop
            # turn join the batch; those arriving later start the next one.
            task = loop.create_task(self._flush())
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)
        await done

    async def _flush(self) -> None:
        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        if self._pending:
            task = asyncio.get_running_loop().create_task(self._flush())
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)
        error: BaseException | None = None
        try:
            self._publish(batch)
            # After the publish: a crash in between leaves the ids for the sweeper (one more message, harmless).
            await jobs.mark_sent_async(self.ar_for_loop(), *(job_id for job_id, _, _ in batch))
        except BaseException as exc:  # kombu/redis errors vary by transport; each caller decides what it means
            error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            for _, _, done in batch:
                if not done.done():
                    done.set_result(None) if error is None else done.set_exception(error)

    def _publish(self, batch: list) -> None:
        with self.celery_app.producer_or_acquire() as producer, producer.batch(max_size=MAX_BATCH):
            for job_id, queue, _ in batch:
                self.celery_app.send_task("dnnq.train", args=[job_id], queue=queue, producer=producer)
