"""Hostile requests (not files) against the real `dnnq up` of tests/hostile/conftest.py.

- Non-finite and huge numbers, as JSON text, in every float field of a job spec: a 422 problem+json whose
  body is strict JSON, and no job (alice's list unchanged and still answering, with every ?status=).
- Predict: an output bomb (rows x softmax outputs over the response bound) is a 4xx; non-finite inputs a
  422 in strict JSON; inputs that overflow give finite numbers or a 4xx, never null or Infinity.
- Last-Event-ID in other scripts' digits, Latin-1 superscripts or 10,000 digits: ignored, the stream
  replays from the start and is not cut.
- /static with a NUL or a 300-byte name: 404. An unauthenticated 50 MB upload: a quick 401, its body
  never buffered. /metrics with a tenant's key: 403 (the operator's metrics key works).
"""

from __future__ import annotations

import io
import json
import time
import typing

import numpy as np
import pytest
from pydantic import BaseModel

from dnnq.workers.spec import JobSpec
from tests.hostile.conftest import reset_peak, status_bytes

pytestmark = [pytest.mark.e2e]

NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "10e308"]
STATUSES = ["queued", "running", "succeeded", "failed", "cancelling", "cancelled"]
N_CLASSES = 500


def _float_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted paths of every float field of the spec (found from the model: a new one is covered too)."""
    paths = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        options = typing.get_args(ann) or (ann,)
        if any(isinstance(o, type) and issubclass(o, BaseModel) for o in options):
            sub = next(o for o in options if isinstance(o, type) and issubclass(o, BaseModel))
            paths += _float_fields(sub, f"{prefix}{name}.")
        elif float in options:
            paths.append(prefix + name)
    return paths


FLOAT_FIELDS = _float_fields(JobSpec)


def _reject_constant(name):
    raise ValueError(f"non-JSON constant {name} in a response body")


def strict_json(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity (not JSON, RFC 8259)."""
    return json.loads(text, parse_constant=_reject_constant)


def assert_problem(resp, statuses, *fragments: str) -> dict:
    statuses = {statuses} if isinstance(statuses, int) else set(statuses)
    assert resp.status_code in statuses, f"{resp.status_code}: {resp.text[:500]}"
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.headers["content-type"]
    body = strict_json(resp.text)
    assert body["status"] == resp.status_code and body["title"] and isinstance(body["detail"], str)
    for fragment in fragments:
        assert fragment in body["detail"], body["detail"]
    return body


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.fixture(scope="module")
def alice(hostile_server):
    with hostile_server.client("alice") as http:
        yield http


@pytest.fixture(scope="module")
def dataset_id(alice) -> str:
    resp = alice.post("/v1/datasets/synthetic", json={"name": "moons", "n_samples": 64})
    assert resp.status_code in (200, 201), resp.text
    return resp.json()["id"]


@pytest.fixture(scope="module")
def softmax_job(alice) -> str:
    """A trained softmax model with N_CLASSES outputs (2 epochs, so its event stream has two epochs)."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(2 * N_CLASSES, 2)).astype(np.float32)
    Y = np.arange(2 * N_CLASSES) % N_CLASSES
    ds = alice.post("/v1/datasets", files={"file": ("many.npz", npz_bytes(X=X, Y=Y))})
    assert ds.status_code in (200, 201), ds.text
    spec = {
        "dataset_id": ds.json()["id"],
        "model": {"hidden_layers": [4], "output": "softmax"},
        "training": {"epochs": 2, "learning_rate": 0.01},
        "device": "cpu",
    }
    submitted = alice.post("/v1/jobs", json=spec)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        job = alice.get(f"/v1/jobs/{job_id}", params={"history": "none"}).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.3)
    assert job["status"] == "succeeded", job
    return job_id


def jobs_answer(http) -> int:
    """alice's job count; the list and every ?status= answer 200 in strict JSON."""
    listing = http.get("/v1/jobs", params={"limit": 500})
    assert listing.status_code == 200, listing.text[:500]
    for status in STATUSES:
        by_status = http.get("/v1/jobs", params={"status": status})
        assert by_status.status_code == 200, f"?status={status}: {by_status.status_code} {by_status.text[:300]}"
        strict_json(by_status.text)
    return strict_json(listing.text)["total"]


# --- non-finite numbers in a job spec -------------------------------------------------------------


def test_the_spec_has_the_float_fields_this_suite_covers():
    assert {"training.learning_rate", "training.l2", "preprocess.scale"} <= set(FLOAT_FIELDS), FLOAT_FIELDS


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("path", FLOAT_FIELDS)
def test_non_finite_number_in_a_spec_is_a_422_and_no_job(alice, dataset_id, path, value):
    before = jobs_answer(alice)
    section, name = path.rsplit(".", 1) if "." in path else ("", path)
    spec: dict = {"dataset_id": dataset_id, "training": {"epochs": 1}, "device": "cpu"}
    target = spec
    for part in section.split(".") if section else []:
        target = target.setdefault(part, {})
    target[name] = "__VALUE__"
    body = json.dumps(spec).replace('"__VALUE__"', value)  # the number as JSON text, as a client sends it
    resp = alice.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    problem = assert_problem(resp, 422)
    assert name in problem["detail"], problem["detail"]
    assert jobs_answer(alice) == before


# A JSON number only: `true` trained at learning rate 1.0, and "5" was 5 epochs.
NOT_NUMBERS = [
    ("training.learning_rate", "true"),
    ("training.l2", "false"),
    ("training.epochs", '"5"'),
    ("training.epochs", "5.0"),
    ("training.seed", "true"),
    ("model.hidden_layers", "[true]"),
    ("preprocess.scale", '"0.5"'),
    ("training.shuffle", "1"),
]


@pytest.mark.parametrize("path, value", NOT_NUMBERS)
def test_a_boolean_or_a_string_for_a_number_is_a_422_and_no_job(alice, dataset_id, path, value):
    before = jobs_answer(alice)
    section, name = path.rsplit(".", 1)
    spec: dict = {"dataset_id": dataset_id, "training": {"epochs": 1}, "device": "cpu"}
    spec.setdefault(section, {})[name] = "__VALUE__"
    body = json.dumps(spec).replace('"__VALUE__"', value)
    resp = alice.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    problem = assert_problem(resp, 422)
    assert name in problem["detail"], problem["detail"]
    assert jobs_answer(alice) == before


def test_an_integer_is_still_a_float_fields_value(alice, dataset_id):
    spec = {"dataset_id": dataset_id, "training": {"epochs": 1, "learning_rate": 1, "l2": 0}, "device": "cpu"}
    assert alice.post("/v1/jobs", json=spec).status_code == 202


# --- predict --------------------------------------------------------------------------------------


def test_predict_output_bomb_is_refused(alice, softmax_job):
    """rows x outputs over DNNQ_MAX_PREDICT_VALUES (default 1,000,000): 2,500 rows x 500 classes."""
    rows = [[0.5, -0.5]] * 2500
    resp = alice.post(f"/v1/jobs/{softmax_job}/predict", json={"inputs": rows})
    assert 400 <= resp.status_code < 500, f"{resp.status_code}, {len(resp.content)} bytes"
    assert_problem(resp, resp.status_code)
    assert len(resp.content) < 10_000


@pytest.mark.parametrize("value", NON_FINITE)
def test_predict_non_finite_inputs_are_a_422_in_strict_json(alice, softmax_job, value):
    body = '{"inputs": [[0.5, ' + value + "]]}"
    resp = alice.post(f"/v1/jobs/{softmax_job}/predict", content=body, headers={"Content-Type": "application/json"})
    assert_problem(resp, 422)


def test_predict_inputs_that_overflow_answer_finite_numbers_or_a_4xx(alice, softmax_job):
    resp = alice.post(f"/v1/jobs/{softmax_job}/predict", json={"inputs": [[1e308, -1e308], [0.5, 0.5]]})
    if resp.status_code == 200:
        body = strict_json(resp.text)
        values = np.asarray(body["probabilities"], dtype=float)  # a null would be nan here
        assert np.isfinite(values).all(), body
        assert None not in body["predictions"]
    else:
        assert_problem(resp, range(400, 500))


# --- Last-Event-ID ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "last_event_id",
    [
        "١٢٣".encode(),  # Arabic-Indic digits (UTF-8 on the wire)
        "²³".encode("latin-1"),  # Latin-1 superscripts: str.isdigit() says yes, int() says no
        b"9" * 10_000,  # past int64, and past Python's int() digit limit
        b"-1",
    ],
    ids=["arabic-indic", "superscripts", "10000-digits", "negative"],
)
def test_odd_last_event_id_is_ignored_and_the_stream_is_whole(hostile_server, softmax_job, last_event_id):
    with (
        hostile_server.client("alice", scan=False) as http,
        http.stream("GET", f"/v1/jobs/{softmax_job}/events", headers={"Last-Event-ID": last_event_id}) as resp,
    ):
        assert resp.status_code == 200, resp.read()[:300]
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = list(resp.iter_lines())  # a stream cut mid-body raises here (incomplete chunked read)
    events, kind = [], None
    for line in lines:
        if line.startswith("event: "):
            kind = line[len("event: ") :]
        elif line.startswith("data: "):
            events.append((kind, strict_json(line[len("data: ") :])))
    assert [d["epoch"] for k, d in events if k == "epoch"] == [1, 2]  # ignored: replayed from the start
    assert events[-1][0] == "end" and events[-1][1]["status"] == "succeeded"


# --- request gates ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/static/%00", "/static/" + "a" * 300, "/static/x%00.js", "/static/" + "/".join(["c" * 250] * 20)]
)
def test_static_paths_that_cannot_be_files_are_404(hostile_server, path):
    with hostile_server.client(None) as anon:
        assert_problem(anon.get(path), 404, "No static file")


def test_unauthenticated_50mb_upload_is_a_quick_401_and_its_body_is_not_buffered(hostile_server):
    pid = hostile_server.note_api()
    reset_peak(pid)
    rss = status_bytes(pid, "VmRSS")
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.npz"\r\n\r\n' + b"\0" * (50 * 2**20)
    with hostile_server.client(None) as anon:
        start = time.monotonic()
        resp = anon.post("/v1/datasets", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"})
        elapsed = time.monotonic() - start
        assert_problem(resp, 401, "API key missing")
        assert anon.get("/healthz").status_code == 200  # the connection still serves the next request
    assert elapsed < 5.0
    assert status_bytes(pid, "VmHWM") - rss < 20 * 2**20, "the API buffered the unauthenticated body"
    assert hostile_server.note_api() == pid


def test_metrics_needs_the_operator_key(hostile_server):
    with hostile_server.client("alice") as alice:
        assert_problem(alice.get("/metrics"), 403, "operator's metrics key")
    with hostile_server.client("operator") as op:
        resp = op.get("/metrics")
        assert resp.status_code == 200 and "dnnq_jobs" in resp.text
    with hostile_server.client(None) as anon:
        assert_problem(anon.get("/metrics"), 401)
