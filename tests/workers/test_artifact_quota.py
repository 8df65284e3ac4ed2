"""A tenant's artifact quota (DNNQ_MAX_ARTIFACT_BYTES_PER_TENANT): each job reserves the most its files may
take (workers/artifact_quota.py) in the step that writes its record, and gives it back in the step that
deletes it (real Redis, real artifact writers)."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from dnnq.models import OPTIMIZERS, Checkpoint, EpochRecord, TrainConfig
from dnnq.workers import artifacts, history_store, jobs, keys, sweeps
from dnnq.workers.artifact_quota import max_artifact_bytes
from dnnq.workers.spec import JobSpec

DATASET = "ab" * 12
# Class names whose text grows most when written: quotes, backslashes, non-ASCII (escaped twice over).
CLASSES = ['"\\ü😀\n' * 8 + str(i) for i in range(12)]
WIDEST = -2.2250738585072014e-308  # the longest repr a double has


def reserved(r, tenant: str = "public") -> int:
    return int(r.get(keys.tenant_artifact_bytes(tenant)) or 0)


def new_job(r, need: int, quota: int | None = None, tenant: str = "public") -> dict:
    return jobs.create_job(
        r,
        tenant=tenant,
        spec={"dataset_id": DATASET},
        queue="default",
        dataset_id=DATASET,
        artifact_bytes=need,
        max_artifact_bytes=quota,
    )


def cancelled(r, job: dict) -> str:
    assert jobs.request_cancel(r, job["id"]) == "cancelled"  # queued -> cancelled: now it may be deleted
    return job["id"]


def stored_bytes(store, job_id: str) -> int:
    return sum(p.stat().st_size for p in (store.root / "jobs" / job_id).iterdir())


@pytest.mark.parametrize(
    ("dims", "optimizer", "dtype", "output", "epochs"),
    [
        ([5, 1], "gd", "float32", "sigmoid", 1),
        ([30, 64, 64, 12], "adam", "float64", "softmax", 600),
        ([7] + [3] * 40 + [12], "momentum", "float32", "softmax", 300),
    ],
)
def test_the_reservation_holds_every_file_a_job_writes_at_its_largest(store, dims, optimizer, dtype, output, epochs):
    """Every file of jobs/{id}/ at once, as the worker writes them: the weights in every format, a
    checkpoint of the last epoch, the history moved to the store; widest numbers and class names."""
    cfg = TrainConfig(layer_dims=dims, optimizer=optimizer, dtype=dtype, output=output, epochs=epochs)
    classes = CLASSES if output == "softmax" else None
    rng = np.random.default_rng(0)
    params = {}
    for layer in range(1, len(dims)):
        params[f"W{layer}"] = rng.normal(size=(dims[layer], dims[layer - 1])).astype(dtype)
        params[f"b{layer}"] = rng.normal(size=(dims[layer], 1)).astype(dtype)
    slots = OPTIMIZERS[optimizer].slots
    state = {f"{slot}_{k}": rng.normal(size=p.shape).astype(dtype) for slot in slots for k, p in params.items()}
    state["t"] = np.array(10**9, dtype=np.int64)  # as Optimizer.state_arrays writes it
    history = [EpochRecord(999_999, WIDEST, WIDEST, WIDEST, WIDEST) for _ in range(epochs)]
    job_id = "0" * 32
    artifacts.save_trained(
        store,
        job_id,
        params,
        {
            "hidden_activation": "relu",
            "output": output,
            "input_scale": 2.2250738585072014e-308,  # the longest positive repr
            "classes": classes,
            "metrics": {"final_loss": WIDEST, "train_accuracy": WIDEST, "validation_accuracy": WIDEST},
            "dataset_id": DATASET,
            "label_kind": "integer",
        },
    )
    checkpoint = Checkpoint(epoch=epochs, parameters=params, optimizer_state=state, history=history, seed=2**32 - 1)
    artifacts.save_checkpoint(store, job_id, checkpoint)
    history_store.write_history(store, job_id, [json.dumps(e.to_dict()) for e in history])
    written = stored_bytes(store, job_id)
    assert len(list((store.root / "jobs" / job_id).iterdir())) == 6
    need = max_artifact_bytes(cfg, classes)
    assert written <= need
    assert need <= 1.2 * written + 1024 * 1024  # a bound, not a guess far off: room goes to real bytes


def test_a_job_past_the_quota_is_refused_and_nothing_of_it_is_written(redis_client):
    first = new_job(redis_client, 600, quota=1000)
    assert first["artifact_bytes"] == 600 and reserved(redis_client) == 600
    with pytest.raises(jobs.ArtifactQuotaExceeded) as over:
        new_job(redis_client, 500, quota=1000)
    assert (over.value.need, over.value.used, over.value.quota) == (500, 600, 1000)
    assert "1100 bytes, over its quota of 1000 bytes" in str(over.value)
    assert "DNNQ_MAX_ARTIFACT_BYTES_PER_TENANT; 600 bytes are in use" in str(over.value)
    assert "DELETE /v1/jobs/{id}" in str(over.value)
    assert jobs.list_jobs(redis_client, "public")[1] == 1 and reserved(redis_client) == 600
    assert redis_client.zcard(keys.OUTBOX) == 1 and jobs.count_unfinished(redis_client, "public") == 1
    assert new_job(redis_client, 400, quota=1000)["artifact_bytes"] == 400  # the room left, exactly
    assert new_job(redis_client, 500, quota=1000, tenant="other")  # another tenant has its own


def test_a_job_larger_than_the_whole_quota_says_so(redis_client):
    with pytest.raises(jobs.ArtifactQuotaExceeded) as over:
        new_job(redis_client, 2000, quota=1000)
    assert "more than the whole quota: use a smaller network or fewer epochs" in str(over.value)
    assert not redis_client.exists(keys.tenant_artifact_bytes("public"))


def test_deleting_jobs_gives_their_room_back_and_the_count_ends_at_zero(redis_client, store):
    ids = [cancelled(redis_client, new_job(redis_client, 300, quota=1000)) for _ in range(3)]
    with pytest.raises(jobs.ArtifactQuotaExceeded):
        new_job(redis_client, 300, quota=1000)
    jobs.delete_job(redis_client, store, ids[0], "public")
    assert reserved(redis_client) == 600
    ids.append(cancelled(redis_client, new_job(redis_client, 300, quota=1000)))
    for job_id in ids[1:]:
        jobs.delete_job(redis_client, store, job_id, "public")
    assert not redis_client.exists(keys.tenant_artifact_bytes("public"))


def test_retention_gives_the_expired_jobs_room_back(redis_client, store):
    from dnnq.workers.recovery import housekeeping

    cancelled(redis_client, new_job(redis_client, 300))
    new_job(redis_client, 200)  # still queued: retention leaves it
    time.sleep(0.01)
    assert housekeeping(redis_client, store, retention_seconds=0.001)["jobs_expired"] == 1
    assert reserved(redis_client) == 200


def test_without_a_quota_jobs_still_reserve_so_a_quota_set_later_counts_them(redis_client, store):
    job = new_job(redis_client, 700)
    assert reserved(redis_client) == 700
    with pytest.raises(jobs.ArtifactQuotaExceeded):
        new_job(redis_client, 400, quota=1000)
    jobs.delete_job(redis_client, store, cancelled(redis_client, job), "public")
    assert reserved(redis_client) == 0


def test_a_record_without_a_reservation_is_deleted_without_touching_the_count(redis_client, store):
    """A job written before reservations existed has no artifact_bytes: it gives nothing back."""
    kept = new_job(redis_client, 500)
    old = new_job(redis_client, 0)
    redis_client.hdel(keys.job(old["id"]), "artifact_bytes")
    jobs.delete_job(redis_client, store, cancelled(redis_client, old), "public")
    assert reserved(redis_client) == 500 and kept


def test_two_submits_at_once_cannot_both_take_the_last_room(redis_client, redis_url):
    """The quota is read and the reservation counted in one script: of many submits racing for room for
    one, exactly one is created."""
    import redis

    new_job(redis_client, 900, quota=1000)
    n = 8
    start = threading.Barrier(n)
    outcomes: list[str] = []

    def submit() -> None:
        r = redis.Redis.from_url(redis_url, decode_responses=True)
        start.wait()
        try:
            new_job(r, 100, quota=1000)
            outcomes.append("created")
        except jobs.ArtifactQuotaExceeded:
            outcomes.append("over")

    threads = [threading.Thread(target=submit) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["created"] + ["over"] * (n - 1)
    assert reserved(redis_client) == 1000 and jobs.list_jobs(redis_client, "public")[1] == 2


def trials(n: int, need: int) -> list[sweeps.Trial]:
    base = JobSpec(dataset_id=DATASET).model_dump(mode="json")
    overrides = sweeps.expand({"seed": list(range(n))}, None, 64)
    specs = sweeps.trial_specs(base, overrides)
    return [sweeps.Trial(o, s, need) for o, s in zip(overrides, specs, strict=True)]


def test_a_sweep_reserves_all_its_trials_or_none(redis_client, store):
    new_job(redis_client, 400, quota=1000)
    base = JobSpec(dataset_id=DATASET).model_dump(mode="json")
    with pytest.raises(jobs.ArtifactQuotaExceeded) as over:
        sweeps.create_sweep(redis_client, tenant="public", base=base, trials=trials(4, 200), max_artifact_bytes=1000)
    assert (over.value.need, over.value.used) == (800, 400)
    assert str(over.value).startswith("This sweep's 4 trials together may store up to 800 bytes")
    assert jobs.list_jobs(redis_client, "public")[1] == 1 and reserved(redis_client) == 400
    assert sweeps.list_sweeps(redis_client, "public")[1] == 0 and redis_client.zcard(keys.OUTBOX) == 1

    sweep = sweeps.create_sweep(
        redis_client, tenant="public", base=base, trials=trials(3, 200), max_artifact_bytes=1000
    )
    assert reserved(redis_client) == 1000
    assert [jobs.get_job(redis_client, j)["artifact_bytes"] for j in sweep["job_ids"]] == [200] * 3
    for job_id in sweep["job_ids"]:
        jobs.request_cancel(redis_client, job_id)
    sweeps.delete_sweep(redis_client, store, sweep["id"], "public")
    assert reserved(redis_client) == 400
