"""Server-Sent Events as both event routes send them: the wire format, and the polling loop that turns
rounds of Redis reads into a stream with keep-alives and a stop when the client leaves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis
from fastapi import Request
from fastapi.responses import StreamingResponse

from dnnq.service.schemas import finite_json

__all__ = ["event", "polled_stream"]

# One round of a stream: the events it has to send now, and whether that was the last round.
Round = Callable[[], Awaitable[tuple[list[str], bool]]]


def event(name: str, data: Any, event_id: int | None = None) -> str:
    """One event on the wire; `id:` only when the stream can resume after it (Last-Event-ID)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {finite_json(data)}\n\n"  # never `Infinity`: not JSON


def polled_stream(request: Request, settings: Any, one_round: Round) -> StreamingResponse:
    """A text/event-stream answer calling ``one_round`` every ``settings.sse_poll_seconds`` until it says
    it was the last or the client disconnects; a comment line every ``sse_keepalive_seconds`` of silence
    keeps proxies from closing an idle stream."""

    async def stream() -> AsyncIterator[str]:
        last_sent = time.monotonic()
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
            await asyncio.sleep(settings.sse_poll_seconds)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
