"""workers/sweeps.py: expanding a sweep request, and writing a sweep's trials in one step (real Redis)."""

from __future__ import annotations

import json
import math

import pytest

from dnnq.workers import jobs, keys, sweeps
from dnnq.workers.spec import JobSpec

DATASET = "ab" * 12
VAL = "cd" * 12
BASE = JobSpec(dataset_id=DATASET).model_dump(mode="json")


def plan(requested: list[dict], base: dict = BASE) -> list[sweeps.Trial]:
    overrides = sweeps.expand(None, requested, 64)
    return [sweeps.Trial(o, s) for o, s in zip(overrides, sweeps.trial_specs(base, overrides), strict=True)]


def test_grid_is_the_cartesian_product_first_field_slowest():
    out = sweeps.expand({"lr": [0.1, 0.01], "seed": [1, 2, 3]}, None, 64)
    assert out == [{"training.learning_rate": lr, "training.seed": seed} for lr in (0.1, 0.01) for seed in (1, 2, 3)]


def test_names_paths_aliases_and_nested_objects_resolve_to_one_path():
    out = sweeps.expand(None, [{"learning_rate": 0.1}, {"training": {"l2": 0.5}}, {"hidden_layers": [3]}], 64)
    assert out == [{"training.learning_rate": 0.1}, {"training.l2": 0.5}, {"model.hidden_layers": [3]}]
    with pytest.raises(sweeps.SweepError) as err:
        sweeps.expand(None, [{"lr": 0.1, "training.learning_rate": 0.2}], 64)
    assert err.value.errors[0]["field"] == "trials[0].training.learning_rate"


@pytest.mark.parametrize(
    ("grid", "trials", "field", "words"),
    [
        (None, None, "grid", "exactly one"),
        ({"lr": [0.1]}, [{}], "grid", "exactly one"),
        ({}, None, "grid", "at least one"),
        ({"lr": []}, None, "grid.training.learning_rate", "non-empty list"),
        ({"lr": 0.1}, None, "grid.training.learning_rate", "non-empty list"),
        ({"nope": [1]}, None, "grid.nope", "unknown field"),
        ({"lr": list(range(1, 9)), "seed": list(range(9))}, None, "grid", "limit of 64"),
        # a product far past any limit is refused as it grows, never built
        ({"seed": list(range(1000)), "l2": [0.0] * 1000, "epochs": [1] * 1000}, None, "grid", "limit of 64"),
        (None, [{}] * 65, "trials", "65 trials is over the limit of 64"),
        (None, [], "trials", "non-empty list"),
        (None, [1], "trials[0]", "object of field"),
        (None, [{"x" * 10_000: 1}], "trials[0]", "unknown field"),
    ],
)
def test_bad_requests_name_the_field(grid, trials, field, words):
    with pytest.raises(sweeps.SweepError) as err:
        sweeps.expand(grid, trials, 64)
    assert err.value.errors[0]["field"].startswith(field)
    assert words in err.value.errors[0]["message"]
    assert len(str(err.value)) < 2000  # a huge name is shortened, not echoed


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, 1e999, "fast", None])
def test_a_bad_trial_value_names_the_trial_index_and_field(value):
    overrides = sweeps.expand(None, [{"lr": 0.1}, {"lr": value}], 64)
    with pytest.raises(sweeps.SweepError) as err:
        sweeps.trial_specs(BASE, overrides)
    assert err.value.errors[0]["field"] == "trials[1].training.learning_rate"
    assert "trial 1" in err.value.errors[0]["message"]


def test_every_bad_trial_is_reported_up_to_a_bound():
    overrides = sweeps.expand({"lr": [-1.0] * 60}, None, 64)
    with pytest.raises(sweeps.SweepError) as err:
        sweeps.trial_specs(BASE, overrides)
    assert len(err.value.errors) == sweeps.MAX_REPORTED_ERRORS + 1
    assert err.value.errors[-1]["message"] == "and 40 more."


def test_pack_key_groups_what_can_train_together():
    specs = sweeps.trial_specs(
        BASE,
        [
            {"training.learning_rate": 0.1, "training.seed": 1},
            {"training.learning_rate": 0.2, "training.seed": 2, "training.l2": 0.5},  # full batch: seed free
            {"model.hidden_layers": [4]},
            {"training.batch_size": 8, "training.seed": 1},
            {"training.batch_size": 8, "training.seed": 2},  # shuffled mini-batches: another order
            {"training.batch_size": 8, "training.seed": 2, "training.shuffle": False, "training.learning_rate": 1},
            {"training.batch_size": 8, "training.seed": 3, "training.shuffle": False},
        ],
    )
    k = [sweeps.pack_key(s) for s in specs]
    assert k[0] == k[1] and k[2] != k[0] and k[3] != k[4] and k[5] == k[6] and len(set(k)) == 5


def test_create_sweep_writes_every_trial_as_an_ordinary_queued_job(redis_client):
    r = redis_client
    trials = plan(sweeps.expand({"lr": [0.1, 0.01], "seed": [1, 2]}, None, 64))
    sweep = sweeps.create_sweep(r, tenant="acme", base=BASE, trials=trials, grid={"lr": [0.1, 0.01]})
    assert sweep["n_trials"] == 4 and len(sweep["job_ids"]) == 4 and sweep["metric"] == "loss"
    assert sweeps.get_sweep(r, sweep["id"], "acme")["job_ids"] == sweep["job_ids"]
    assert sweeps.get_sweep(r, sweep["id"], "other") is None
    assert list(sweep["packs"].values()) == [[0, 1, 2, 3]]  # full batch: one pack
    for i, job_id in enumerate(sweep["job_ids"]):
        job = jobs.get_job(r, job_id, "acme")
        assert job["status"] == "queued" and job["sweep_id"] == sweep["id"] and job["sweep_trial"] == i
        assert job["sweep_overrides"] == trials[i].overrides
        assert job["spec"]["training"]["learning_rate"] == trials[i].spec.training.learning_rate
    assert set(jobs.unsent(r)) == set(sweep["job_ids"])  # in the outbox: the caller sends them
    assert jobs.count_unfinished(r, "acme") == 4
    page, total = jobs.list_jobs(r, "acme", status="queued")
    assert total == 4 and {j["id"] for j in page} == set(sweep["job_ids"])


def _keys_of(r, job_id: str) -> dict[str, str]:
    """Every key that mentions the job, with the id replaced, and its type."""
    out = {}
    for key in r.keys("*"):
        kind = r.type(key)
        holds = job_id in key
        if kind == "zset":
            holds = holds or r.zscore(key, job_id) is not None
        elif kind == "set":
            holds = holds or r.sismember(key, job_id)
        if holds:
            out[key.replace(job_id, "ID")] = kind
    return out


def test_a_trial_is_written_exactly_as_create_job_writes_a_job(redis_client):
    """create_sweep runs create_job.lua's body: the same keys, indexes, counts and record fields."""
    r = redis_client
    spec = JobSpec(dataset_id=DATASET, validation_dataset_id=VAL)
    body = spec.model_dump(mode="json")
    job = jobs.create_job(r, tenant="t", spec=body, queue="default", dataset_id=DATASET, validation_dataset_id=VAL)
    solo_keys, solo = _keys_of(r, job["id"]), r.hgetall(keys.job(job["id"]))
    by_status = r.hgetall(keys.BY_STATUS)
    r.flushall()
    sweep = sweeps.create_sweep(r, tenant="t", base=body, trials=[sweeps.Trial({}, spec)])
    trial_id = sweep["job_ids"][0]
    assert _keys_of(r, trial_id) == solo_keys
    trial = r.hgetall(keys.job(trial_id))
    assert {k for k in trial if not k.startswith("sweep_")} == set(solo)
    for field in ("status", "queue", "spec", "dataset_id", "validation_dataset_id", "attempts", "tenant"):
        assert trial[field] == solo[field], field
    assert r.hgetall(keys.BY_STATUS) == by_status
    assert sweep["metric"] == "val_loss"


def test_the_tenant_limit_counts_every_trial_and_writes_nothing_when_over(redis_client):
    r = redis_client
    jobs.create_job(r, tenant="t", spec={}, queue="default", dataset_id=DATASET)
    with pytest.raises(sweeps.TooManyUnfinished) as err:
        sweeps.create_sweep(r, tenant="t", base=BASE, trials=plan([{}] * 4), max_unfinished=4)
    assert err.value.unfinished == 1
    assert jobs.count_unfinished(r, "t") == 1 and r.zcard(keys.tenant_sweeps("t")) == 0
    assert len(r.keys(f"{keys.PREFIX}job:*")) == 1
    sweeps.create_sweep(r, tenant="t", base=BASE, trials=plan([{}] * 3), max_unfinished=4)
    assert jobs.count_unfinished(r, "t") == 4


def test_list_newest_first_and_paged(redis_client):
    r = redis_client
    made = [sweeps.create_sweep(r, tenant="t", base=BASE, trials=plan([{}]))["id"] for _ in range(3)]
    sweeps.create_sweep(r, tenant="u", base=BASE, trials=plan([{}]))
    page, total = sweeps.list_sweeps(r, "t", offset=0, limit=2)
    assert total == 3 and len(page) == 2 and {p["id"] for p in page} <= set(made)
    assert [p["id"] for p in sweeps.list_sweeps(r, "t", 0, 10)[0]] == list(reversed(made))


def _finish(r, job_id, entries, status="succeeded"):
    assert jobs.claim(r, job_id, "w", 5000)
    jobs.record_epochs(r, job_id, "w", entries, {"epoch": len(entries), "epochs": 2, "loss": entries[-1]["loss"]})
    assert jobs.finish(r, job_id, "w", status)


def test_best_trial_by_metric_and_cancel(redis_client):
    r = redis_client
    sweep = sweeps.create_sweep(r, tenant="t", base=BASE, trials=plan([{}] * 5))
    ids = sweep["job_ids"]
    _finish(r, ids[0], [{"epoch": 1, "loss": 0.5, "accuracy": 0.7}])
    _finish(r, ids[1], [{"epoch": 1, "loss": 0.2, "accuracy": 0.6}])
    _finish(r, ids[2], [{"epoch": 1, "loss": 0.1, "accuracy": 0.9}], status="failed")  # not a candidate
    assert jobs.claim(r, ids[3], "w", 5000)  # running
    records = sweeps.trial_jobs(r, sweep)
    assert records[1]["last_epoch"]["loss"] == 0.2 and records[4]["last_epoch"] is None
    assert sweeps.best_trial(records, "loss") == 1
    assert sweeps.best_trial(records, "accuracy") == 0
    assert sweeps.best_trial(records, "val_loss") is None
    assert sorted(sweeps.cancel_sweep(r, sweep)) == sorted([ids[3], ids[4]])
    statuses = [j["status"] for j in sweeps.trial_jobs(r, sweep, last_epoch=False)]
    assert statuses == ["succeeded", "succeeded", "failed", "cancelling", "cancelled"]
    assert sweeps.cancel_sweep(r, sweep) == [ids[3]]  # still cancelling: asked again, harmlessly


def test_the_sweep_record_is_json_clean(redis_client):
    sweep = sweeps.create_sweep(redis_client, tenant="t", base=BASE, trials=plan([{"lr": 0.5}]))
    raw = redis_client.hgetall(keys.sweep(sweep["id"]))
    assert json.loads(raw["overrides"]) == [{"training.learning_rate": 0.5}]
    assert keys.sweep(sweep["id"]).startswith("dnnq:sweep:")
    with pytest.raises(keys.InvalidId):
        keys.sweep("../x")
