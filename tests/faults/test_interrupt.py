"""Ctrl-C (SIGINT to `dnnq up`'s process group, as a terminal sends it) or SIGTERM to `dnnq up` while
a job trains: everything stops cleanly, the job is released at the end of its epoch with a
checkpoint, and a new `dnnq up` on the same data dir resumes it at once, its attempt unspent (after
Ctrl-C it then ends as an identical job that was never interrupted does; after SIGTERM it is cancelled
to save time: tests/workers/test_runner.py compares resumed and uninterrupted runs in-process too).

Real processes throughout: `python -m dnnq up` (embedded Redis, one worker, one API process).
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from tests.cli.test_up import Up, alive, descendants

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc (Linux) to find child processes"),
]

EPOCHS = 1000  # the signal comes at epoch 100: mid-job even on a fast machine
SPEC = {
    "model": {"hidden_layers": [32, 16]},
    "device": "cpu",
    "training": {"epochs": EPOCHS, "batch_size": 64, "optimizer": "adam", "learning_rate": 0.01, "seed": 1},
}


def _until(predicate, timeout: float, what: str, log, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"{what} within {timeout}s\n{log()[-4000:]}")


def _job(up: Up, job_id: str, history: str = "none") -> dict:
    response = httpx.get(f"{up.url}/v1/jobs/{job_id}", params={"history": history}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def _assert_clean(log: str) -> None:
    for bad in ('"level": "critical"', '"level": "error"', "Traceback", "Unrecoverable error"):
        assert bad not in log, f"{bad!r} in the log:\n{log[-6000:]}"


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupted_job_resumes_from_its_checkpoint_at_once_after_a_restart(tmp_path, how):
    data_dir = tmp_path / "dnnq-data"
    up = Up(tmp_path, data_dir, "first", extra=("--api-workers", "1", "--grace", "20"))
    try:
        up.wait_ready()
        moons = httpx.post(
            f"{up.url}/v1/datasets/synthetic",
            timeout=30,
            json={"name": "moons", "n_samples": 1000, "noise": 0.2, "seed": 1},
        )
        assert moons.status_code == 201, moons.text
        # after Ctrl-C, a baseline waits behind the job (one worker): the same spec, never interrupted
        submitted = [
            httpx.post(f"{up.url}/v1/jobs", timeout=30, json={"dataset_id": moons.json()["id"], **SPEC})
            for _ in range(2 if how == "ctrl-c" else 1)
        ]
        assert {r.status_code for r in submitted} == {202}, [r.text for r in submitted]
        job_id = submitted[0].json()["id"]
        at_signal = _until(
            lambda: (
                (_job(up, job_id)["progress"] or {}).get("epoch", 0) >= 100 and _job(up, job_id)["progress"]["epoch"]
            ),
            120,
            "the job did not train 100 epochs",
            up.log,
        )

        children = descendants(up.proc.pid)
        if how == "ctrl-c":
            os.killpg(up.proc.pid, signal.SIGINT)  # what a terminal sends to its foreground process group
        else:
            up.proc.send_signal(signal.SIGTERM)
        assert up.proc.wait(60) in (0, 130), up.log()[-4000:]
        _until(lambda: not [p for p in children if alive(p)], 10, "children still alive after dnnq up exited", up.log)
        first_log = up.log()
        _assert_clean(first_log)
        assert '"event": "job.released"' in first_log
        assert "the embedded Redis server died" not in first_log
    finally:
        up.cleanup()

    again = Up(tmp_path, data_dir, "second", extra=("--api-workers", "1"))
    try:
        started_at = time.monotonic()

        def ready():  # the API answers and a worker is alive: what /readyz says
            try:
                return httpx.get(f"{again.url}/readyz", timeout=2).status_code == 200 and time.monotonic()
            except httpx.TransportError:
                return False

        ready_at = _until(ready, 120, "/readyz did not answer 200", again.log, every=0.02)

        def training_again():
            job = _job(again, job_id)
            resumed = job["resumed_from_epoch"]
            return (
                (time.monotonic(), job)
                if (
                    job["status"] == "running"
                    and resumed is not None
                    and (job["progress"] or {}).get("epoch", 0) > resumed
                )
                else None
            )

        running_at, job = _until(training_again, 60, "the released job did not train again", again.log, every=0.02)
        restart_to_running = running_at - ready_at
        print(
            f"\n[{how}] restart ready (/readyz 200) -> the released job training again: {restart_to_running:.2f} s; "
            f"from `dnnq up` started: {running_at - started_at:.2f} s (resumed from epoch "
            f"{job['resumed_from_epoch']}, signal at epoch {at_signal})"
        )
        assert restart_to_running <= 5.0, again.log()[-4000:]
        assert job["attempts"] == 1
        assert job["resumed_from_epoch"] >= at_signal  # from the checkpoint written at the release
        assert job["release_reason"] == "released: worker shutting down" and job["released_at"]  # the view says why

        def finished(jid):
            return lambda: (j := _job(again, jid, "full"))["status"] in ("succeeded", "failed", "cancelled") and j

        if how == "sigterm":
            assert httpx.post(f"{again.url}/v1/jobs/{job_id}/cancel", timeout=10).status_code == 202
            cancelled = _until(finished(job_id), 60, "the resumed job did not stop when cancelled", again.log)
            assert cancelled["status"] == "cancelled" and cancelled["attempts"] == 1
            epochs = [h["epoch"] for h in cancelled["history"]]
            assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) > job["resumed_from_epoch"]
            _assert_clean(again.log())
            return
        baseline_id = submitted[1].json()["id"]
        done = _until(finished(job_id), 300, "the resumed job did not finish", again.log, every=0.3)
        baseline = _until(finished(baseline_id), 300, "the baseline job did not finish", again.log, every=0.3)
        assert done["status"] == baseline["status"] == "succeeded", (done["error"], baseline["error"])
        assert done["attempts"] == 1 and baseline["attempts"] == 1
        assert [h["epoch"] for h in done["history"]] == list(range(1, EPOCHS + 1))  # continued, nothing twice
        assert done["metrics"]["final_loss"] == pytest.approx(baseline["metrics"]["final_loss"], rel=1e-6)
        assert done["metrics"]["train_accuracy"] == baseline["metrics"]["train_accuracy"]
        _assert_clean(again.log())
    finally:
        again.cleanup()


def test_ctrl_c_to_a_plain_worker_in_a_terminal_releases_its_job_to_the_next_worker(
    redis_client, redis_url, data_dir, store, celery_client, tmp_path, own_workers
):
    """`python -m dnnq.workers` run by hand: Ctrl-C reaches its main process (warm shutdown) and its pool
    child (which ignores SIGINT, as Celery sets it). The job is released at its epoch's end, the
    worker exits 0 without a traceback, and another worker takes the job at once from its checkpoint."""
    from dnnq.workers import artifacts, jobs
    from tests.faults.conftest import create_and_send, epochs_of, make_dataset, start_worker, wait_for

    first = start_worker(redis_url, data_dir, tmp_path)
    own_workers.append(first)
    ds = make_dataset(redis_client, store, m=1000)
    job_id = create_and_send(
        redis_client, celery_client, ds["id"], hidden=(32, 16), epochs=EPOCHS, batch_size=64, seed=1
    )
    wait_for(lambda: len(epochs_of(redis_client, job_id)) >= 50, 120, "the job to train 50 epochs")
    os.killpg(first.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground group
    assert first.proc.wait(60) == 0, first.log()[-4000:]
    _assert_clean(first.log())
    assert '"event": "job.released"' in first.log()

    job = jobs.get_job(redis_client, job_id)
    assert (
        job["status"] == "queued" and job["attempts"] == 1 and job["release_reason"] == "released: worker shutting down"
    )
    saved = artifacts.load_checkpoint(store, job_id).epoch
    assert epochs_of(redis_client, job_id) == list(range(1, saved + 1))  # history up to the checkpoint, none lost
    assert jobs.queue_depth(redis_client, "default") == 1  # its message, and only that one
    assert redis_client.llen("default") == 1  # at the resumed-job priority: ahead of new jobs

    second = start_worker(redis_url, data_dir, tmp_path)
    own_workers.append(second)
    registered = time.monotonic()
    wait_for(
        lambda: (
            (j := jobs.get_job(redis_client, job_id))["status"] == "running"
            and len(epochs_of(redis_client, job_id)) > saved
            and j["resumed_from_epoch"] == saved
        ),
        30,
        "the next worker to resume the job",
    )
    print(f"\n[plain worker] second worker registered -> the job training again: {time.monotonic() - registered:.2f} s")
    assert time.monotonic() - registered <= 5.0
    assert jobs.get_job(redis_client, job_id)["attempts"] == 1
    jobs.request_cancel(redis_client, job_id)
    wait_for(lambda: jobs.get_job(redis_client, job_id)["status"] == "cancelled", 60, "the job to stop when cancelled")
    assert "job.not_claimed" not in second.log()  # one delivery: the first one was acknowledged
