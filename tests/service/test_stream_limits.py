"""Event streams are bounded: a tenant holds at most DNNQ_MAX_STREAMS_PER_TENANT open in one API process
(a 429 before the stream starts), a slot comes back when its stream ends, and a stream ends after
DNNQ_SSE_MAX_STREAM_SECONDS with a comment saying to reconnect. Each open stream polls Redis every
poll interval: 300 idle ones of one tenant took a third of an API core."""

from __future__ import annotations

import asyncio
import types

import pytest

from dnnq.service import sse
from dnnq.service.errors import Problem
from tests.service.test_api import assert_problem, binary_npz, make_client, submit, upload


class _Request:
    def __init__(self, slots: sse.StreamSlots) -> None:
        self.app = types.SimpleNamespace(state=types.SimpleNamespace(stream_slots=slots))

    async def is_disconnected(self) -> bool:
        return False


def _settings(lifetime: float = 3600.0):
    return types.SimpleNamespace(sse_poll_seconds=0.01, sse_keepalive_seconds=15.0, sse_max_stream_seconds=lifetime)


async def _never_ends():
    return [], False


def test_a_tenant_past_its_streams_gets_a_429_and_a_slot_comes_back_when_a_stream_ends():
    slots = sse.StreamSlots(2)
    first = sse.polled_stream(_Request(slots), _settings(), _never_ends, "alice")
    sse.polled_stream(_Request(slots), _settings(), _never_ends, "alice")
    with pytest.raises(Problem) as refused:
        sse.polled_stream(_Request(slots), _settings(), _never_ends, "alice")
    assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "5"}
    assert "DNNQ_MAX_STREAMS_PER_TENANT" in refused.value.detail
    sse.polled_stream(_Request(slots), _settings(), _never_ends, "bob")  # another tenant has its own

    async def open_then_leave() -> None:
        chunks = first.body_iterator
        assert await chunks.__anext__() == ": stream open\n\n"
        await chunks.aclose()  # the client went away

    asyncio.run(open_then_leave())
    assert slots.open["alice"] == 1
    sse.polled_stream(_Request(slots), _settings(), _never_ends, "alice")


def test_a_stream_ends_after_its_lifetime_with_a_comment_to_reconnect():
    slots = sse.StreamSlots(1)
    response = sse.polled_stream(_Request(slots), _settings(lifetime=0.05), _never_ends, "alice")

    async def read() -> list[str]:
        return [chunk async for chunk in response.body_iterator]

    chunks = asyncio.run(read())
    assert chunks[0] == ": stream open\n\n" and chunks[-1] == ": stream lifetime reached; reconnect\n\n"
    assert not slots.open  # its slot is free again


def test_the_events_route_answers_429_past_the_tenants_streams(api_settings, redis_client):
    with make_client(api_settings, max_streams_per_tenant=1) as c:
        resp = submit(c, upload(c, binary_npz()).json()["id"], wait_for_worker=True)
        job = resp.json()["id"]  # no worker: it stays queued, its stream open
        with c.stream("GET", f"/v1/jobs/{job}/events") as held:
            assert held.status_code == 200
            assert_problem(c.get(f"/v1/jobs/{job}/events"), 429, "DNNQ_MAX_STREAMS_PER_TENANT")
