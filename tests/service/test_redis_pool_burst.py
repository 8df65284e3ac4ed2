"""A burst of requests (or of open event streams) larger than the asyncio Redis pool must wait for a
connection, not fail: redis-py's default pool (100 connections) raised MaxConnectionsError at once, which
the API answered as 503 "Redis is unreachable" for every tenant, and which cut open SSE streams short."""

from __future__ import annotations

import asyncio
import types

import pytest
import redis

from dnnq.service import sse
from dnnq.service.deps import AsyncRedisByLoop
from dnnq.service.settings import ApiSettings


def test_more_calls_in_flight_than_the_pool_wait_instead_of_failing(redis_client, redis_url, data_dir):
    settings = ApiSettings(redis_url=redis_url, data_dir=data_dir, redis_max_connections=8)

    async def burst() -> list:
        clients = AsyncRedisByLoop(settings)
        ar = clients.get()
        try:
            # 300 concurrent reads, as 300 concurrent status polls make (each one HGETALL on the event loop)
            return await asyncio.gather(*(ar.hgetall("dnnq:job:" + "0" * 32) for _ in range(300)))
        finally:
            await clients.aclose()

    assert asyncio.run(burst()) == [{}] * 300


def test_default_pool_takes_a_burst_past_redis_pys_100(redis_client, redis_url, data_dir):
    settings = ApiSettings(redis_url=redis_url, data_dir=data_dir)

    async def burst() -> None:
        clients = AsyncRedisByLoop(settings)
        try:
            await asyncio.gather(*(clients.get().hgetall("nothing") for _ in range(400)))
        finally:
            await clients.aclose()

    asyncio.run(burst())  # before the fix: redis.exceptions.MaxConnectionsError: Too many connections


class _Request:
    def __init__(self) -> None:
        self.app = types.SimpleNamespace(state=types.SimpleNamespace(stream_slots=sse.StreamSlots(4)))

    async def is_disconnected(self) -> bool:
        return False


class _Settings:
    sse_poll_seconds = 0.01
    sse_keepalive_seconds = 15.0
    sse_max_stream_seconds = 3600.0


@pytest.mark.parametrize("error", [redis.ConnectionError("gone"), redis.TimeoutError("slow")])
def test_a_redis_error_mid_stream_ends_the_stream_cleanly(error):
    rounds = 0

    async def one_round():
        nonlocal rounds
        rounds += 1
        if rounds == 2:
            raise error
        return [sse.event("status", {"status": "running"})], False

    async def read() -> list[str]:
        response = sse.polled_stream(_Request(), _Settings(), one_round, "alice")
        return [chunk async for chunk in response.body_iterator]

    chunks = asyncio.run(read())  # before the fix: the error escaped the started response (a cut stream)
    assert chunks[0] == ": stream open\n\n"
    assert chunks[1].startswith("event: status")
    assert chunks[-1].startswith(": redis unreachable")
