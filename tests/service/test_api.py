"""The HTTP API in-process (TestClient) against a real Redis; no worker runs.

A submit is refused while no live worker serves the job's queue, so tests that submit take the
`live_worker` fixture: a worker's heartbeat record written as a real worker writes it. Where a test
needs a job to have made progress it drives the real state machine (workers.jobs.claim /
record_epochs / finish) as a worker would.
"""

from __future__ import annotations

import io
import json
import time
import uuid

import numpy as np
import pytest
from fastapi.testclient import TestClient

from dnnq.service.app import create_app
from dnnq.service.errors import Problem
from dnnq.workers import jobs, keys


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def binary_npz(m: int = 40, n: int = 3, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, n))
    return npz_bytes(X=X, Y=(X[:, 0] > 0).astype(int))


def upload(client, data: bytes, filename: str = "d.npz", **form):
    return client.post("/v1/datasets", files={"file": (filename, data)}, data=form)


def make_client(api_settings, **overrides) -> TestClient:
    return TestClient(create_app(api_settings.model_copy(update=overrides)))


def assert_problem(resp, status: int, *fragments: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == status and body["title"] and body["type"]
    for fragment in fragments:
        assert fragment in body["detail"], body["detail"]
    return body


def stored_files(data_dir) -> list:
    return sorted(p for p in data_dir.rglob("*") if p.is_file())


# --- health -----------------------------------------------------------------------------------


def test_healthz_is_ok_and_readyz_names_the_missing_worker(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert resp.json()["workers"] == 0
    assert any("worker" in m for m in resp.json()["missing"])


def test_redis_down_is_503_not_500(api_settings, dead_port):
    dead = f"redis://127.0.0.1:{dead_port}/0"
    with make_client(api_settings, redis_url=dead, redis_socket_timeout=0.5) as c:
        assert_problem(c.get("/v1/jobs"), 503, "Redis is unreachable")
        assert c.get("/healthz").status_code == 200
        readyz = c.get("/readyz")
        assert readyz.status_code == 503 and "redis" in readyz.json()["missing"][0]


# --- datasets -------------------------------------------------------------------------------


def test_upload_npz_then_identical_upload_returns_same_id(client):
    data = binary_npz()
    first = upload(client, data, name="demo")
    assert first.status_code == 201
    body = first.json()
    assert first.headers["location"] == f"/v1/datasets/{body['id']}"
    assert (body["n_examples"], body["n_features"], body["n_outputs"]) == (40, 3, 1)
    assert body["label_kind"] == "binary" and body["classes"] == [0, 1] and body["name"] == "demo"
    assert len(body["sha256"]) == 64 and body["created_at"].endswith("Z")
    again = upload(client, data, name="demo")
    assert again.status_code == 200
    assert again.json()["id"] == body["id"]
    detail = client.get(f"/v1/datasets/{body['id']}").json()
    assert len(detail["preview"]["X"]) == 5 and len(detail["preview"]["X"][0]) == 3
    listing = client.get("/v1/datasets").json()
    assert listing["total"] == 1 and listing["items"][0]["id"] == body["id"]


def test_preview_truncates_wide_datasets(client):
    ds = upload(client, npz_bytes(X=np.ones((6, 30)), Y=np.arange(6) % 2)).json()
    preview = client.get(f"/v1/datasets/{ds['id']}").json()["preview"]
    assert len(preview["X"]) == 5 and len(preview["X"][0]) == 20 and preview["features_truncated"] is True
    full = client.get(f"/v1/datasets/{ds['id']}", params={"preview": "full"}).json()["preview"]
    assert len(full["X"][0]) == 30 and full["features_truncated"] is False
    assert_problem(client.get(f"/v1/datasets/{ds['id']}", params={"preview": "all"}), 422, "preview")


def test_dataset_list_pages_newest_first(client):
    ids = [upload(client, binary_npz(seed=s)).json()["id"] for s in range(3)]
    page = client.get("/v1/datasets", params={"offset": 1, "limit": 1}).json()
    assert page["total"] == 3 and page["offset"] == 1 and page["limit"] == 1
    assert [d["id"] for d in page["items"]] == [ids[1]]


def test_csv_with_string_labels(client):
    resp = upload(client, b"a,b,species\n1,2,cat\n3,4,dog\n5,6,cat\n", filename="pets.csv", target="species")
    assert resp.status_code == 201
    assert resp.json()["classes"] == ["cat", "dog"] and resp.json()["label_kind"] == "binary"


@pytest.mark.parametrize(
    "filename, data, status, fragment",
    [
        ("d.npz", npz_bytes(X=np.ones((5, 2)), Y=np.ones(4)), 422, "X has 5 examples but Y has 4"),
        ("d.npz", npz_bytes(X=np.array([[np.nan, 1.0]]), Y=np.array([1])), 422, "NaN"),
        ("d.csv", b"a,b,y\n1,abc,0\n2,3,1\n", 422, "'abc' is not a number"),
        ("d.npz", npz_bytes(X=np.array([{"x": 1}], dtype=object), Y=np.array([1])), 422, "pickled objects"),
        ("d.npz", b"", 422, "empty"),
        ("d.exe", b"MZ", 422, "Unsupported file type"),
    ],
)
def test_bad_uploads_are_refused_and_store_nothing(client, data_dir, filename, data, status, fragment):
    before = stored_files(data_dir)
    assert_problem(upload(client, data, filename=filename), status, fragment)
    assert client.get("/v1/datasets").json()["total"] == 0
    assert stored_files(data_dir) == before


def test_upload_over_size_limit_is_413(api_settings, data_dir):
    with make_client(api_settings, max_upload_bytes=10_000) as c:
        big = npz_bytes(X=np.random.default_rng(0).random((2000, 10)), Y=np.zeros(2000))
        assert len(big) > 10_000 + 64 * 1024  # over the limit even with the multipart allowance
        resp = c.post("/v1/datasets", files={"file": ("big.npz", big)})
        assert_problem(resp, 413, "DNNQ_MAX_UPLOAD_BYTES")
        assert c.get("/v1/datasets").json()["total"] == 0


def test_json_body_over_limit_is_413(api_settings):
    with make_client(api_settings, max_json_body_bytes=200) as c:
        resp = c.post(
            "/v1/jobs",
            content=json.dumps({"dataset_id": "a" * 24, "pad": "x" * 500}),
            headers={"content-type": "application/json"},
        )
        assert_problem(resp, 413, "DNNQ_MAX_JSON_BODY_BYTES")

        def chunks():  # no Content-Length: the limit is enforced while the body streams in
            yield b'{"dataset_id": "' + b"a" * 24 + b'", "pad": "'
            for _ in range(10):
                yield b"x" * 50
            yield b'"}'

        streamed = c.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
        assert_problem(streamed, 413, "larger than the limit of 200 bytes")


def test_synthetic_dataset_and_its_limits(client):
    resp = client.post("/v1/datasets/synthetic", json={"name": "spiral", "n_samples": 300, "n_classes": 4, "seed": 3})
    assert resp.status_code == 201
    body = resp.json()
    assert (body["n_examples"], body["n_features"], body["label_kind"]) == (300, 2, "integer")
    assert body["classes"] == [0, 1, 2, 3] and body["name"].startswith("spiral(")
    bad = assert_problem(client.post("/v1/datasets/synthetic", json={"name": "swirl"}), 422, "name")
    assert bad["errors"][0]["field"] == "name"
    big = client.post("/v1/datasets/synthetic", json={"name": "moons", "n_samples": 10**9})
    assert_problem(big, 422, "n_samples")
    # Within each limit alone, too big together (1e6 x 1e4 float64 = 80 GB): refused before generating.
    wide = client.post("/v1/datasets/synthetic", json={"name": "blobs", "n_samples": 1_000_000, "n_features": 10_000})
    body = assert_problem(wide, 422, "1000000 x 10000", "DNNQ_MAX_UPLOAD_BYTES", "fewer samples or features")
    assert body["errors"][0]["field"] == "n_samples"


def test_unknown_or_malformed_dataset_id_is_404(client):
    assert_problem(client.get(f"/v1/datasets/{'0' * 24}"), 404, "No dataset")
    assert_problem(client.get("/v1/datasets/../../etc"), 404)
    assert_problem(client.get("/v1/datasets/XYZ"), 404, "No dataset")


# --- jobs: validation and limits ------------------------------------------------------------


@pytest.fixture
def dataset_id(client) -> str:
    return upload(client, binary_npz()).json()["id"]


@pytest.fixture
def live_worker(redis_client) -> str:
    """A live 'default' worker as the API sees one: its heartbeat hash (workers.recovery.register_worker)."""
    fake_worker(redis_client, "w-default", "default")
    return "w-default"


def submit(client, dataset_id, headers=None, **spec):
    return client.post("/v1/jobs", json={"dataset_id": dataset_id, **spec}, headers=headers or {})


@pytest.mark.parametrize(
    "spec, field, fragment",
    [
        ({"training": {"learning_rate": -0.1}}, "training.learning_rate", "greater than 0"),
        ({"model": {"hidden_layers": [0]}}, "model.hidden_layers.0", "greater than or equal to 1"),
        ({"model": {"output": "softmaxx"}}, "model.output", "softmax"),
        ({"training": {"epochs": 0}}, "training.epochs", "greater than or equal to 1"),
        ({"model": {"dropout": 0.5}}, "model.dropout", "Extra inputs"),
        ({"model": {"output": "linear"}, "training": {"lr_decay": "step"}}, "body", "decay_rate"),
    ],
)
def test_bad_specs_are_422_naming_the_field(client, dataset_id, spec, field, fragment):
    body = assert_problem(submit(client, dataset_id, **spec), 422, fragment)
    assert body["errors"][0]["field"] == field
    assert client.get("/v1/jobs").json()["total"] == 0


def test_spec_that_does_not_fit_the_dataset_is_422(client):
    three = client.post("/v1/datasets/synthetic", json={"name": "blobs", "n_classes": 3}).json()["id"]
    body = assert_problem(submit(client, three), 422, "output 'sigmoid' needs binary labels", "use output 'softmax'")
    assert body["errors"][0]["field"] == "model.output"


def test_unknown_dataset_is_422_on_dataset_id(client):
    body = assert_problem(submit(client, "ab" * 12), 422, "no dataset with id")
    assert body["errors"][0]["field"] == "dataset_id"


def test_parameter_epoch_and_memory_limits(api_settings, data_dir, live_worker):
    with make_client(api_settings, max_parameters=1000, max_epochs=200, worker_memory_bytes=20_000) as c:
        ds = upload(c, binary_npz(m=100)).json()["id"]
        body = assert_problem(
            submit(c, ds, model={"hidden_layers": [100, 100]}),
            422,
            "parameters; the limit is 1000",
            "DNNQ_MAX_PARAMETERS",
        )
        assert body["errors"][0]["field"] == "model.hidden_layers"
        assert_problem(submit(c, ds, training={"epochs": 201}), 422, "DNNQ_MAX_EPOCHS")
        mem = assert_problem(submit(c, ds, model={"hidden_layers": [20]}), 422, "DNNQ_WORKER_MEMORY_BYTES")
        assert "batch_size" in mem["detail"]
        assert submit(c, ds, model={"hidden_layers": [4]}, training={"batch_size": 8}).status_code == 202


def fake_worker(r, name: str, queues: str, **fields) -> None:
    """Register a worker heartbeat the way workers.recovery does, then override what it reports."""
    from dnnq.workers.recovery import register_worker
    from dnnq.workers.settings import WorkerSettings

    register_worker(r, WorkerSettings(worker_name=name, queues=queues, heartbeat_seconds=30), "2026-01-01T00:00:00Z")
    if fields:
        r.hset(keys.worker(name), mapping=fields)


def test_memory_estimate_checked_against_live_workers(api_settings, redis_client):
    """Without DNNQ_WORKER_MEMORY_BYTES the capacity is the largest live worker serving the job's queue."""
    with make_client(api_settings, worker_capacity_cache_seconds=0) as c:
        ds = upload(c, binary_npz(m=100)).json()["id"]
        assert submit(c, ds, wait_for_worker=True).status_code == 202  # no worker says anything: not checked
        fake_worker(redis_client, "small", "default", memory_bytes=30_000)
        fake_worker(redis_client, "gpu0", "gpu", memory_bytes=10**12, gpu_memory_total="")
        body = assert_problem(
            submit(c, ds, model={"hidden_layers": [64, 64]}), 422, "largest live 'default' worker's memory"
        )
        assert body["errors"][0]["field"] == "training.batch_size"
        assert submit(c, ds, model={"hidden_layers": [4]}, training={"batch_size": 8}).status_code == 202
        fake_worker(redis_client, "big", "default,gpu", memory_bytes=10**9)
        assert submit(c, ds, model={"hidden_layers": [64, 64]}).status_code == 202


def test_worker_capacity_is_reread_once_its_cache_expires(api_settings, redis_client):
    """Each API process reuses the live workers' memory for DNNQ_WORKER_CAPACITY_CACHE_SECONDS
    (one Redis round trip less per submit in a burst); a worker that joins counts after that."""
    clock = [1000.0]
    with make_client(api_settings, worker_capacity_cache_seconds=5) as c:
        c.app.state.job_desk.clock = lambda: clock[0]  # the cache's clock: a seam of JobDesk
        ds = upload(c, binary_npz(m=100)).json()["id"]
        fake_worker(redis_client, "small", "default", memory_bytes=30_000)
        big_net = {"hidden_layers": [64, 64]}
        assert_problem(submit(c, ds, model=big_net), 422, "largest live 'default' worker's memory")
        fake_worker(redis_client, "big", "default", memory_bytes=10**9)
        clock[0] += 4.9  # still within the cache: the small worker's memory is what this process knows
        assert_problem(submit(c, ds, model=big_net), 422, "largest live 'default' worker's memory")
        clock[0] += 0.2  # expired: re-read, the big worker counts
        assert submit(c, ds, model=big_net).status_code == 202


def test_startup_loads_the_submit_routes_scripts_into_redis(app, redis_client):
    """On a fresh (or restarted) Redis the first submits would each meet NOSCRIPT and load the create and
    live-workers scripts themselves; the API loads them at start."""
    from fastapi.testclient import TestClient

    from dnnq.workers import scripts

    shas = [scripts.get(name).sha for name in ("create_job", "live_workers")]
    redis_client.script_flush()
    assert redis_client.script_exists(*shas) == [False, False]
    with TestClient(app):
        assert redis_client.script_exists(*shas) == [True, True]


def test_submits_that_miss_the_caches_together_share_one_redis_read(api_settings, redis_client):
    """A fresh API process meets its first burst with empty caches: the concurrent submits wait on one
    read of the dataset record and one of the live workers (service/jobdesk.py JobDesk), not one each;
    all of them are answered, and a failed read fails every waiter alike."""
    import asyncio

    import httpx
    import redis.exceptions as redis_errors

    from dnnq.service.jobdesk import JobDesk
    from dnnq.workers import datasets
    from dnnq.workers.recovery import live_workers_async

    with make_client(api_settings) as c:
        ds = upload(c, binary_npz(m=100)).json()["id"]
    fake_worker(redis_client, "w", "default", memory_bytes=10**9)
    reads = {"dataset": 0, "workers": 0}
    real_dataset, real_workers = datasets.get_dataset_async, live_workers_async

    async def slow_dataset(ar, dataset_id):
        reads["dataset"] += 1
        await asyncio.sleep(0.05)  # keeps the read in flight while the other requests arrive
        return await real_dataset(ar, dataset_id)

    async def slow_workers(ar):
        reads["workers"] += 1
        await asyncio.sleep(0.05)
        return await real_workers(ar)

    def app_reading(read_dataset) -> object:
        app = create_app(api_settings)
        desk: JobDesk = app.state.job_desk  # the desk's two Redis reads are its seams
        desk.read_dataset, desk.read_workers = read_dataset, slow_workers
        return app

    async def burst(app, n: int) -> list:
        transport = httpx.ASGITransport(app=app)
        # an IP address as Host: with API keys off the API answers no other name it does not know
        client = httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")
        async with app.router.lifespan_context(app), client as ac:
            return await asyncio.gather(
                *(ac.post("/v1/jobs", json={"dataset_id": ds, "training": {"seed": s}}) for s in range(n))
            )

    answers = asyncio.run(burst(app_reading(slow_dataset), 8))
    assert [a.status_code for a in answers] == [202] * 8
    assert reads == {"dataset": 1, "workers": 1}
    assert len({a.json()["id"] for a in answers}) == 8
    # sent by the desk's sender thread, in as few batches as arrived together, and all marked sent
    assert jobs.queue_depth(redis_client, "default") == 8 and jobs.unsent(redis_client) == []

    async def failing_dataset(ar, dataset_id):
        reads["dataset"] += 1
        await asyncio.sleep(0.05)
        raise redis_errors.ConnectionError("Redis went away")

    answers = asyncio.run(burst(app_reading(failing_dataset), 4))
    assert [a.status_code for a in answers] == [503] * 4
    assert reads["dataset"] == 2


def test_tenant_queue_limit_is_429(api_settings, live_worker):
    with make_client(api_settings, max_queued_jobs_per_tenant=2) as c:
        ds = upload(c, binary_npz()).json()["id"]
        assert [submit(c, ds, training={"seed": s}).status_code for s in range(2)] == [202, 202]
        body = assert_problem(submit(c, ds, training={"seed": 9}), 429, "2 queued or running jobs")
        assert body["detail"].count("DNNQ_MAX_QUEUED_JOBS_PER_TENANT") == 1


def test_idempotent_replay_is_answered_even_at_the_queue_limit(api_settings, live_worker):
    """A client retrying a submit that did go through gets its job back, not a 429."""
    with make_client(api_settings, max_queued_jobs_per_tenant=1) as c:
        ds = upload(c, binary_npz()).json()["id"]
        first = submit(c, ds, headers={"Idempotency-Key": "retry-me"})
        assert first.status_code == 202
        again = submit(c, ds, headers={"Idempotency-Key": "retry-me"})
        assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
        assert_problem(submit(c, ds, headers={"Idempotency-Key": "new"}, training={"seed": 5}), 429, "limit")
        refused_then_fixed = submit(c, ds, headers={"Idempotency-Key": "new"}, training={"seed": 5})
        assert refused_then_fixed.status_code == 429  # the refusal freed the key: not stuck, not replayed


# --- jobs: records, views, streams ---------------------------------------------------------


def test_submit_returns_202_with_location_and_queues_the_task(client, dataset_id, redis_client, live_worker):
    resp = submit(client, dataset_id, training={"epochs": 3})
    assert resp.status_code == 202
    job = resp.json()
    assert resp.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["progress"]["epochs"] == 3 and job["history"] == []
    assert job["spec"]["training"]["epochs"] == 3 and job["dataset_id"] == dataset_id
    messages = [json.loads(m) for name in keys.queue_lists("default") for m in redis_client.lrange(name, 0, -1)]
    assert [m["headers"]["task"] for m in messages] == ["dnnq.train"]
    assert messages[0]["headers"]["argsrepr"] == repr([job["id"]])
    assert jobs.unsent(redis_client) == []  # the API marked its message sent: no sweeper re-send


def drive(redis_client, job_id: str, epochs: int, status: str = "succeeded") -> str:
    """Play a worker through the real state machine: claim, record epochs, finish."""
    token = f"test:{uuid.uuid4().hex}"
    assert jobs.claim(redis_client, job_id, token, 60_000)
    for e in range(1, epochs + 1):
        entry = {"epoch": e, "loss": 1.0 / e, "accuracy": 0.5, "val_loss": None, "val_accuracy": None}
        jobs.record_epochs(redis_client, job_id, token, [entry], {"epoch": e, "epochs": epochs, "loss": 1.0 / e})
    if status:
        assert jobs.finish(
            redis_client,
            job_id,
            token,
            status,
            error="boom" if status == "failed" else None,
            metrics={"final_loss": 1.0 / epochs, "train_accuracy": 0.5, "validation_accuracy": None},
        )
    return token


def test_history_is_whole_up_to_1000_then_thinned_keeping_the_last(client, dataset_id, redis_client, live_worker):
    job_id = submit(client, dataset_id, training={"epochs": 1500}).json()["id"]
    drive(redis_client, job_id, 1500)
    thin = client.get(f"/v1/jobs/{job_id}").json()
    assert thin["status"] == "succeeded" and thin["metrics"]["final_loss"] == pytest.approx(1 / 1500)
    assert "timings" in thin  # the worker's timings (None here: this test plays the worker without them)
    epochs = [h["epoch"] for h in thin["history"]]
    assert len(epochs) == 1000 and epochs[0] == 1 and epochs[-1] == 1500 and epochs == sorted(set(epochs))
    assert len(client.get(f"/v1/jobs/{job_id}", params={"history": "full"}).json()["history"]) == 1500
    assert "history" not in client.get(f"/v1/jobs/{job_id}", params={"history": "none"}).json()
    short = submit(client, dataset_id, training={"epochs": 7}).json()["id"]
    drive(redis_client, short, 7)
    assert [h["epoch"] for h in client.get(f"/v1/jobs/{short}").json()["history"]] == list(range(1, 8))


def test_job_list_filters_by_status_newest_first(client, dataset_id, redis_client, live_worker):
    ids = [submit(client, dataset_id, training={"seed": s}).json()["id"] for s in range(3)]
    drive(redis_client, ids[0], 2)
    listing = client.get("/v1/jobs").json()
    assert listing["total"] == 3 and [j["id"] for j in listing["items"]] == ids[::-1]
    assert all("history" not in j for j in listing["items"])
    queued = client.get("/v1/jobs", params={"status": "queued"}).json()
    assert queued["total"] == 2 and {j["id"] for j in queued["items"]} == set(ids[1:])
    assert_problem(client.get("/v1/jobs", params={"status": "nope"}), 422, "status")


def test_cancel_queued_then_409(client, dataset_id, live_worker):
    job_id = submit(client, dataset_id).json()["id"]
    resp = client.post(f"/v1/jobs/{job_id}/cancel")
    assert resp.status_code == 202 and resp.json()["status"] == "cancelled"
    assert_problem(client.post(f"/v1/jobs/{job_id}/cancel"), 409, "already cancelled")


def test_cancel_running_becomes_cancelling(client, dataset_id, redis_client, live_worker):
    job_id = submit(client, dataset_id).json()["id"]
    drive(redis_client, job_id, 2, status=None)
    resp = client.post(f"/v1/jobs/{job_id}/cancel")
    assert resp.status_code == 202 and resp.json()["status"] == "cancelling"


def test_unknown_and_malformed_job_ids_are_404(client):
    for path in (
        f"/v1/jobs/{'f' * 32}",
        "/v1/jobs/not-an-id",
        f"/v1/jobs/{'f' * 32}/weights",
        f"/v1/jobs/{'f' * 32}/events",
    ):
        assert_problem(client.get(path), 404, "No job")
    assert_problem(client.post(f"/v1/jobs/{'f' * 32}/cancel"), 404, "No job")


def test_artifacts_are_409_before_success_and_format_is_checked(client, dataset_id, live_worker):
    job_id = submit(client, dataset_id).json()["id"]
    assert_problem(client.get(f"/v1/jobs/{job_id}/weights"), 409, "is queued")
    assert_problem(client.get(f"/v1/jobs/{job_id}/model"), 409, "is queued")
    assert_problem(client.post(f"/v1/jobs/{job_id}/predict", json={"inputs": [[1, 2, 3]]}), 409)
    body = assert_problem(client.get(f"/v1/jobs/{job_id}/weights", params={"format": "pt"}), 422, "unknown format")
    assert body["errors"][0]["field"] == "format"


def parse_sse(text: str) -> list[tuple[str | None, str, dict]]:
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "event" in fields:
            events.append((fields.get("id"), fields["event"], json.loads(fields["data"])))
    return events


def test_events_stream_epochs_status_and_end(client, dataset_id, redis_client, live_worker):
    job_id = submit(client, dataset_id, training={"epochs": 4}).json()["id"]
    drive(redis_client, job_id, 4)
    resp = client.get(f"/v1/jobs/{job_id}/events")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(resp.text)
    epochs = [(i, d["epoch"]) for i, kind, d in events if kind == "epoch"]
    assert epochs == [("1", 1), ("2", 2), ("3", 3), ("4", 4)]
    assert [d["status"] for _, kind, d in events if kind == "status"] == ["succeeded"]
    assert events[-1][1] == "end" and events[-1][2]["status"] == "succeeded"
    resumed = parse_sse(client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "2"}).text)
    assert [d["epoch"] for _, kind, d in resumed if kind == "epoch"] == [3, 4]


# --- auth and tenants -----------------------------------------------------------------------


def test_api_keys_401_and_tenant_isolation(api_settings, live_worker):
    with make_client(api_settings, api_keys="alice:key-a,bob:key-b") as c:
        assert c.get("/healthz").status_code == 200
        no_key = assert_problem(c.get("/v1/datasets"), 401, "API key missing")
        assert no_key and c.get("/v1/datasets").headers["www-authenticate"].startswith("Bearer")
        bad = c.get("/v1/datasets", headers={"Authorization": "Bearer key-c"})
        assert_problem(bad, 401, "API key invalid")
        assert "invalid_token" in bad.headers["www-authenticate"]
        assert_problem(c.get("/metrics"), 403, "DNNQ_METRICS_KEY")  # keys on, no metrics key: closed
        alice = {"Authorization": "Bearer key-a"}
        bob = {"Authorization": "Bearer key-b"}
        ds = c.post("/v1/datasets", files={"file": ("d.npz", binary_npz())}, headers=alice).json()["id"]
        job = submit(c, ds, headers=alice).json()["id"]
        assert c.get(f"/v1/jobs/{job}", headers=alice).status_code == 200
        assert_problem(c.get(f"/v1/datasets/{ds}", headers=bob), 404, "No dataset")
        assert_problem(c.get(f"/v1/jobs/{job}", headers=bob), 404, "No job")
        assert_problem(c.post(f"/v1/jobs/{job}/cancel", headers=bob), 404)
        assert c.get("/v1/jobs", headers=bob).json()["total"] == 0
        body = assert_problem(submit(c, ds, headers=bob), 422, "no dataset with id")
        assert body["errors"][0]["field"] == "dataset_id"


def test_api_keys_file_and_bare_keys(api_settings, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# comment\nsolo-key\ncarol:key-c\n")
    with make_client(api_settings, api_keys_file=str(keys)) as c:
        assert c.get("/v1/jobs", headers={"Authorization": "Bearer solo-key"}).status_code == 200
        assert c.get("/v1/jobs", headers={"Authorization": "Bearer key-c"}).status_code == 200
        assert c.get("/v1/jobs", headers={"Authorization": "Basic key-c"}).status_code == 401


# --- idempotency ----------------------------------------------------------------------------


def test_idempotent_job_submission(client, dataset_id, live_worker):
    key = {"Idempotency-Key": "retry-123"}
    first = submit(client, dataset_id, headers=key, training={"epochs": 5})
    again = submit(client, dataset_id, headers=key, training={"epochs": 5})
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["id"] == first.json()["id"]
    assert client.get("/v1/jobs").json()["total"] == 1
    other = submit(client, dataset_id, headers=key, training={"epochs": 6})
    body = assert_problem(other, 422, "different request body")
    assert body["errors"][0]["field"] == "Idempotency-Key"
    assert client.get("/v1/jobs").json()["total"] == 1


def test_an_idempotency_key_whose_request_died_is_free_again_after_the_pending_ttl(redis_client):
    """An API process that died between reserving a key and recording its job left the key 'in progress':
    every retry was a 409 for the key's whole 24 h. The reservation now lives only its pending TTL."""
    from dnnq.service.idempotency import reserve

    args = {"tenant": "t", "route": "jobs", "key": "k-1", "body_sha256": "ab", "ttl": 86_400}
    reservation, _ = reserve(redis_client, **args, pending_ttl=0.3)  # and then the process dies
    assert reservation is not None and 0 < redis_client.pttl(reservation.redis_key) <= 300
    with pytest.raises(Problem) as in_progress:
        reserve(redis_client, **args, pending_ttl=0.3)
    assert in_progress.value.status == 409
    time.sleep(0.4)
    again, replay = reserve(redis_client, **args)  # the retry may create it now
    assert again is not None and replay is None
    again.complete("job-1")
    assert redis_client.ttl(again.redis_key) > 86_000  # a recorded id is kept the whole TTL
    assert reserve(redis_client, **args) == (None, "job-1")


def test_idempotent_dataset_upload(client):
    key = {"Idempotency-Key": "up-1"}
    first = client.post("/v1/datasets", files={"file": ("d.npz", binary_npz())}, headers=key)
    again = client.post("/v1/datasets", files={"file": ("d.npz", binary_npz())}, headers=key)
    assert (first.status_code, again.status_code) == (201, 201) and first.json()["id"] == again.json()["id"]
    other = client.post("/v1/datasets", files={"file": ("d.npz", binary_npz(seed=5))}, headers=key)
    assert_problem(other, 422, "different request body")
    assert client.get("/v1/datasets").json()["total"] == 1


# --- metrics and OpenAPI --------------------------------------------------------------------


def test_metrics_report_jobs_queue_and_request_latency(client, dataset_id, redis_client, live_worker):
    ids = [submit(client, dataset_id, training={"seed": s}).json()["id"] for s in range(2)]
    drive(redis_client, ids[0], 3)
    text = client.get("/metrics").text
    assert 'dnnq_jobs{status="queued"} 1.0' in text
    assert 'dnnq_jobs{status="succeeded"} 1.0' in text
    assert 'dnnq_queue_depth{queue="default"} 2.0' in text
    assert "dnnq_epochs_total" in text and "dnnq_workers 1.0" in text  # live_worker
    assert 'dnnq_http_request_duration_seconds_count{method="POST",route="/v1/jobs",status="202"} 2.0' in text


def test_metrics_report_a_gpu_workers_pool_apart_from_its_device(client, redis_client, live_worker):
    """What a GPU worker's training process publishes (runner.report_gpu_memory): its pool's bytes in
    live arrays and held, and the device's size, each its own gauge; a CPU worker publishes none."""
    from dnnq.workers import keys

    fake_worker(redis_client, "w-gpu", "gpu")
    redis_client.hset(
        keys.worker("w-gpu"),
        mapping={"gpu_memory_used": 4096, "gpu_pool_used_bytes": 1024, "gpu_pool_total_bytes": 4096,
                 "gpu_memory_total": 150_000_000_000},
    )  # fmt: skip
    text = client.get("/metrics").text
    assert 'dnnq_worker_gpu_memory_bytes{worker="w-gpu"} 4096.0' in text
    assert 'dnnq_worker_gpu_pool_used_bytes{worker="w-gpu"} 1024.0' in text
    assert 'dnnq_worker_gpu_pool_held_bytes{worker="w-gpu"} 4096.0' in text
    assert 'dnnq_worker_gpu_device_bytes{worker="w-gpu"} 1.5e+11' in text
    assert 'worker="w-default"' not in text  # the CPU worker has no GPU figures


def test_openapi_documents_the_routes(client):
    spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "dnnq"
    for path in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events", "/v1/datasets", "/readyz"):
        assert path in spec["paths"]


def test_a_send_that_fails_leaves_the_job_to_the_sweeper_and_still_answers_202(
    api_settings, redis_client, live_worker, dead_port
):
    """The job is written; its message cannot go out (here: a broker nobody listens on). The submit
    still answers 202 and the job stays in the outbox, where the workers' sweeper finds it."""
    from dnnq.service.jobdesk import TaskSender

    app = create_app(api_settings)
    app.state.job_desk.sender = TaskSender(app.state.redis, f"redis://127.0.0.1:{dead_port}/0")
    with TestClient(app) as c:
        resp = submit(c, upload(c, binary_npz()).json()["id"])
        assert resp.status_code == 202, resp.text
    assert jobs.unsent(redis_client) == [resp.json()["id"]] and jobs.queue_depth(redis_client, "default") == 0
    assert jobs.get_job(redis_client, resp.json()["id"])["status"] == "queued"


def test_submit_sends_the_jobs_celery_message_and_marks_it_sent(client, dataset_id, redis_client, live_worker):
    """The job is written into the outbox, then its dnnq.train message goes out through Celery's own
    send_task onto the job's queue and the job is marked sent: by the 202, nothing is left for the
    sweeper."""
    import base64

    from dnnq.workers import jobs
    from dnnq.workers.celery_app import NEW_JOB_PRIORITY

    job = submit(client, dataset_id).json()
    new_jobs_list = keys.queue_lists(job["queue"])[1]  # a job that never trained waits behind resumed ones
    assert redis_client.llen(job["queue"]) == 0
    (raw,) = redis_client.lrange(new_jobs_list, 0, -1)
    message = json.loads(raw)
    assert message["headers"]["task"] == "dnnq.train"
    assert message["properties"]["priority"] == NEW_JOB_PRIORITY
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert args == [job["id"]] and kwargs == {}
    assert message["properties"]["delivery_info"]["routing_key"] == job["queue"]
    assert jobs.unsent(redis_client) == []


def test_startup_warms_the_hot_routes_without_counting_or_writing_anything(app, redis_client, monkeypatch):
    """The API pays its first-request costs at start (service/app.py _warm_routes): after start-up a
    submit and a status poll read no source files (FastAPI reads an endpoint's source once, for its
    error context, ~6 ms on a process's first request), the warm-up requests are not in the
    request metrics, and they create no job."""
    import inspect

    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        source_reads = []
        real = inspect.getsourcelines
        monkeypatch.setattr(inspect, "getsourcelines", lambda obj: source_reads.append(obj) or real(obj))
        assert c.post("/v1/jobs", json={}).status_code == 422
        assert c.get("/v1/jobs/nope?history=invalid").status_code == 422
        assert source_reads == []
        text = c.get("/metrics").text
        # only the two requests above: the warm-up's own 422s are not counted
        assert 'dnnq_http_request_duration_seconds_count{method="POST",route="/v1/jobs",status="422"} 1.0' in text
        assert 'route="/v1/jobs/{job_id}",status="422"} 1.0' in text
    assert redis_client.keys("dnnq:job:*") == []


def test_startup_opens_the_redis_connections_a_burst_needs_and_new_ones_cost_no_metadata_read(app, redis_client):
    """A fresh API's pool grew one connection per concurrent request of its first burst, each paying a
    connect and a handshake on the event loop. The start-up opens them (service/app.py
    REDIS_CONNECTIONS_AT_START), and no connection constructor parses an installed package's metadata
    (workers.settings.redis_client_options), which redis-py 8.1 did for every new connection. Seen
    through Python's audit events: opening a METADATA file is an 'open' event."""
    import sys

    from fastapi.testclient import TestClient

    from dnnq.service.app import REDIS_CONNECTIONS_AT_START

    metadata_reads: list[str] = []
    watching = [True]

    def watch(event: str, args: tuple) -> None:  # an audit hook stays for the process: inert after the test
        if watching[0] and event == "open" and str(args[0]).endswith("METADATA"):
            metadata_reads.append(str(args[0]))

    sys.addaudithook(watch)
    try:
        before = len(redis_client.client_list())
        with TestClient(app) as c:
            opened = len(redis_client.client_list()) - before
            assert opened >= REDIS_CONNECTIONS_AT_START, opened
            for _ in range(3):  # served by the pool: no new connections
                assert c.get("/v1/jobs/nosuchjob?history=none").status_code == 404  # the async hot path
            assert len(redis_client.client_list()) - before == opened
    finally:
        watching[0] = False
    assert metadata_reads == []


def test_a_long_job_id_is_not_echoed_whole(client):
    resp = client.get("/v1/jobs/" + "a" * 10_000)
    body = assert_problem(resp, 404)
    assert len(body["detail"]) < 200 and "a" * 64 + "..." in body["detail"]
