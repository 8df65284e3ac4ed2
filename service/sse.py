"""Server-Sent Events as both event routes send them: the wire format, and the polling loop that turns
rounds of Redis reads into a stream with keep-alives and a stop when the client leaves.

Each open stream polls Redis every `sse_poll_seconds` for as long as it lasts, so a tenant may hold at
most `max_streams_per_tenant` of them in one API process (a 429 past it, before the stream starts), and
a stream ends after `sse_max_stream_seconds` with a comment saying to reconnect (EventSource does, with
Last-Event-ID): idle streams cost CPU in proportion to their number (docs/perf.md, 'Hostile requests:
the second pass')."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis
from fastapi import Request
from fastapi.responses import StreamingResponse

from dnnq.service.errors import Problem
from dnnq.service.schemas import finite_json

__all__ = ["StreamSlots", "event", "polled_stream"]

# One round of a stream: the events it has to send now, and whether that was the last round.
Round = Callable[[], Awaitable[tuple[list[str], bool]]]


def event(name: str, data: Any, event_id: int | None = None) -> str:
    """One event on the wire; `id:` only when the stream can resume after it (Last-Event-ID)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {finite_json(data)}\n\n"  # never `Infinity`: not JSON


class StreamSlots:
    """The event streams each tenant has open in this API process (one event loop: no lock needed)."""

    def __init__(self, per_tenant: int) -> None:
        self.per_tenant = per_tenant
        self.open: collections.Counter[str] = collections.Counter()

    def take(self, tenant: str) -> None:
        """One more stream for ``tenant``, or the 429 that says why not."""
        if self.open[tenant] >= self.per_tenant:
            raise Problem(
                429,
                f"{self.open[tenant]} event streams are open for this API key, the most one API process serves "
                "(DNNQ_MAX_STREAMS_PER_TENANT); close one, or poll the job or sweep (GET) instead.",
                headers={"Retry-After": "5"},
            )
        self.open[tenant] += 1

    def give_back(self, tenant: str) -> None:
        self.open[tenant] -= 1
        if self.open[tenant] <= 0:
            del self.open[tenant]


def polled_stream(request: Request, settings: Any, one_round: Round, tenant: str) -> StreamingResponse:
    """A text/event-stream answer calling ``one_round`` every ``settings.sse_poll_seconds`` until it says
    it was the last, the client disconnects or ``sse_max_stream_seconds`` pass; a comment line every
    ``sse_keepalive_seconds`` of silence keeps proxies from closing an idle stream. It takes one of
    ``tenant``'s stream slots (request.app.state.stream_slots) until it ends: a 429 when none is free."""
    slots: StreamSlots = request.app.state.stream_slots
    slots.take(tenant)

    async def stream() -> AsyncIterator[str]:
        try:
            async for chunk in rounds():
                yield chunk
        finally:
            slots.give_back(tenant)

    async def rounds() -> AsyncIterator[str]:
        last_sent = started = time.monotonic()
        yield ": stream open\n\n"
        while True:
            try:
                events, last = await one_round()
            except (redis.ConnectionError, redis.TimeoutError):
                # The response has started: no 503 can follow. End the stream as a stream ends; the client
                # reconnects (with Last-Event-ID) instead of getting a cut chunked body and a traceback.
                yield ": redis unreachable; reconnect shortly\n\n"
                return
            for item in events:
                yield item
            if events:
                last_sent = time.monotonic()
            if last:
                return
            if time.monotonic() - last_sent >= settings.sse_keepalive_seconds:
                yield ": keepalive\n\n"
                last_sent = time.monotonic()
            if await request.is_disconnected():
                return
            if time.monotonic() - started >= settings.sse_max_stream_seconds:
                yield ": stream lifetime reached; reconnect\n\n"
                return
            await asyncio.sleep(settings.sse_poll_seconds)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
