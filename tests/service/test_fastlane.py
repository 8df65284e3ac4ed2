"""service/fastlane.py: status polls and valid submits answered below FastAPI must be answered exactly as
FastAPI's routes answer them, and everything else must reach those routes untouched.

Each case is sent to two apps on the same Redis: one with the lane (the default), one with
DNNQ_FAST_LANE=false. Status, headers and body must be equal (for a submit, once the new job's id and
creation time are written the same way), and the lane's `answered` counter says which path answered.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from fastapi.testclient import TestClient

from dnnq.service.app import create_app
from dnnq.workers import keys
from tests.service.test_api import binary_npz, drive, fake_worker, upload


class Pair:
    """The same settings twice: `lane` (fast lane on) and `plain` (off)."""

    def __init__(self, api_settings, **overrides):
        self.lane_app = create_app(api_settings.model_copy(update=overrides))
        self.plain_app = create_app(api_settings.model_copy(update={**overrides, "fast_lane": False}))
        self.lane, self.plain = TestClient(self.lane_app), TestClient(self.plain_app)

    def __enter__(self):
        self.lane.__enter__()
        self.plain.__enter__()
        return self

    def __exit__(self, *exc):
        self.plain.__exit__(*exc)
        self.lane.__exit__(*exc)

    @property
    def answered(self) -> int:
        return self.lane_app.state.fast_lane.answered

    def same(self, method: str, url: str, *, by_lane: bool, **kwargs):
        """Send the request to both apps, assert equal answers; `by_lane`: whether the lane answered it."""
        before = self.answered
        lane = self.lane.request(method, url, **kwargs)
        assert self.answered - before == (1 if by_lane else 0), (method, url, lane.status_code, lane.text)
        plain = self.plain.request(method, url, **kwargs)
        assert not hasattr(self.plain_app.state, "fast_lane")
        assert (lane.status_code, normalised(lane)) == (plain.status_code, normalised(plain)), lane.text
        return lane


def normalised(resp) -> tuple:
    """Headers and body with a new job's id and creation time replaced: two submits differ only there."""
    text = resp.text
    if resp.status_code == 202 and resp.headers.get("content-type") == "application/json":
        job = resp.json()
        text = text.replace(job["id"], "<id>").replace(job["created_at"], "<created>")
    headers = sorted(
        (k, v.replace(resp.json()["id"], "<id>") if k == "location" else v) for k, v in resp.headers.items()
    )
    return headers, text


@pytest.fixture
def live_worker(redis_client) -> str:
    """A live 'default' worker's heartbeat record: submits are refused while no worker serves their queue."""
    fake_worker(redis_client, "w-default", "default")
    return "w-default"


@pytest.fixture
def pair(api_settings, live_worker):
    with Pair(api_settings) as p:
        yield p


@pytest.fixture
def dataset(pair) -> str:
    return upload(pair.lane, binary_npz()).json()["id"]


def test_status_polls_answer_as_the_route_does(pair, dataset, redis_client):
    job_id = pair.lane.post("/v1/jobs", json={"dataset_id": dataset, "training": {"epochs": 4}}).json()["id"]
    drive(redis_client, job_id, 4)
    for query in ("", "?history=none", "?history=thin", "?history=full"):
        body = pair.same("GET", f"/v1/jobs/{job_id}{query}", by_lane=True).json()
        assert body["status"] == "succeeded" and len(body.get("history", [None] * 4)) == 4
    pair.same("GET", f"/v1/jobs/{'ab' * 16}", by_lane=True)  # well-formed, unknown: the lane's 404
    # Everything else is the route's: its 422 for a bad query, its 404 for a malformed id, extra parameters.
    assert pair.same("GET", f"/v1/jobs/{job_id}?history=all", by_lane=False).status_code == 422
    assert pair.same("GET", f"/v1/jobs/{job_id}?history=none&x=1", by_lane=False).status_code == 200
    assert pair.same("GET", "/v1/jobs/NOT-AN-ID", by_lane=False).status_code == 404
    assert pair.same("GET", f"/v1/jobs/{job_id}/model", by_lane=False).status_code == 404  # no model.json here
    assert pair.same("GET", "/v1/jobs", by_lane=False).json()["total"] == 1


def test_submits_answer_as_the_route_does(pair, dataset, redis_client):
    spec = {"dataset_id": dataset, "model": {"hidden_layers": [4]}, "training": {"epochs": 2}}
    created = pair.same("POST", "/v1/jobs", json=spec, by_lane=True)
    assert created.status_code == 202 and created.headers["location"] == f"/v1/jobs/{created.json()['id']}"
    stored = redis_client.hgetall(keys.job(created.json()["id"]))  # the record written in one argument
    assert stored["status"] == "queued" and json.loads(stored["spec"])["training"]["epochs"] == 2
    assert stored["attempts"] == "0" and stored["error"] == "" and stored["tenant"] == "public"
    charset = {"content-type": "application/json; charset=utf-8"}
    assert pair.same("POST", "/v1/jobs", content=json.dumps(spec), headers=charset, by_lane=True).status_code == 202
    # Problems the shared submit code raises: answered by the lane, as the route words them.
    assert pair.same("POST", "/v1/jobs", json={**spec, "dataset_id": "ab" * 12}, by_lane=True).status_code == 422
    too_long = {**spec, "training": {"epochs": 100_001}}  # the schema allows it, DNNQ_MAX_EPOCHS does not
    assert "DNNQ_MAX_EPOCHS" in pair.same("POST", "/v1/jobs", json=too_long, by_lane=True).json()["detail"]
    # Bodies FastAPI refuses go to FastAPI, which says what is wrong.
    for content in (
        b"{",
        b"",
        b"[]",
        b"{}",
        json.dumps({**spec, "model": {"dropout": 0.5}}).encode(),
        b"[" * 100_000 + b"]" * 100_000,
        b"\xff\xfe",
    ):
        resp = pair.same(
            "POST", "/v1/jobs", content=content, headers={"content-type": "application/json"}, by_lane=False
        )
        assert resp.status_code in (400, 422), resp.text
    other_type = pair.same(
        "POST", "/v1/jobs", content=json.dumps(spec), headers={"content-type": "text/plain"}, by_lane=False
    )
    assert other_type.status_code == 422
    # Idempotency keys stay on the route (the thread pool's sync client), and still work.
    keyed = {"Idempotency-Key": "k-1"}
    first = pair.lane.post("/v1/jobs", json=spec, headers=keyed)
    assert pair.answered == 4 and first.status_code == 202
    assert pair.lane.post("/v1/jobs", json=spec, headers=keyed).json()["id"] == first.json()["id"]
    assert pair.answered == 4


def test_the_tenant_limit_429_is_the_same(api_settings, live_worker):
    with Pair(api_settings, max_queued_jobs_per_tenant=1) as pair:
        spec = {"dataset_id": upload(pair.lane, binary_npz()).json()["id"]}
        assert pair.lane.post("/v1/jobs", json=spec).status_code == 202
        refused = pair.same("POST", "/v1/jobs", json=spec, by_lane=True)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "10"


def test_api_keys_are_checked_the_same_and_failures_are_the_routes(api_settings, live_worker):
    with Pair(api_settings, api_keys="alice:key-a,bob:key-b") as pair:
        alice, bob = {"Authorization": "Bearer key-a"}, {"Authorization": "bearer key-b"}
        ds = pair.lane.post("/v1/datasets", files={"file": ("d.npz", binary_npz())}, headers=alice).json()["id"]
        job = pair.same("POST", "/v1/jobs", json={"dataset_id": ds}, headers=alice, by_lane=True).json()["id"]
        assert pair.same("GET", f"/v1/jobs/{job}", headers=alice, by_lane=True).status_code == 200
        assert pair.same("GET", f"/v1/jobs/{job}", headers=bob, by_lane=True).status_code == 404  # not bob's
        assert pair.same("POST", "/v1/jobs", json={"dataset_id": ds}, headers=bob, by_lane=True).status_code == 422
        for headers in (
            {},
            {"Authorization": "Bearer key-c"},
            {"Authorization": "Basic key-a"},
            {"Authorization": "Bearer"},
        ):
            assert pair.same("GET", f"/v1/jobs/{job}", headers=headers, by_lane=False).status_code == 401
            assert (
                pair.same("POST", "/v1/jobs", json={"dataset_id": ds}, headers=headers, by_lane=False).status_code
                == 401
            )


def test_redis_unreachable_is_the_same_503(api_settings, dead_port):
    dead = f"redis://127.0.0.1:{dead_port}/0"
    with Pair(api_settings, redis_url=dead, redis_socket_timeout=0.5) as pair:
        poll = pair.same("GET", f"/v1/jobs/{'ab' * 16}", by_lane=True)
        submit = pair.same("POST", "/v1/jobs", json={"dataset_id": "ab" * 12}, by_lane=True)
        for resp in (poll, submit):
            assert resp.status_code == 503 and resp.headers["retry-after"] == "2"
            assert "Redis is unreachable" in resp.json()["detail"]


def test_lane_answers_are_counted_under_the_route_template(pair, dataset):
    job = pair.lane.post("/v1/jobs", json={"dataset_id": dataset}).json()["id"]
    pair.lane.get(f"/v1/jobs/{job}")
    pair.lane.get(f"/v1/jobs/{'cd' * 16}")
    text = pair.lane.get("/metrics").text
    for line in (
        '{method="POST",route="/v1/jobs",status="202"} 1.0',
        '{method="GET",route="/v1/jobs/{job_id}",status="200"} 1.0',
        '{method="GET",route="/v1/jobs/{job_id}",status="404"} 1.0',
    ):
        assert "dnnq_http_request_duration_seconds_count" + line in text, line


def asgi_post(app, chunks: list[bytes]) -> tuple[int, bytes]:
    """POST /v1/jobs with the body in several ASGI messages (as a chunked upload arrives)."""

    async def run():
        messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
        sent: dict = {"body": b""}

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
            elif message["type"] == "http.response.body":
                sent["body"] += message.get("body", b"")

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/jobs",
            "raw_path": b"/v1/jobs",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
        await app(scope, receive, send)
        return sent["status"], sent["body"]

    return asyncio.run(run())


def test_a_body_in_pieces_is_read_whole_and_replayed_whole(pair, dataset):
    good = json.dumps({"dataset_id": dataset, "training": {"epochs": 3}}).encode()
    before = pair.answered
    status, body = asgi_post(pair.lane_app, [good[:10], good[10:25], good[25:]])
    assert status == 202 and json.loads(body)["progress"]["epochs"] == 3 and pair.answered == before + 1
    bad = good.replace(b"3", b"-3")  # valid JSON, invalid spec: FastAPI must see every byte of it
    lane_status, lane_body = asgi_post(pair.lane_app, [bad[:7], bad[7:]])
    assert (lane_status, lane_body) == asgi_post(pair.plain_app, [bad]) and pair.answered == before + 1
    assert lane_status == 422 and re.search(rb'"field":"training.epochs"', lane_body)


def test_non_finite_numbers_are_refused_as_the_route_refuses_them(pair, dataset, redis_client):
    """json.loads turns NaN, Infinity and 1e999 into floats; the lane must not take them for a valid spec."""
    for literal in ("NaN", "Infinity", "-Infinity", "1e999"):
        for section, name in (("preprocess", "scale"), ("training", "learning_rate"), ("training", "l2")):
            content = f'{{"dataset_id": "{dataset}", "{section}": {{"{name}": {literal}}}}}'.encode()
            resp = pair.same(
                "POST", "/v1/jobs", content=content, headers={"content-type": "application/json"}, by_lane=False
            )
            assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == f"{section}.{name}"
    assert redis_client.keys("dnnq:job:*") == []


def test_submit_time_refusals_are_the_same(pair, dataset, redis_client):
    wide = upload(pair.lane, binary_npz(n=5)).json()["id"]  # 5 features: does not fit the 3-feature set
    refused = pair.same("POST", "/v1/jobs", json={"dataset_id": dataset, "validation_dataset_id": wide}, by_lane=True)
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "validation_dataset_id"
    no_gpu = pair.same("POST", "/v1/jobs", json={"dataset_id": dataset, "device": "gpu"}, by_lane=True)
    assert no_gpu.status_code == 422 and "dnnq worker --queues gpu --gpu 0" in no_gpu.json()["detail"]
    waiting = pair.same(
        "POST", "/v1/jobs", json={"dataset_id": dataset, "device": "gpu", "wait_for_worker": True}, by_lane=True
    )
    assert waiting.status_code == 202 and waiting.json()["queue"] == "gpu"


def test_a_poisoned_record_is_polled_as_the_route_answers_it(pair, dataset, redis_client):
    job_id = pair.lane.post("/v1/jobs", json={"dataset_id": dataset, "training": {"epochs": 2}}).json()["id"]
    drive(redis_client, job_id, 2)
    redis_client.hset(keys.job(job_id), "metrics", json.dumps({"final_loss": float("inf")}))
    redis_client.rpush(keys.job_history(job_id), json.dumps({"epoch": 3, "loss": float("nan")}))
    for query in ("", "?history=none", "?history=full"):
        resp = pair.same("GET", f"/v1/jobs/{job_id}{query}", by_lane=True)
        assert resp.status_code == 200 and resp.json()["metrics"] == {"final_loss": None}
        assert "Infinity" not in resp.text and "NaN" not in resp.text
