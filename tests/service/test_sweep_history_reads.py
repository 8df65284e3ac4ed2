"""GET /v1/sweeps/{id} on trials with long histories: what the API process reads and holds.

The trials are written and trained by hand on the real test Redis (workers/sweeps.py, workers/jobs.py
with the app's own artifact store), so each history's length and place (Redis or the store) is known;
the API is the app in-process (TestClient), so its store's reads can be counted.
"""

from __future__ import annotations

import json
import tracemalloc

import pytest
from fastapi.testclient import TestClient

from dnnq.workers import history_store, job_reads, jobs, keys, sweeps
from dnnq.workers.artifact_store import LocalArtifactStore
from dnnq.workers.history_store import HISTORY_INLINE_MAX
from dnnq.workers.spec import JobSpec

TENANT = "public"  # the tenant of every request when API keys are off (service/deps.py)
BASE = JobSpec(dataset_id="ab" * 12).model_dump(mode="json")
MOVED_EPOCHS = HISTORY_INLINE_MAX + 44  # past what a finished job keeps in Redis: its history moves


def new_sweep(r, n_trials: int) -> dict:
    overrides = sweeps.expand(None, [{"seed": i} for i in range(n_trials)], 64)
    trials = [sweeps.Trial(o, s) for o, s in zip(overrides, sweeps.trial_specs(BASE, overrides), strict=True)]
    return sweeps.create_sweep(r, tenant=TENANT, base=BASE, trials=trials)


def curve(epochs: int, final_loss: float) -> list[dict]:
    """`epochs` entries whose loss falls to `final_loss` at the last one (accuracy rises with it)."""
    return [
        {"epoch": e, "loss": final_loss + (epochs - e) * 0.01, "accuracy": 0.5 + e / (4 * epochs)}
        for e in range(1, epochs + 1)
    ]


def train(r, job_id: str, entries: list[dict], store=None) -> None:
    """Claim the job and record its epochs; with `store`, finish it as a worker does (a long history moves)."""
    assert jobs.claim(r, job_id, "w", 60_000)
    for at in range(0, len(entries), 1000):
        chunk = entries[at : at + 1000]
        progress = {"epoch": chunk[-1]["epoch"], "epochs": len(entries), "loss": chunk[-1]["loss"]}
        assert jobs.record_epochs(r, job_id, "w", chunk, progress) == "running"
    if store is not None:
        assert jobs.finish(r, job_id, "w", "succeeded", store=store)


@pytest.fixture
def make_client(api_settings):
    from dnnq.service.app import create_app

    opened = []

    def make(**settings) -> TestClient:
        client = TestClient(create_app(api_settings.model_copy(update=settings)))
        opened.append(client.__enter__())
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def history_reads(monkeypatch):
    """The history files read through the app's artifact store (the local one: DNNQ_DATA_DIR)."""
    reads: list[str] = []
    original = LocalArtifactStore.get

    def counting(self, key: str) -> bytes:
        if key.endswith("history.jsonl.gz"):
            reads.append(key)
        return original(self, key)

    monkeypatch.setattr(LocalArtifactStore, "get", counting)
    return reads


@pytest.fixture
def moved_sweep(redis_client, make_client):
    """A finished 4-trial sweep whose every history moved to the artifact store; trial 2 has the lowest
    final loss, trial 3 the highest final accuracy."""
    client = make_client()
    store = client.app.state.store
    sweep = new_sweep(redis_client, 4)
    finals = [0.4, 0.3, 0.1, 0.2]
    for job_id, final in zip(sweep["job_ids"], finals, strict=True):
        entries = curve(MOVED_EPOCHS, final)
        if final == 0.2:
            entries[-1]["accuracy"] = 0.99
        train(redis_client, job_id, entries, store=store)
        assert redis_client.llen(keys.job_history(job_id)) == 0
        assert redis_client.hget(keys.job(job_id), "history_stored") == str(MOVED_EPOCHS)
    return client, sweep, finals


def test_ranking_trials_whose_histories_moved_reads_no_history_file(redis_client, moved_sweep, history_reads):
    client, sweep, finals = moved_sweep
    got = client.get(f"/v1/sweeps/{sweep['id']}")
    assert got.status_code == 200
    view = got.json()
    assert view["metric"] == "loss"
    assert view["best"] == {"index": 2, "job_id": sweep["job_ids"][2], "value": pytest.approx(0.1)}
    assert [t["value"] for t in view["trials"]] == [pytest.approx(f) for f in finals]
    assert [t["best"] for t in view["trials"]] == [False, False, True, False]
    assert "history" not in view["trials"][0]

    by_accuracy = client.get(f"/v1/sweeps/{sweep['id']}", params={"metric": "accuracy"})
    assert by_accuracy.status_code == 200
    assert by_accuracy.json()["best"]["index"] == 3 and by_accuracy.json()["best"]["value"] == pytest.approx(0.99)

    cancelled = client.post(f"/v1/sweeps/{sweep['id']}/cancel")  # every trial finished: changes nothing
    assert cancelled.status_code == 202
    assert cancelled.json()["best"]["index"] == 2
    assert history_reads == [], "ranking read history files"


def test_the_move_keeps_the_last_entry_in_the_record_as_redis_held_it(redis_client, moved_sweep):
    _, sweep, finals = moved_sweep
    for job_id, final in zip(sweep["job_ids"], finals, strict=True):
        kept = json.loads(redis_client.hget(keys.job(job_id), "history_last"))
        assert kept["epoch"] == MOVED_EPOCHS and kept["loss"] == pytest.approx(final)
    # the job's own view does not show the field
    job = moved_sweep[0].get(f"/v1/jobs/{sweep['job_ids'][0]}").json()
    assert "history_last" not in job


def test_a_trial_moved_before_the_record_kept_its_last_entry_is_ranked_from_the_files_last_line(
    redis_client, moved_sweep, history_reads, monkeypatch
):
    client, sweep, _ = moved_sweep
    older = sweep["job_ids"][2]
    redis_client.hdel(keys.job(older), "history_last")  # as the move wrote records before this field
    history_store.forget(older)

    def whole_file(*args, **kwargs):
        raise AssertionError("ranking parsed a whole history")

    monkeypatch.setattr(job_reads, "read_history", whole_file)
    monkeypatch.setattr(history_store, "read_history", whole_file)
    for _ in range(2):
        got = client.get(f"/v1/sweeps/{sweep['id']}")
        assert got.status_code == 200
        assert got.json()["best"] == {"index": 2, "job_id": older, "value": pytest.approx(0.1)}
    assert history_reads == [history_store.history_key(older)]  # once: its last entry is remembered


def test_history_full_over_the_cap_is_a_422_that_says_where_to_read_instead(redis_client, make_client, history_reads):
    client = make_client(sweep_history_full_max_entries=3 * MOVED_EPOCHS - 1)
    store = client.app.state.store
    sweep = new_sweep(redis_client, 3)
    train(redis_client, sweep["job_ids"][0], curve(MOVED_EPOCHS, 0.1), store=store)  # moved
    train(redis_client, sweep["job_ids"][1], curve(MOVED_EPOCHS, 0.2))  # running: in Redis
    train(redis_client, sweep["job_ids"][2], curve(MOVED_EPOCHS, 0.3), store=store)

    refused = client.get(f"/v1/sweeps/{sweep['id']}", params={"history": "full"})
    assert refused.status_code == 422
    assert refused.headers["content-type"].startswith("application/problem+json")
    problem = refused.json()
    assert problem["errors"] == [{"field": "history", "message": problem["errors"][0]["message"]}]
    message = problem["errors"][0]["message"]
    assert f"{3 * MOVED_EPOCHS} epochs" in message and f"limit of {3 * MOVED_EPOCHS - 1}" in message
    assert "DNNQ_SWEEP_HISTORY_FULL_MAX_ENTRIES" in message and "/v1/jobs/{id}?history=full" in message
    assert history_reads == []  # refused before reading any

    thin = client.get(f"/v1/sweeps/{sweep['id']}", params={"history": "thin"})
    assert thin.status_code == 200
    assert [len(t["history"]) for t in thin.json()["trials"]] == [200, 200, 200]

    at_cap = make_client(sweep_history_full_max_entries=3 * MOVED_EPOCHS)
    full = at_cap.get(f"/v1/sweeps/{sweep['id']}", params={"history": "full"})
    assert full.status_code == 200
    trials = full.json()["trials"]
    assert [len(t["history"]) for t in trials] == [MOVED_EPOCHS] * 3
    assert [t["history"][-1]["loss"] for t in trials] == [pytest.approx(x) for x in (0.1, 0.2, 0.3)]
    assert [t["history"][0]["epoch"] for t in trials] == [1, 1, 1]


def test_history_thin_holds_one_trials_history_at_a_time(redis_client, make_client):
    """16 running trials of 6,000 epochs each (in Redis): the thin view's peak memory is a few times one
    trial's parsed history (its raw reply, its entries, the answer's 16 x 200), not sixteen times."""
    client = make_client()
    n_trials, epochs = 16, 6000
    sweep = new_sweep(redis_client, n_trials)
    for i, job_id in enumerate(sweep["job_ids"]):
        train(redis_client, job_id, curve(epochs, 0.1 + i / 100))
    client.get(f"/v1/sweeps/{sweep['id']}", params={"history": "thin"})  # warm: imports, pools

    tracemalloc.start()
    try:
        one = [json.loads(e) for e in redis_client.lrange(keys.job_history(sweep["job_ids"][0]), 0, -1)]
        one_trial = tracemalloc.get_traced_memory()[0]
        del one
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        got = client.get(f"/v1/sweeps/{sweep['id']}", params={"history": "thin"})
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert got.status_code == 200
    trials = got.json()["trials"]
    assert [len(t["history"]) for t in trials] == [200] * n_trials
    assert [t["history"][-1]["epoch"] for t in trials] == [epochs] * n_trials
    assert peak < 5 * one_trial, f"peak {peak / 1e6:.1f} MB for one trial's {one_trial / 1e6:.1f} MB"
