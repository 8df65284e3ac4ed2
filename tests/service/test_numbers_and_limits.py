"""Issue 13: every number the API writes or answers is finite, outputs are bounded, and a submit is
refused when its validation set or its queue cannot work.

Through HTTP (the in-process TestClient on a real Redis). A poisoned record is planted in Redis
directly, as an older version could have written it, and read through every view. The validation-loss
case runs the real runner in-process on a job submitted over HTTP.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from dnnq.workers import jobs, keys
from tests.service.test_api import assert_problem, binary_npz, drive, fake_worker, make_client, npz_bytes, upload

NON_FINITE_LITERALS = ("NaN", "Infinity", "-Infinity", "1e999", "-1e999")
FLOAT_FIELDS = (
    "preprocess.scale",
    "training.learning_rate",
    "training.beta",
    "training.beta1",
    "training.beta2",
    "training.epsilon",
    "training.decay_rate",
    "training.l2",
    "training.dropout_keep_prob",
)


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as every other JSON parser does."""

    def refuse(constant: str):
        raise AssertionError(f"{constant} in a response: not JSON")

    return json.loads(text, parse_constant=refuse)


def raw_spec(dataset_id: str, field: str, literal: str) -> bytes:
    """A JobSpec body with `literal` written verbatim at the dotted `field`."""
    section, name = field.split(".")
    return (f'{{"dataset_id": "{dataset_id}", "{section}": {{"{name}": {literal}}}}}').encode()


def post_json(client, url: str, content: bytes, **headers):
    return client.post(url, content=content, headers={"content-type": "application/json", **headers})


@pytest.fixture
def live_worker(redis_client) -> str:
    fake_worker(redis_client, "w-default", "default")
    return "w-default"


@pytest.fixture
def dataset_id(client) -> str:
    return upload(client, binary_npz()).json()["id"]


# --- spec floats: finite and bounded ---------------------------------------------------------


@pytest.mark.parametrize("fast_lane", [True, False])
@pytest.mark.parametrize("literal", NON_FINITE_LITERALS)
@pytest.mark.parametrize("field", FLOAT_FIELDS)
def test_non_finite_spec_floats_are_422_naming_the_field_and_create_nothing(
    api_settings, redis_client, live_worker, field, literal, fast_lane
):
    with make_client(api_settings, fast_lane=fast_lane) as c:
        ds = upload(c, binary_npz()).json()["id"]
        resp = post_json(c, "/v1/jobs", raw_spec(ds, field, literal))
        body = assert_problem(resp, 422, field)
        strict_json(resp.text)
        assert body["errors"][0]["field"] == field
        assert "input" not in body["errors"][0]  # JSON has no spelling for what was sent
        assert "finite number" in body["errors"][0]["message"]
        assert c.get("/v1/jobs").json()["total"] == 0
    assert redis_client.keys("dnnq:job:*") == []


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("preprocess.scale", 1e7, "less than or equal to 1000000"),
        ("preprocess.scale", 0, "greater than 0"),
        ("training.learning_rate", 1e300, "less than or equal to 10"),
        ("training.l2", 1e12, "less than or equal to 1000000"),
        ("training.decay_rate", 1e12, "less than or equal to 1000000"),
        ("training.batch_size", 2**63, "less than or equal to 2147483647"),
    ],
)
def test_huge_spec_numbers_are_422_with_the_bound(client, dataset_id, live_worker, field, value, fragment):
    section, name = field.split(".")
    resp = client.post("/v1/jobs", json={"dataset_id": dataset_id, section: {name: value}})
    body = assert_problem(resp, 422, fragment)
    assert body["errors"][0]["field"] == field
    assert client.get("/v1/jobs").json()["total"] == 0


def test_a_body_with_many_bad_values_lists_the_first_twenty(client, dataset_id):
    resp = client.post("/v1/jobs", json={"dataset_id": dataset_id, "model": {"hidden_layers": [0] * 64}})
    body = assert_problem(resp, 422, "model.hidden_layers.0")
    assert len(body["errors"]) == 21
    assert body["errors"][-1] == {"field": "body", "message": "and 44 more errors like these."}


def test_synthetic_noise_nan_is_422_not_500(client):
    resp = post_json(client, "/v1/datasets/synthetic", b'{"name": "moons", "noise": NaN}')
    body = assert_problem(resp, 422, "noise")
    strict_json(resp.text)
    assert body["errors"][0]["field"] == "noise" and "input" not in body["errors"][0]


# --- reading a poisoned record -----------------------------------------------------------------


def plant_poisoned(redis_client, job_id: str, status: str) -> None:
    """Write non-finite numbers into a job's record and history the way json.dumps (allow_nan=True) did."""
    inf = float("inf")
    record = jobs.get_job(redis_client, job_id)
    spec = {**record["spec"], "preprocess": {"scale": inf}}
    redis_client.hset(
        keys.job(job_id),
        mapping={
            "spec": json.dumps(spec),
            "progress": json.dumps({"epoch": 2, "epochs": 2, "loss": float("nan")}),
            "metrics": json.dumps({"final_loss": inf, "train_accuracy": 0.5, "validation_accuracy": -inf}),
            "timings": json.dumps({"total_s": inf}),
        },
    )
    history = keys.job_history(job_id)
    redis_client.rpush(
        history, json.dumps({"epoch": 3, "loss": inf, "accuracy": 0.5, "val_loss": float("nan"), "val_accuracy": None})
    )
    assert "Infinity" in redis_client.hget(keys.job(job_id), "metrics")
    assert record["status"] == status


@pytest.mark.parametrize("fast_lane", [True, False])
def test_every_view_of_a_poisoned_record_answers_json_with_nulls(
    api_settings, redis_client, store, live_worker, fast_lane
):
    with make_client(api_settings, fast_lane=fast_lane) as c:
        ds = upload(c, binary_npz()).json()["id"]
        done, running = (
            c.post("/v1/jobs", json={"dataset_id": ds, "training": {"epochs": 2, "seed": s}}).json()["id"]
            for s in (1, 2)
        )
        drive(redis_client, done, 2)
        drive(redis_client, running, 2, status=None)
        plant_poisoned(redis_client, done, "succeeded")
        plant_poisoned(redis_client, running, "running")
        store.put(f"jobs/{done}/model.json", json.dumps({"metrics": {"final_loss": float("inf")}}).encode())

        for query in ("", "?history=none", "?history=thin", "?history=full"):
            resp = c.get(f"/v1/jobs/{done}{query}")
            assert resp.status_code == 200, resp.text
            view = strict_json(resp.text)
            assert view["metrics"] == {"final_loss": None, "train_accuracy": 0.5, "validation_accuracy": None}
            assert view["progress"]["loss"] is None and view["timings"] == {"total_s": None}
            assert view["spec"]["preprocess"]["scale"] is None
            if query != "?history=none":
                assert view["history"][-1] == {
                    "epoch": 3,
                    "loss": None,
                    "accuracy": 0.5,
                    "val_loss": None,
                    "val_accuracy": None,
                }
        for params in ({}, {"status": "succeeded"}, {"status": "running"}):
            resp = c.get("/v1/jobs", params=params)
            assert resp.status_code == 200, resp.text
            listing = strict_json(resp.text)
            assert listing["total"] == (2 if not params else 1)
            assert all(item["metrics"]["final_loss"] is None for item in listing["items"])
        model = c.get(f"/v1/jobs/{done}/model")
        assert model.status_code == 200 and strict_json(model.text) == {"metrics": {"final_loss": None}}
        events = c.get(f"/v1/jobs/{done}/events")
        assert events.status_code == 200
        parsed = sse_events(events.text)  # every data line parses as strict JSON
        assert [e for _, kind, e in parsed if kind == "epoch"][-1]["loss"] is None
        assert parsed[-1][1] == "end" and parsed[-1][2]["metrics"]["final_loss"] is None
        assert "Infinity" not in events.text and "NaN" not in events.text
        cancelled = c.post(f"/v1/jobs/{running}/cancel")
        assert cancelled.status_code == 202 and strict_json(cancelled.text)["metrics"]["final_loss"] is None
        # a stored spec this version refuses (scale: inf) is a readable 409, not a 500
        predict = c.post(f"/v1/jobs/{done}/predict", json={"inputs": [[0.0, 0.0, 0.0]]})
        assert_problem(predict, 409, "preprocess.scale", "train it again")


def sse_events(text: str) -> list[tuple[str | None, str, dict]]:
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "event" in fields:
            events.append((fields.get("id"), fields["event"], strict_json(fields["data"])))
    return events


# --- Last-Event-ID ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "last_event_id, expected_epochs",
    [
        (b"2", [3, 4]),
        (b"999999999999999999", []),  # 18 digits: honoured, past the end
        (b"\xb2", [1, 2, 3, 4]),  # '²' (headers are latin-1): str.isdigit() says yes, int() says no
        (b"1\xb9", [1, 2, 3, 4]),  # '1¹'
        ("１２".encode(), [1, 2, 3, 4]),  # fullwidth digits, as UTF-8 bytes
        (b"9" * 19, [1, 2, 3, 4]),  # past int64: Redis would refuse the index mid-stream
        (b"9" * 400, [1, 2, 3, 4]),
        (b"-1", [1, 2, 3, 4]),
        (b"2.0", [1, 2, 3, 4]),
    ],
)
def test_last_event_id_is_ascii_digits_in_range_or_ignored(
    app, client, dataset_id, redis_client, live_worker, last_event_id, expected_epochs
):
    job_id = client.post("/v1/jobs", json={"dataset_id": dataset_id, "training": {"epochs": 4}}).json()["id"]
    drive(redis_client, job_id, 4)
    # sent as raw header bytes, as a server hands them to the app (an HTTP client library re-encodes them)
    status, text = asgi_get(app, f"/v1/jobs/{job_id}/events", [(b"last-event-id", last_event_id)])
    assert status == 200, text
    events = sse_events(text)
    assert [d["epoch"] for _, kind, d in events if kind == "epoch"] == expected_epochs
    assert events[-1][1] == "end" and events[-1][2]["status"] == "succeeded"  # the whole stream, not cut


def asgi_get(app, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, str]:
    """GET `path` straight through the ASGI app (its lifespan already started by `client`)."""
    import asyncio

    async def run():
        sent: dict = {"body": b""}
        done = asyncio.Event()
        requested = False

        async def receive():
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await done.wait()  # the client stays until the response ends
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
            elif message["type"] == "http.response.body":
                sent["body"] += message.get("body", b"")
                if not message.get("more_body", False):
                    done.set()

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"testserver"), *headers],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        await asyncio.wait_for(app(scope, receive, send), 30)
        return sent["status"], sent["body"].decode()

    return asyncio.run(run())


# --- predict: finite in, finite out, bounded ---------------------------------------------------


def succeeded_job(client, redis_client, store, X, Y, model: dict, weights: dict) -> str:
    """A job trained (as far as the API can tell) on X, Y with the given weights."""
    ds = upload(client, npz_bytes(X=X, Y=Y)).json()["id"]
    resp = client.post("/v1/jobs", json={"dataset_id": ds, "model": model, "training": {"epochs": 1}})
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    drive(redis_client, job_id, 1)
    buf = io.BytesIO()
    np.savez(buf, **weights)
    store.put(f"jobs/{job_id}/weights.npz", buf.getvalue())
    return job_id


@pytest.fixture
def linear_job(client, redis_client, store, live_worker) -> str:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3))
    return succeeded_job(
        client,
        redis_client,
        store,
        X,
        X @ np.array([1.0, 2.0, 3.0]),
        {"hidden_layers": [], "output": "linear"},
        {"W1": np.array([[1e300, 1e300, 1e300]]), "b1": np.zeros((1, 1))},
    )


@pytest.mark.parametrize("literal", NON_FINITE_LITERALS)
def test_predict_non_finite_inputs_are_422(client, linear_job, literal):
    resp = post_json(client, f"/v1/jobs/{linear_job}/predict", f'{{"inputs": [[0, 0, 0], [1, {literal}, 2]]}}'.encode())
    body = assert_problem(resp, 422, "row 1:", "NaN or an infinite value", "send finite numbers")
    strict_json(resp.text)
    assert body["errors"][0]["field"] == "inputs" and "input" not in body["errors"][0]


def test_predict_outputs_that_overflow_are_422_not_null(client, linear_job):
    ok = client.post(f"/v1/jobs/{linear_job}/predict", json={"inputs": [[1e-300, 0, 0]]})
    assert ok.status_code == 200 and ok.json()["predictions"] == [pytest.approx(1.0)]
    resp = client.post(f"/v1/jobs/{linear_job}/predict", json={"inputs": [[1e-300, 0, 0], [1e10, 1e10, 1e10]]})
    body = assert_problem(resp, 422, "row 1:", "outputs are not finite", "training data's scale", "float64")
    strict_json(resp.text)
    assert body["errors"][0]["field"] == "inputs"


def test_predict_response_size_is_bounded_by_max_predict_values(api_settings, redis_client, store, live_worker):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 2))
    with make_client(api_settings, max_predict_values=7) as c:
        job = succeeded_job(
            c,
            redis_client,
            store,
            X,
            X @ rng.normal(size=(2, 3)),
            {"hidden_layers": [], "output": "linear"},
            {"W1": rng.normal(size=(3, 2)), "b1": np.zeros((3, 1))},
        )
        assert c.post(f"/v1/jobs/{job}/predict", json={"inputs": X[:2].tolist()}).status_code == 200
        body = assert_problem(
            c.post(f"/v1/jobs/{job}/predict", json={"inputs": X[:3].tolist()}),
            422,
            "3 rows x 3 outputs is 9 values",
            "DNNQ_MAX_PREDICT_VALUES",
            "at most 2 rows",
        )
        assert body["errors"][0]["field"] == "inputs"
    with make_client(api_settings, max_predict_values=2) as c:
        body = assert_problem(
            c.post(f"/v1/jobs/{job}/predict", json={"inputs": X[:1].tolist()}),
            422,
            "1 rows x 3 outputs",
            "outputs alone are over it",
        )


# --- submit-time truth: the validation set -----------------------------------------------------


def csv_bytes(labels: list[str]) -> bytes:
    return ("a,b,y\n" + "".join(f"{i},{i % 3},{lab}\n" for i, lab in enumerate(labels))).encode()


@pytest.mark.parametrize("fast_lane", [True, False])
@pytest.mark.parametrize(
    "train, val, model, fragments",
    [
        ("binary", "three", {}, ["has 3 classes", "training set is binary", "output 'softmax'"]),
        ("binary", "onehot2", {}, ["training set is binary"]),
        ("binary", "wide", {}, ["has 5 features; the training dataset has 3"]),
        ("three", "four", {"output": "softmax"}, ["has 4 classes; the training set has 3"]),
        ("three", "onehot2", {"output": "softmax"}, ["one-hot labels 2 wide", "3 units"]),
        ("pets", "pets_no_dog", {"output": "softmax"}, ["['cat', 'fish']", "['cat', 'dog', 'fish']", "same order"]),
    ],
)
def test_a_validation_set_that_does_not_fit_the_output_is_422(
    api_settings, redis_client, live_worker, train, val, model, fragments, fast_lane
):
    rng = np.random.default_rng(2)
    X3, X5 = rng.normal(size=(30, 3)), rng.normal(size=(30, 5))
    files = {
        "binary": ("b.npz", binary_npz(m=30)),
        "three": ("t.npz", npz_bytes(X=X3, Y=np.arange(30) % 3)),
        "four": ("f.npz", npz_bytes(X=X3, Y=np.arange(30) % 4)),
        "onehot2": ("o.npz", npz_bytes(X=X3, Y=np.eye(2)[np.arange(30) % 2])),
        "wide": ("w.npz", npz_bytes(X=X5, Y=np.arange(30) % 2)),
        "pets": ("p.csv", csv_bytes(["cat", "dog", "fish"] * 4)),
        "pets_no_dog": ("q.csv", csv_bytes(["cat", "fish"] * 4)),
    }
    with make_client(api_settings, fast_lane=fast_lane) as c:
        ids = {}
        for name in (train, val):
            resp = upload(c, files[name][1], filename=files[name][0], target="y")
            assert resp.status_code == 201, resp.text
            ids[name] = resp.json()["id"]
        resp = c.post("/v1/jobs", json={"dataset_id": ids[train], "validation_dataset_id": ids[val], "model": model})
        body = assert_problem(resp, 422, ids[val], *fragments)
        assert body["errors"][0]["field"] == "validation_dataset_id"
        assert c.get("/v1/jobs").json()["total"] == 0
        good = c.post("/v1/jobs", json={"dataset_id": ids[train], "validation_dataset_id": ids[train], "model": model})
        assert good.status_code == 202, good.text


# --- submit-time truth: a live worker for the queue ---------------------------------------------


@pytest.mark.parametrize("fast_lane", [True, False])
def test_a_gpu_job_with_no_gpu_worker_is_422_saying_which_worker_to_start(
    api_settings, redis_client, live_worker, fast_lane
):
    with make_client(api_settings, fast_lane=fast_lane) as c:
        ds = upload(c, binary_npz()).json()["id"]
        body = assert_problem(
            c.post("/v1/jobs", json={"dataset_id": ds, "device": "gpu"}),
            422,
            "no live worker serves the 'gpu' queue",
            "dnnq worker --queues gpu --gpu 0",
            "dnnq up --queues default,gpu",
            '"wait_for_worker": true',
        )
        assert body["errors"][0]["field"] == "device"
        assert c.get("/v1/jobs").json()["total"] == 0 and jobs.queue_depth(redis_client, "gpu") == 0
        waiting = c.post("/v1/jobs", json={"dataset_id": ds, "device": "gpu", "wait_for_worker": True})
        assert waiting.status_code == 202, waiting.text
        assert waiting.json()["queue"] == "gpu" and waiting.json()["spec"]["wait_for_worker"] is True
        assert jobs.queue_depth(redis_client, "gpu") == 1
        assert c.post("/v1/jobs", json={"dataset_id": ds, "device": "cpu"}).status_code == 202  # 'default' is served


def test_no_worker_at_all_is_422_and_a_worker_that_just_started_counts_at_once(api_settings, redis_client):
    with make_client(api_settings, worker_capacity_cache_seconds=60) as c:
        ds = upload(c, binary_npz()).json()["id"]
        body = assert_problem(
            c.post("/v1/jobs", json={"dataset_id": ds}),
            422,
            "no live worker serves the 'default' queue",
            "dnnq worker --queues default",
            "dnnq up",
            '"wait_for_worker": true',
        )
        assert body["errors"][0]["field"] == "wait_for_worker"
        fake_worker(redis_client, "late", "default")  # the refusal is not cached for the next 60 s
        assert c.post("/v1/jobs", json={"dataset_id": ds}).status_code == 202
        fake_worker(redis_client, "gpu-late", "gpu")
        assert c.post("/v1/jobs", json={"dataset_id": ds, "device": "gpu"}).status_code == 202


def test_a_worker_whose_heartbeat_expired_is_not_live(api_settings, redis_client):
    with make_client(api_settings, worker_capacity_cache_seconds=0) as c:
        ds = upload(c, binary_npz()).json()["id"]
        fake_worker(redis_client, "gone", "default")
        redis_client.delete(keys.worker("gone"))  # its TTL ran out: the index still names it
        assert_problem(c.post("/v1/jobs", json={"dataset_id": ds}), 422, "no live worker")


def test_live_workers_are_read_once_per_cache_period_when_served(api_settings, redis_client, live_worker):
    from dnnq.workers.recovery import live_workers_async

    reads = []

    async def counted(ar):
        reads.append(1)
        return await live_workers_async(ar)

    with make_client(api_settings, worker_capacity_cache_seconds=60) as c:
        c.app.state.job_desk.read_workers = counted  # the desk's live-workers read: its seam
        ds = upload(c, binary_npz()).json()["id"]
        assert [c.post("/v1/jobs", json={"dataset_id": ds, "training": {"seed": s}}).status_code for s in range(5)] == [
            202
        ] * 5
    assert len(reads) == 1


# --- a non-finite validation loss fails the job ---------------------------------------------------


def test_a_validation_loss_that_overflows_fails_the_job_naming_the_epoch(
    client, redis_client, redis_url, store, data_dir, live_worker
):
    from dnnq.workers.runner import run_job
    from dnnq.workers.settings import WorkerSettings

    rng = np.random.default_rng(3)
    X, X_val = rng.normal(size=(40, 3)), rng.normal(size=(20, 3))
    train = upload(client, npz_bytes(X=X, Y=X @ np.array([1.0, -1.0, 0.5]))).json()["id"]
    # float32 targets of 1e20: each squared error is past float32's range, the sum is inf
    val = upload(client, npz_bytes(X=X_val, Y=np.full(20, 1e20))).json()["id"]
    resp = client.post(
        "/v1/jobs",
        json={
            "dataset_id": train,
            "validation_dataset_id": val,
            "model": {"hidden_layers": [4], "output": "linear"},
            "training": {"epochs": 5},
        },
    )
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    settings = WorkerSettings(
        redis_url=redis_url, data_dir=data_dir, lease_seconds=5, heartbeat_seconds=0.5, worker_name="inproc"
    )
    assert run_job(job_id, settings=settings, r=redis_client, store=store) == "failed"

    view = client.get(f"/v1/jobs/{job_id}", params={"history": "full"})
    assert view.status_code == 200
    job = strict_json(view.text)
    assert job["status"] == "failed"
    assert job["error"].startswith("The validation loss is inf at epoch 1 (the training loss is finite)")
    assert "validation set is on the training set's scale" in job["error"] and "float64" in job["error"]
    assert job["history"] == []  # the epoch whose validation loss overflowed is not recorded
    assert not store.exists(f"jobs/{job_id}/weights.npz")
    assert sse_events(client.get(f"/v1/jobs/{job_id}/events").text)[-1][2]["status"] == "failed"


# --- a dataset's values against the job's dtype -------------------------------------------------


def huge_npz(x_max: float = 1e300, y=None) -> bytes:
    """A float64 dataset whose largest input is ``x_max`` (binary labels unless ``y``)."""
    X = np.array([[1.0, -x_max], [2.0, 0.5], [-3.0, 1.0], [0.25, 2.0]])
    return npz_bytes(X=X, Y=np.array([0, 1, 0, 1]) if y is None else y)


def test_a_float32_job_on_inputs_past_float32s_range_is_a_422_and_float64_trains(client, live_worker, redis_client):
    ds = upload(client, huge_npz()).json()["id"]
    refused = client.post("/v1/jobs", json={"dataset_id": ds, "training": {"dtype": "float32"}})
    body = assert_problem(refused, 422, "inputs up to 1e+300", "float32's largest", "set training.dtype to 'float64'")
    assert body["errors"][0]["field"] == "training.dtype"
    assert client.get("/v1/jobs").json()["total"] == 0 and redis_client.keys("dnnq:job:*") == []
    accepted = client.post("/v1/jobs", json={"dataset_id": ds, "training": {"dtype": "float64"}})
    assert accepted.status_code == 202, accepted.text


def test_the_scale_counts_and_targets_are_checked_where_they_are_cast(client, live_worker):
    ds = upload(client, huge_npz(x_max=1e34)).json()["id"]
    fits = client.post("/v1/jobs", json={"dataset_id": ds, "training": {"dtype": "float32"}})
    assert fits.status_code == 202, fits.text  # 1e34 is within float32's 3.4e38
    scaled = client.post(
        "/v1/jobs", json={"dataset_id": ds, "training": {"dtype": "float32"}, "preprocess": {"scale": 1e5}}
    )
    assert_problem(scaled, 422, "x preprocess.scale 100000", "a smaller preprocess.scale")
    targets = upload(client, huge_npz(x_max=1.0, y=np.array([1e300, 0.0, 1.0, 2.0])), label_kind="continuous")
    linear = {"dataset_id": targets.json()["id"], "model": {"output": "linear"}}
    float32 = client.post("/v1/jobs", json={**linear, "training": {"dtype": "float32"}})
    assert_problem(float32, 422, "targets up to 1e+300")
    assert client.post("/v1/jobs", json={**linear, "training": {"dtype": "float64"}}).status_code == 202


def test_a_sweep_on_inputs_past_its_dtype_is_a_422_creating_no_trial(client, live_worker, redis_client):
    ds = upload(client, huge_npz()).json()["id"]
    base = {"dataset_id": ds, "training": {"dtype": "float32"}}
    resp = client.post("/v1/sweeps", json={"base": base, "grid": {"lr": [0.1, 0.01]}})
    assert_problem(resp, 422, "float32's largest value")
    assert redis_client.keys("dnnq:job:*") == [] and redis_client.keys("dnnq:sweep:*") == []


def test_a_dataset_record_without_the_range_fields_is_not_refused(client, live_worker, redis_client):
    ds = upload(client, huge_npz(x_max=5.0)).json()["id"]
    assert float(redis_client.hget(keys.dataset(ds), "x_abs_max")) == 5.0
    redis_client.hdel(keys.dataset(ds), "x_abs_max", "y_abs_max")  # as a record stored before they were kept
    resp = client.post("/v1/jobs", json={"dataset_id": ds, "training": {"dtype": "float32"}})
    assert resp.status_code == 202, resp.text
