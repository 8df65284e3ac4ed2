"""DELETE /v1/sweeps/{id}, a trial deleted alone, retention of sweeps, and a sweep submit racing a delete
of its dataset, end to end: uvicorn, a real worker, a real Redis; Redis and the data directory scanned
for what a delete leaves."""

from __future__ import annotations

import threading
import time

import pytest

from dnnq.workers import keys
from tests.service import test_delete
from tests.service.test_delete import mentions, problem
from tests.service.test_sweeps import base_spec, upload, wait_finished

pytestmark = pytest.mark.e2e
files_naming = test_delete.files_naming  # the fixture: files (and S3 keys) whose name holds a text

ALICE, BOB = {"Authorization": "Bearer k1"}, {"Authorization": "Bearer k2"}


@pytest.fixture
def live_stack_env() -> dict[str, str]:
    return {"DNNQ_API_KEYS": "alice:k1,bob:k2", "DNNQ_LEASE_SECONDS": "4"}


def submit_sweep(http, body: dict, **headers: str) -> dict:
    got = http.post("/v1/sweeps", json=body, headers=headers)
    assert got.status_code == 202, got.text
    return got.json()


def leftovers(r, files_naming, ids: list[str], timeout: float = 20.0) -> dict[str, list[str]]:
    """Redis keys and files that still name any of `ids`, once Celery's own keys holding a trial's message
    have cleared (or after `timeout`): a packed or cancelled trial's message stays queued ('default:3') or
    'unacked' until a worker takes it, finds its job gone or claimed, and acks it."""
    deadline = time.monotonic() + timeout
    while True:
        # each id read once: a second read could miss a Celery key that cleared in between and report an
        # id with nothing left as a leftover (seen in CI)
        found = {i: names for i in ids if (names := mentions(r, i) + files_naming(i))}
        transient = any(not k.startswith(keys.PREFIX) for names in found.values() for k in names)
        if not transient or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_delete_a_sweep_409_while_a_trial_runs_then_204_leaving_no_key(live_stack, redis_client, files_naming):
    r = redis_client
    with live_stack.client(headers=ALICE) as http:
        body = {"base": base_spec(upload(http, 1), epochs=100_000), "trials": [{"seed": 1}, {"seed": 2}]}
        sweep = submit_sweep(http, body, **{"Idempotency-Key": "sweep-del-1"})
        sweep_id, job_ids = sweep["id"], [t["job_id"] for t in sweep["trials"]]
        conflict = problem(http.delete(f"/v1/sweeps/{sweep_id}"), 409)
        assert f"POST /v1/sweeps/{sweep_id}/cancel" in conflict["detail"]
        assert "queued" in conflict["detail"] or "running" in conflict["detail"]
        assert all(r.exists(keys.job(j)) for j in job_ids) and r.exists(keys.sweep(sweep_id))  # nothing went
        with live_stack.client(headers=BOB) as bob:
            problem(bob.delete(f"/v1/sweeps/{sweep_id}"), 404)  # another tenant's: not there for bob
        problem(http.delete("/v1/sweeps/" + "0" * 32), 404)
        problem(http.delete("/v1/sweeps/not-an-id"), 404)

        assert http.post(f"/v1/sweeps/{sweep_id}/cancel").status_code == 202
        assert wait_finished(http, sweep_id, timeout=60)["counts"] == {"cancelled": 2}
        deleted = http.delete(f"/v1/sweeps/{sweep_id}")
        assert deleted.status_code == 204 and deleted.content == b""
        problem(http.get(f"/v1/sweeps/{sweep_id}"), 404)
        problem(http.delete(f"/v1/sweeps/{sweep_id}"), 404)
        for job_id in job_ids:
            problem(http.get(f"/v1/jobs/{job_id}"), 404)
        assert http.get("/v1/sweeps").json()["total"] == 0 and http.get("/v1/jobs").json()["total"] == 0
        assert leftovers(r, files_naming, [sweep_id, *job_ids]) == {}  # the Idempotency-Key's entry too
        assert r.hget(keys.BY_STATUS, "cancelled") == "0"
        again = submit_sweep(http, body, **{"Idempotency-Key": "sweep-del-1"})  # the key went with it
        assert again["id"] != sweep_id
        http.post(f"/v1/sweeps/{again['id']}/cancel")


@pytest.mark.both_stores
def test_a_deleted_trial_shows_as_deleted_then_the_sweep_goes_with_its_files(live_stack, redis_client, files_naming):
    """Trials of 300 epochs: their histories moved to the store, their weights written; one deleted by
    DELETE /v1/jobs shows as 'deleted' and the best comes from what remains; DELETE /v1/sweeps takes the rest."""
    r = redis_client
    with live_stack.client(headers=ALICE) as http:
        body = {"base": base_spec(upload(http, 2), epochs=300), "grid": {"lr": [0.5, 0.05, 0.01]}}
        sweep = submit_sweep(http, body)
        sweep_id, job_ids = sweep["id"], [t["job_id"] for t in sweep["trials"]]
        view = wait_finished(http, sweep_id)
        assert view["counts"] == {"succeeded": 3}, view["counts"]
        assert all(files_naming(j) for j in job_ids)
        gone = view["best"]["index"]
        assert http.delete(f"/v1/jobs/{job_ids[gone]}").status_code == 204

        after = http.get(f"/v1/sweeps/{sweep_id}", params={"history": "full"}).json()
        assert after["status"] == "finished" and after["counts"] == {"succeeded": 2, "deleted": 1}
        assert after["trials"][gone]["status"] == "deleted" and after["trials"][gone]["history"] == []
        left = [t for t in after["trials"] if t["status"] == "succeeded"]
        best = min(left, key=lambda t: t["value"])  # ranked by loss, lower is better, over what remains
        assert after["best"]["index"] == best["index"] != gone
        assert after["best"]["value"] == best["value"]
        listed = http.get("/v1/sweeps").json()["items"]
        assert [s["id"] for s in listed] == [sweep_id] and listed[0]["counts"] == after["counts"]
        assert http.post(f"/v1/sweeps/{sweep_id}/cancel").status_code == 202  # nothing left to cancel

        assert http.delete(f"/v1/sweeps/{sweep_id}").status_code == 204
        assert leftovers(r, files_naming, [sweep_id, *job_ids]) == {}
        assert r.hget(keys.BY_STATUS, "succeeded") == "0"


def test_deleting_every_trial_takes_the_sweep_record_with_the_last(live_stack, redis_client, files_naming):
    r = redis_client
    with live_stack.client(headers=ALICE) as http:
        sweep = submit_sweep(http, {"base": base_spec(upload(http, 3), epochs=5), "grid": {"seed": [1, 2]}})
        sweep_id, job_ids = sweep["id"], [t["job_id"] for t in sweep["trials"]]
        wait_finished(http, sweep_id)
        assert http.delete(f"/v1/jobs/{job_ids[0]}").status_code == 204
        assert http.get(f"/v1/sweeps/{sweep_id}").json()["counts"] == {"succeeded": 1, "deleted": 1}
        assert http.delete(f"/v1/jobs/{job_ids[1]}").status_code == 204
        problem(http.get(f"/v1/sweeps/{sweep_id}"), 404)
        assert http.get("/v1/sweeps").json()["total"] == 0
        assert leftovers(r, files_naming, [sweep_id, *job_ids]) == {}


def test_the_sweeper_deletes_a_sweep_with_its_last_trial_past_the_retention_period(
    live_stack_factory, redis_client, files_naming
):
    """DNNQ_RETENTION_DAYS=0.00002 (1.7 s): every trial goes by itself, and the sweep's record with the last."""
    stack = live_stack_factory(
        env={"DNNQ_API_KEYS": "alice:k1"},
        worker_env={"DNNQ_RETENTION_DAYS": "0.00002", "DNNQ_LEASE_SECONDS": "2"},
    )
    with stack.client(headers=ALICE) as http:
        sweep = submit_sweep(http, {"base": base_spec(upload(http, 4), epochs=300), "grid": {"seed": [1, 2]}})
        sweep_id, job_ids = sweep["id"], [t["job_id"] for t in sweep["trials"]]
        deadline = time.monotonic() + 60
        while http.get(f"/v1/sweeps/{sweep_id}").status_code != 404:
            assert time.monotonic() < deadline, "the sweeper did not delete the expired sweep"
            time.sleep(0.2)
        while leftovers(redis_client, files_naming, [sweep_id, *job_ids]):  # files go in the same sweep
            assert time.monotonic() < deadline, leftovers(redis_client, files_naming, [sweep_id, *job_ids])
            time.sleep(0.1)


def test_a_sweep_naming_a_dataset_deleted_behind_the_api_cache_is_422_and_writes_nothing(live_stack, redis_client):
    """The API caches dataset records; the create script itself checks they still exist (all or nothing)."""
    r = redis_client
    with live_stack.client(headers=ALICE) as http:
        data, other = upload(http, 5), upload(http, 6)
        body = {"base": base_spec(data, epochs=5), "trials": [{"seed": 1}, {"dataset_id": other}]}
        first = submit_sweep(http, body)  # the API has both records cached now
        wait_finished(http, first["id"])
        r.delete(keys.dataset(other))  # gone behind the cache (another API process deleted it, say)
        refused = problem(http.post("/v1/sweeps", json=body), 422)
        assert refused["errors"][0]["field"] == "trials[1].dataset_id"
        assert other in refused["detail"] and "POST /v1/datasets" in refused["detail"]
        assert http.get("/v1/sweeps").json()["total"] == 1 and http.get("/v1/jobs").json()["total"] == 2
        assert r.zcard(keys.OUTBOX) == 0
        # the API forgot its cached record: the next submit is refused by the route's own check
        again = problem(http.post("/v1/sweeps", json=body), 422)
        assert again["errors"][0]["field"] == "trials[1].dataset_id"


def test_a_sweep_racing_a_dataset_delete_never_leaves_trials_on_a_deleted_dataset(live_stack, redis_client):
    with live_stack.client(headers=ALICE) as http, live_stack.client(headers=ALICE) as other:
        for i in range(8):
            dataset_id = upload(http, 100 + i)
            answers: dict[str, int] = {}
            made: dict[str, str] = {}
            go = threading.Barrier(2)
            body = {"base": base_spec(dataset_id, epochs=100_000), "grid": {"seed": [1, 2, 3]}}

            def post(body: dict = body, answers: dict = answers, made: dict = made, go=go) -> None:
                go.wait()
                response = other.post("/v1/sweeps", json=body)
                answers["sweep"] = response.status_code
                if response.status_code == 202:
                    made["id"] = response.json()["id"]

            t = threading.Thread(target=post)
            t.start()
            go.wait()
            answers["delete"] = http.delete(f"/v1/datasets/{dataset_id}").status_code
            t.join()
            assert sorted(answers.values()) in ([202, 409], [204, 422]), answers
            if answers["delete"] == 204:
                assert mentions(redis_client, dataset_id) == []  # no trial, no sweep names it
            if "id" in made:
                http.post(f"/v1/sweeps/{made['id']}/cancel")
                wait_finished(http, made["id"], timeout=60)
