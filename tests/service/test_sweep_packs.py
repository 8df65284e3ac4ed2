"""Sweeps trained as packs, end to end: uvicorn + real workers + Redis. One worker takes a sweep's four
trials as one pack (workers/pack_runner.py); each trial's history and weights equal the same spec run
as a solo job; a worker killed -9 mid-pack leaves every trial to finish, resumed, with the solo weights."""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import pytest

from dnnq.workers import jobs

pytestmark = pytest.mark.e2e

TERMINAL = {"succeeded", "failed", "cancelled"}
LRS = [0.05, 0.1, 0.2, 0.3]


@pytest.fixture
def live_stack_env() -> dict[str, str]:
    return {"DNNQ_MAX_QUEUED_JOBS_PER_TENANT": "1000"}


def wait_for(predicate, timeout: float, what: str, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def npz_arrays(raw: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def upload(http: httpx.Client, m: int) -> str:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(m, 6))
    y = (X[:, 0] * X[:, 1] - X[:, 2] > 0).astype(np.int64)
    buf = io.BytesIO()
    np.savez(buf, X=X, Y=y)
    got = http.post("/v1/datasets", files={"file": ("pack.npz", buf.getvalue())})
    assert got.status_code == 201, got.text
    return got.json()["id"]


def base_spec(dataset: str, epochs: int, **training) -> dict:
    return {
        "dataset_id": dataset,
        "model": {"hidden_layers": [16, 8]},
        "training": {"epochs": epochs, "optimizer": "momentum", "batch_size": 32, "dtype": "float64", **training},
        "device": "cpu",
    }


def finished(http: httpx.Client, job_id: str, timeout: float = 180) -> dict:
    return wait_for(
        lambda: (j := http.get(f"/v1/jobs/{job_id}", params={"history": "full"}).json())["status"] in TERMINAL and j,
        timeout,
        f"job {job_id} to end",
        every=0.2,
    )


def solo_twins(http: httpx.Client, base: dict) -> list[dict]:
    """The sweep's trials as ordinary jobs, each submitted after the last one ended."""
    out = []
    for lr in LRS:
        spec = {**base, "training": {**base["training"], "learning_rate": lr}}
        got = http.post("/v1/jobs", json=spec)
        assert got.status_code == 202, got.text
        out.append(finished(http, got.json()["id"]))
    return out


def assert_same_training(http: httpx.Client, trial: dict, solo: dict) -> None:
    assert solo["status"] == "succeeded", solo["error"]
    assert [e["epoch"] for e in trial["history"]] == [e["epoch"] for e in solo["history"]]
    for a, b in zip(trial["history"], solo["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-12, abs=0)
    got = [http.get(f"/v1/jobs/{j['id']}/weights", params={"format": "npz"}) for j in (trial, solo)]
    assert got[0].status_code == got[1].status_code == 200
    packed, alone = npz_arrays(got[0].content), npz_arrays(got[1].content)
    assert packed.keys() == alone.keys() and packed
    for name in packed:
        assert packed[name].dtype == alone[name].dtype == np.float64, name
        np.testing.assert_allclose(packed[name], alone[name], rtol=1e-12, atol=0, err_msg=name)


def test_a_sweep_trains_as_one_pack_in_one_worker_equal_to_solo_jobs(live_stack):
    with live_stack.client() as http:
        base = base_spec(upload(http, 600), epochs=8)
        got = http.post("/v1/sweeps", json={"base": base, "grid": {"lr": LRS}})
        assert got.status_code == 202, got.text
        sweep = got.json()
        assert len({t["pack"] for t in sweep["trials"]}) == 1  # one pack id for all four
        trials = [finished(http, t["job_id"]) for t in sweep["trials"]]
        for trial in trials:
            assert trial["status"] == "succeeded", trial["error"]
            assert trial["timings"]["pack_size"] == 4  # one worker, one message: all four in its pack
            assert trial["attempts"] == 1
        waits = sorted(t["timings"]["pack_wait_s"] for t in trials)
        assert waits[0] < waits[-1]  # trained one after another in the same process
        for trial, solo in zip(trials, solo_twins(http, base), strict=True):
            assert "pack_size" not in solo["timings"]
            assert_same_training(http, trial, solo)


@pytest.mark.slow
def test_a_worker_killed_mid_pack_leaves_every_trial_to_finish_with_the_solo_weights(
    live_stack, worker, redis_client, store
):
    epochs = 30
    with live_stack.client() as http:
        base = base_spec(upload(http, 4000), epochs=epochs, checkpoint_every=1)
        got = http.post("/v1/sweeps", json={"base": base, "grid": {"lr": LRS}})
        assert got.status_code == 202, got.text
        ids = [t["job_id"] for t in got.json()["trials"]]

        def mid_pack() -> bool:
            states = [jobs.get_job(redis_client, i)["status"] for i in ids]
            if "succeeded" not in states:
                return False
            training = [
                i
                for i, s in zip(ids, states, strict=True)
                if s == "running" and len(jobs.get_history(redis_client, i)) >= 3
            ]
            return bool(training) and store.exists(f"jobs/{training[0]}/checkpoint.npz")

        wait_for(mid_pack, 120, "one trial done and another training from a checkpoint", every=0.02)
        live_stack.workers[0].kill()  # kill -9 of the worker's process group, mid-pack
        states = [jobs.get_job(redis_client, i)["status"] for i in ids]
        if states.count("succeeded") == len(ids):
            pytest.fail("the pack finished before the worker was killed; make the trials longer")
        assert "running" in states, states

        worker()  # its sweeper requeues the unfinished trials once their 3 s leases expire
        trials = [finished(http, i) for i in ids]
        for trial in trials:
            assert trial["status"] == "succeeded", trial["error"]
            assert [e["epoch"] for e in trial["history"]] == list(range(1, epochs + 1))
        resumed = [t for t in trials if t["attempts"] == 2]
        assert resumed and any((t["resumed_from_epoch"] or 0) > 0 for t in resumed)
        for trial, solo in zip(trials, solo_twins(http, base), strict=True):
            assert_same_training(http, trial, solo)
