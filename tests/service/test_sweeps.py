"""/v1/sweeps end to end: uvicorn + a real worker + Redis; every trial an ordinary job."""

from __future__ import annotations

import io
import json
import time

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.e2e

KEYS = {"DNNQ_API_KEYS": "alice:k1,bob:k2", "DNNQ_MAX_QUEUED_JOBS_PER_TENANT": "1000"}
ALICE, BOB = {"Authorization": "Bearer k1"}, {"Authorization": "Bearer k2"}


@pytest.fixture
def live_stack_env() -> dict[str, str]:
    return KEYS


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def upload(http: httpx.Client, seed: int) -> str:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(64, 3)).astype(np.float32)
    y = (X[:, 0] - X[:, 1] > 0).astype(np.int64)
    got = http.post("/v1/datasets", files={"file": (f"d{seed}.npz", npz_bytes(X=X, Y=y))})
    assert got.status_code == 201, got.text
    return got.json()["id"]


def base_spec(dataset: str, **training) -> dict:
    return {
        "dataset_id": dataset,
        "model": {"hidden_layers": [4]},
        "training": {"epochs": 6, "optimizer": "gd", **training},
        "device": "cpu",
    }


def wait_finished(http: httpx.Client, sweep_id: str, timeout: float = 120.0, **params) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = http.get(f"/v1/sweeps/{sweep_id}", params=params).json()
        if view["status"] == "finished":
            return view
        time.sleep(0.2)
    raise AssertionError(f"sweep {sweep_id} still {view['counts']} after {timeout} s")


def test_a_grid_of_four_trials_runs_and_the_best_is_the_lowest_val_loss(live_stack):
    with live_stack.client(headers=ALICE) as http:
        train, val = upload(http, 0), upload(http, 1)
        base = {**base_spec(train), "validation_dataset_id": val}
        got = http.post("/v1/sweeps", json={"base": base, "grid": {"lr": [0.5, 0.01], "seed": [1, 2]}})
        assert got.status_code == 202, got.text
        sweep = got.json()
        assert got.headers["location"] == f"/v1/sweeps/{sweep['id']}"
        assert sweep["n_trials"] == 4 and sweep["metric"] == "val_loss" and sweep["counts"] == {"queued": 4}
        assert [t["overrides"] for t in sweep["trials"]] == [
            {"training.learning_rate": lr, "training.seed": s} for lr in (0.5, 0.01) for s in (1, 2)
        ]
        view = wait_finished(http, sweep["id"], history="full")
        assert view["counts"] == {"succeeded": 4}, view
        finals = []
        for trial in view["trials"]:
            job = http.get(f"/v1/jobs/{trial['job_id']}").json()  # an ordinary job: its record and history
            assert job["status"] == "succeeded" and len(job["history"]) == 6
            assert job["spec"]["training"]["learning_rate"] == trial["overrides"]["training.learning_rate"]
            assert job["history"] == trial["history"]
            finals.append(job["history"][-1]["val_loss"])
            assert trial["value"] == pytest.approx(finals[-1])
            weights = http.get(f"/v1/jobs/{trial['job_id']}/weights")
            assert weights.status_code == 200
        best = int(np.argmin(finals))
        assert view["best"] == {"index": best, "job_id": view["trials"][best]["job_id"], "value": finals[best]}
        assert [t["best"] for t in view["trials"]] == [i == best for i in range(4)]
        # another metric on request, said in the answer; higher is better for accuracy
        by_loss = http.get(f"/v1/sweeps/{sweep['id']}", params={"metric": "loss"}).json()
        assert by_loss["metric"] == "loss" and by_loss["lower_is_better"] is True
        listed = http.get("/v1/sweeps").json()
        assert listed["total"] == 1 and listed["items"][0]["counts"] == {"succeeded": 4}
        # the stream of a finished sweep: every trial's state, then the end
        with http.stream("GET", f"/v1/sweeps/{sweep['id']}/events") as stream:
            text = "".join(stream.iter_text())
        assert text.count("event: trial") == 4 and text.rstrip().splitlines()[-2] == "event: end"


def test_trials_whose_long_history_moved_to_the_store_are_still_ranked_and_drawn(live_stack, redis_client):
    """Past HISTORY_INLINE_MAX epochs a trial's history leaves Redis when it ends: the sweep view reads
    its last epoch (the ranking) and its curve (history=full) from the artifact store."""
    from dnnq.workers.history_store import HISTORY_INLINE_MAX

    epochs = HISTORY_INLINE_MAX + 20
    with live_stack.client(headers=ALICE) as http:
        base = base_spec(upload(http, 5), epochs=epochs)
        got = http.post("/v1/sweeps", json={"base": base, "grid": {"lr": [0.5, 0.05]}})
        assert got.status_code == 202, got.text
        view = wait_finished(http, got.json()["id"], history="full")
        assert view["counts"] == {"succeeded": 2}, view
        for trial in view["trials"]:
            assert redis_client.hget(f"dnnq:job:{trial['job_id']}", "history_stored") == str(epochs)
            assert len(trial["history"]) == epochs and trial["value"] == trial["history"][-1]["loss"]
        finals = [t["value"] for t in view["trials"]]
        best = int(np.argmin(finals))
        assert view["best"] == {"index": best, "job_id": view["trials"][best]["job_id"], "value": finals[best]}
        assert http.get(f"/v1/sweeps/{view['id']}").json()["best"] == view["best"]
        assert http.post(f"/v1/sweeps/{view['id']}/cancel").json()["best"] == view["best"]


def test_cancel_stops_every_unfinished_trial_and_tenants_do_not_see_each_other(live_stack):
    with live_stack.client(headers=ALICE) as http:
        data = upload(http, 0)
        got = http.post(
            "/v1/sweeps", json={"base": base_spec(data, epochs=100_000), "trials": [{"seed": s} for s in range(3)]}
        )
        assert got.status_code == 202, got.text
        sweep_id = got.json()["id"]
        with live_stack.client(headers=BOB) as bob:
            for path in ("", "/events"):
                assert bob.get(f"/v1/sweeps/{sweep_id}{path}").status_code == 404
            assert bob.post(f"/v1/sweeps/{sweep_id}/cancel").status_code == 404
            assert bob.get("/v1/sweeps").json()["total"] == 0
            assert bob.get(f"/v1/jobs/{got.json()['trials'][0]['job_id']}").status_code == 404
        cancelled = http.post(f"/v1/sweeps/{sweep_id}/cancel")
        assert cancelled.status_code == 202
        assert set(cancelled.json()["counts"]) <= {"cancelled", "cancelling"}
        view = wait_finished(http, sweep_id, timeout=60)
        assert view["counts"] == {"cancelled": 3} and view["best"] is None
        assert http.get("/v1/sweeps/" + "f" * 32).status_code == 404
        assert http.get("/v1/sweeps/not-an-id").status_code == 404


def post_raw(http: httpx.Client, text: str) -> httpx.Response:
    return http.post("/v1/sweeps", content=text, headers={"Content-Type": "application/json"})


def test_limits_and_hostile_values_are_4xx_naming_the_trial(live_stack_factory):
    stack = live_stack_factory(env=KEYS, workers=0)
    with stack.client(headers=ALICE) as http:
        data = upload(http, 0)
        base = {**base_spec(data), "wait_for_worker": True}
        too_many = http.post("/v1/sweeps", json={"base": base, "trials": [{}] * 65})
        assert too_many.status_code == 422
        assert "limit of 64" in too_many.json()["detail"] and "DNNQ_MAX_SWEEP_TRIALS" in too_many.json()["detail"]
        grid = http.post("/v1/sweeps", json={"base": base, "grid": {"seed": list(range(10_000)), "l2": [0.0, 1.0]}})
        assert grid.status_code == 422 and "limit of 64" in grid.json()["detail"]
        for value in ("NaN", "Infinity", "-Infinity", "1e999", "-1", '"x"', "[]"):
            bad = post_raw(http, json.dumps({"base": base, "trials": [{"lr": 0.1}]})[:-2] + f', {{"lr": {value}}}]}}')
            assert bad.status_code == 422, (value, bad.text)
            assert bad.json()["errors"][0]["field"] == "trials[1].training.learning_rate", bad.json()
        nan_grid = post_raw(http, json.dumps({"base": base, "grid": {"l2": [0.0]}})[:-3] + ", NaN]}}")
        assert nan_grid.status_code == 422 and nan_grid.json()["errors"][0]["field"] == "trials[1].training.l2"
        for body, field in (
            ({"base": base, "grid": {"nope": [1]}}, "grid.nope"),
            ({"base": base, "grid": {"x" * 100_000: [1]}}, "grid."),
            ({"base": base, "trials": [{"epochs": 10**12}]}, "trials[0].training.epochs"),
            ({"base": base, "trials": [{"hidden_layers": [10**6]}]}, "trials[0].model.hidden_layers.0"),
            ({"base": base, "trials": [{"hidden_layers": [60_000] * 60}]}, "trials[0].model.hidden_layers"),
            ({"base": base, "trials": [{"dataset_id": "ab" * 12}]}, "trials[0].dataset_id"),
            ({"base": base, "grid": {"lr": [0.1]}, "trials": [{}]}, "grid"),
            ({"base": base}, "grid"),
        ):
            bad = http.post("/v1/sweeps", json=body)
            assert bad.status_code == 422, (field, bad.text)
            assert bad.json()["errors"][0]["field"].startswith(field), bad.json()
            assert len(bad.text) < 20_000
        assert http.get("/v1/sweeps", params={"limit": 10**9}).status_code == 422
        assert http.get("/v1/sweeps/" + "a" * 32, params={"metric": "nope"}).status_code == 422
        assert http.get("/v1/sweeps").json()["total"] == 0  # nothing refused was written
        assert http.get("/v1/jobs").json()["total"] == 0


def test_64_trials_are_accepted_in_one_request_and_idempotently(live_stack_factory):
    """64 trials in one request, six times over: every trial's message reaches the broker. How fast the
    202 comes is a benchmark's question, not a test's: `python -m bench.sweep_submit --http`."""
    stack = live_stack_factory(env=KEYS, workers=0)
    with stack.client(headers=ALICE) as http:
        data = upload(http, 0)
        body = {
            "base": {**base_spec(data), "wait_for_worker": True},
            "grid": {"lr": [0.1 * (i + 1) for i in range(8)], "seed": list(range(8))},
        }
        for _ in range(6):
            got = http.post("/v1/sweeps", json=body)
            assert got.status_code == 202, got.text
            assert len(got.json()["trials"]) == 64
            assert http.post(f"/v1/sweeps/{got.json()['id']}/cancel").status_code == 202
        # every trial's message went out (the outbox is empty): none left for the sweeper
        import redis

        r = redis.Redis.from_url(stack.redis_url, decode_responses=True)
        deadline = time.monotonic() + 10
        while r.zcard("dnnq:jobs:outbox") and time.monotonic() < deadline:  # sent just after the 202
            time.sleep(0.05)
        assert r.zcard("dnnq:jobs:outbox") == 0
        assert sum(r.llen(name) for name in ("default", "default:3")) == 6 * 64
        # Idempotency-Key: the same body replays the sweep; another body with it is refused
        first = http.post("/v1/sweeps", json=body, headers={"Idempotency-Key": "sweep-1"})
        again = http.post("/v1/sweeps", json=body, headers={"Idempotency-Key": "sweep-1"})
        assert first.status_code == again.status_code == 202 and first.json()["id"] == again.json()["id"]
        other = http.post("/v1/sweeps", json={**body, "grid": {"lr": [0.1]}}, headers={"Idempotency-Key": "sweep-1"})
        assert other.status_code == 422
        assert http.get("/v1/sweeps").json()["total"] == 7
