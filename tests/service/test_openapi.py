"""The API's typed contract (issue 15): the OpenAPI schema is valid, names every answer's properties,
uses readable operationIds and component names, documents binary answers as binary only, and says
exactly what the routes answer, the fast lane's answers included (service/fastlane.py answers submits
and polls below FastAPI, without response validation: these tests are what keeps the models and the
views from drifting apart). The live test generates a client with openapi-python-client and trains a
tiny job through it with attribute access."""

from __future__ import annotations

import importlib
import io
import json
import re
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate as validate_spec

from dnnq.workers import jobs
from tests.service.test_api import binary_npz, drive, fake_worker, upload

JSON, PROBLEM = "application/json", "application/problem+json"

# What the issue asks for by name; every other operation must still have a snake_case name.
EXPECTED_OPERATIONS = {
    ("post", "/v1/jobs"): "submit_job",
    ("get", "/v1/jobs"): "list_jobs",
    ("get", "/v1/jobs/{job_id}"): "get_job",
    ("post", "/v1/jobs/{job_id}/cancel"): "cancel_job",
    ("get", "/v1/jobs/{job_id}/events"): "stream_job_events",
    ("get", "/v1/jobs/{job_id}/weights"): "get_weights",
    ("get", "/v1/jobs/{job_id}/model"): "get_model",
    ("post", "/v1/datasets"): "upload_dataset",
    ("post", "/v1/datasets/synthetic"): "create_synthetic_dataset",
    ("get", "/v1/datasets"): "list_datasets",
    ("get", "/v1/datasets/{dataset_id}"): "get_dataset",
    ("get", "/healthz"): "get_health",
    ("get", "/readyz"): "get_readiness",
}


def operations(spec: dict) -> list[tuple[str, str, dict]]:
    return [(method, path, op) for path, item in spec["paths"].items() for method, op in item.items()]


def resolve(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def open_places(spec: dict, schema: dict, where: str, seen: set[str] | None = None) -> list[str]:
    """Where a JSON answer's schema says nothing: `{}`, or an object without named properties or a
    typed additionalProperties."""
    seen = set() if seen is None else seen
    ref = schema.get("$ref")
    if ref is not None:
        if ref in seen:
            return []
        seen.add(ref)
        return open_places(spec, resolve(spec, schema), ref.rsplit("/", 1)[1], seen)
    if not any(k in schema for k in ("type", "anyOf", "oneOf", "allOf", "enum", "const")):
        return [where]
    found: list[str] = []
    for key in ("anyOf", "oneOf", "allOf"):
        for i, sub in enumerate(schema.get(key, [])):
            found += open_places(spec, sub, f"{where}.{key}[{i}]", seen)
    if schema.get("type") == "object":
        extra = schema.get("additionalProperties")
        if not schema.get("properties") and not isinstance(extra, dict):
            found.append(where)
        for name, sub in schema.get("properties", {}).items():
            found += open_places(spec, sub, f"{where}.{name}", seen)
        if isinstance(extra, dict):
            found += open_places(spec, extra, f"{where}.*", seen)
    if schema.get("type") == "array":
        found += open_places(spec, schema.get("items", {}), f"{where}[]", seen)
    return found


def check_answer(spec: dict, method: str, path: str, resp: Any) -> Any:
    """The response's body validated against what the schema documents for its operation, status and
    content type; returns the parsed body."""
    media = resp.headers.get("content-type", "").split(";")[0]
    documented = spec["paths"][path][method]["responses"].get(str(resp.status_code))
    assert documented is not None, f"{method} {path}: status {resp.status_code} not documented: {resp.text[:300]}"
    assert media in documented.get("content", {}), f"{method} {path} {resp.status_code}: {media} not documented"
    body = resp.json()
    schema = documented["content"][media]["schema"]
    errors = sorted(OAS31Validator({**schema, "components": spec["components"]}).iter_errors(body), key=str)
    assert not errors, f"{method} {path} {resp.status_code}: " + "; ".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]
    )
    return body


def check_events(spec: dict, path: str, text: str) -> list[str]:
    """Each event of an SSE body validated against the data schema its stream documents (x-events);
    returns the event names in order."""
    documented = spec["paths"][path]["get"]["responses"]["200"]["content"]["text/event-stream"]["x-events"]
    names = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if "event" not in fields:
            continue
        name = fields["event"]
        assert name in documented, f"{path}: event {name!r} not documented"
        validator = OAS31Validator({**documented[name], "components": spec["components"]})
        errors = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(json.loads(fields["data"]))
        ]
        assert not errors, f"{path} event {name}: {errors[:5]}"
        names.append(name)
    return names


# --- the schema itself --------------------------------------------------------------------------------


def test_schema_is_valid_typed_and_readable(client):
    spec = client.get("/openapi.json").json()
    validate_spec(spec)

    ids = {(method, path): op["operationId"] for method, path, op in operations(spec)}
    assert {key: ids.get(key) for key in EXPECTED_OPERATIONS} == EXPECTED_OPERATIONS
    assert len(set(ids.values())) == len(ids), "operationIds must be unique"
    for op_id in ids.values():
        assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", op_id) and "_v1_" not in op_id, op_id
    for name in spec["components"]["schemas"]:  # JobView, not GetJobV1JobsJobIdGetResponse... or Body_...
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]*", name) and not name.endswith(("Get", "Post")), name

    unnamed = []
    for method, path, op in operations(spec):
        for status, response in op["responses"].items():
            content = response.get("content", {})
            if status.startswith("2") and JSON in content:
                schema = content[JSON]["schema"]
                assert "$ref" in schema, f"{method} {path} {status}: the answer should be a named model"
                unnamed += open_places(spec, schema, f"{method} {path} {status}")
            if status[0] in "45" and not (path == "/readyz" and status == "503"):
                assert list(content) == [PROBLEM], (method, path, status, list(content))
                assert content[PROBLEM]["schema"] == {"$ref": "#/components/schemas/ProblemDetails"}

    assert unnamed == [], "2xx JSON answers whose schema names no properties: " + ", ".join(sorted(set(unnamed)))

    weights = spec["paths"]["/v1/jobs/{job_id}/weights"]["get"]["responses"]["200"]["content"]
    assert weights == {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    events = spec["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    assert list(events) == ["text/event-stream"]
    # predict's limits as response headers, documented where they are sent
    from dnnq.service.routes.predict import LIMIT_HEADERS

    predict_answers = spec["paths"]["/v1/jobs/{job_id}/predict"]["post"]["responses"]
    for responses, status in [(spec["paths"]["/v1/limits"]["get"]["responses"], "200")] + [
        (predict_answers, status) for status in ("200", "404", "409", "413", "415", "422")
    ]:
        headers = responses[status]["headers"]
        assert set(headers) == set(LIMIT_HEADERS) and all(h["schema"]["type"] == "integer" for h in headers.values())
    assert predict_answers["200"]["content"][JSON]["schema"] == {"$ref": "#/components/schemas/PredictResponse"}
    assert predict_answers["413"]["content"] == {PROBLEM: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}
    form = spec["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form == {"$ref": "#/components/schemas/UploadDatasetForm"}
    assert spec["components"]["schemas"]["UploadDatasetForm"]["properties"]["file"]["format"] == "binary"


def test_open_places_finds_what_is_unnamed():
    """The walker above must be able to fail: an empty schema and a bare object are both reported."""
    spec = {"components": {"schemas": {"A": {"type": "object", "properties": {"x": {}, "y": {"type": "object"}}}}}}
    assert open_places(spec, {"$ref": "#/components/schemas/A"}, "A") == ["A.x", "A.y"]


# --- what the routes and the fast lane really answer ---------------------------------------------------


def test_answers_match_the_schema_fast_lane_included(app, client, redis_client):
    """Every JSON answer of every route (in-process, on the real Redis), each validated against the
    schema; the submit and the polls are the fast lane's answers (its counter says so)."""
    spec = client.get("/openapi.json").json()
    lane = app.state.fast_lane
    fake_worker(redis_client, "contract", "default")

    assert check_answer(spec, "get", "/healthz", client.get("/healthz")) == {"status": "ok"}
    check_answer(spec, "get", "/readyz", client.get("/readyz"))

    new = upload(client, binary_npz(), name="contract")
    dataset = check_answer(spec, "post", "/v1/datasets", new)
    assert new.status_code == 201
    again = upload(client, binary_npz(), name="contract")
    assert again.status_code == 200 and check_answer(spec, "post", "/v1/datasets", again)["id"] == dataset["id"]
    synthetic = client.post("/v1/datasets/synthetic", json={"name": "moons", "n_samples": 50})
    check_answer(spec, "post", "/v1/datasets/synthetic", synthetic)
    for query in ("", "?preview=full"):
        detail = client.get(f"/v1/datasets/{dataset['id']}{query}")
        assert check_answer(spec, "get", "/v1/datasets/{dataset_id}", detail)["preview"]["X"]
    assert check_answer(spec, "get", "/v1/datasets", client.get("/v1/datasets"))["total"] == 2
    # a record whose arrays are gone: no preview, and preview_error (present only then) says why
    gone = synthetic.json()["id"]
    app.state.store.delete(f"datasets/{gone}.npz")
    detail = check_answer(spec, "get", "/v1/datasets/{dataset_id}", client.get(f"/v1/datasets/{gone}"))
    assert detail["preview"] is None and detail["preview_error"]
    assert "preview_error" not in client.get(f"/v1/datasets/{dataset['id']}").json()

    before = lane.answered
    submitted = client.post("/v1/jobs", json={"dataset_id": dataset["id"], "training": {"epochs": 3}})
    assert lane.answered == before + 1 and submitted.status_code == 202, submitted.text
    job = check_answer(spec, "post", "/v1/jobs", submitted)
    assert job["history"] == []
    # with an Idempotency-Key the route answers (not the lane), and a replay answers the original job
    keyed = {"json": {"dataset_id": dataset["id"]}, "headers": {"Idempotency-Key": "contract-1"}}
    first = check_answer(spec, "post", "/v1/jobs", client.post("/v1/jobs", **keyed))
    replay = check_answer(spec, "post", "/v1/jobs", client.post("/v1/jobs", **keyed))
    assert replay["id"] == first["id"] and "history" not in replay
    assert lane.answered == before + 1

    drive(redis_client, job["id"], 3)
    before = lane.answered
    for query in ("", "?history=full", "?history=none"):
        view = check_answer(spec, "get", "/v1/jobs/{job_id}", client.get(f"/v1/jobs/{job['id']}{query}"))
        assert view["status"] == "succeeded" and view["metrics"]["final_loss"] == pytest.approx(1 / 3)
    assert lane.answered == before + 3
    assert len(view["links"]) >= 3 and "history" not in view
    # the route's own answer for a query the lane leaves to FastAPI
    slow = client.get(f"/v1/jobs/{job['id']}?history=full&x=1")
    assert check_answer(spec, "get", "/v1/jobs/{job_id}", slow)["history"][-1]["epoch"] == 3
    assert lane.answered == before + 3

    listed = check_answer(spec, "get", "/v1/jobs", client.get("/v1/jobs?limit=10"))
    assert listed["total"] == 2 and all("history" not in item for item in listed["items"])
    # the job's event stream: every event's data as documented (x-events)
    names = check_events(spec, "/v1/jobs/{job_id}/events", client.get(f"/v1/jobs/{job['id']}/events").text)
    assert names == ["epoch"] * 3 + ["status", "end"]
    cancelled = check_answer(spec, "post", "/v1/jobs/{job_id}/cancel", client.post(f"/v1/jobs/{first['id']}/cancel"))
    assert cancelled["status"] == "cancelled"

    # a sweep's trial is an ordinary job whose view names its sweep: the lane's, the route's and the list's
    sweep_body = {"base": {"dataset_id": dataset["id"]}, "grid": {"lr": [0.1, 0.2], "hidden_layers": [[3], [2, 2]]}}
    sweep = check_answer(spec, "post", "/v1/sweeps", client.post("/v1/sweeps", json=sweep_body))
    trial = sweep["trials"][3]
    before = lane.answered
    for query in ("", "?history=none&x=1"):
        view = check_answer(spec, "get", "/v1/jobs/{job_id}", client.get(f"/v1/jobs/{trial['job_id']}{query}"))
        assert (view["sweep_id"], view["sweep_trial"], view["sweep_pack"]) == (sweep["id"], 3, trial["pack"])
        assert view["sweep_overrides"] == {"model.hidden_layers": [2, 2], "training.learning_rate": 0.2}
        assert view["links"]["sweep"] == f"/v1/sweeps/{sweep['id']}"
    assert lane.answered == before + 1
    listed = check_answer(spec, "get", "/v1/jobs", client.get("/v1/jobs?limit=10"))
    assert sum("sweep_id" in item for item in listed["items"]) == 4
    # the sweep's event stream, once cancelled (its trials were queued: cancelled at once) it ends
    check_answer(spec, "post", "/v1/sweeps/{sweep_id}/cancel", client.post(f"/v1/sweeps/{sweep['id']}/cancel"))
    names = check_events(spec, "/v1/sweeps/{sweep_id}/events", client.get(f"/v1/sweeps/{sweep['id']}/events").text)
    assert names == ["trial"] * 4 + ["end"]
    assert not any(
        k.startswith("sweep")
        for k in check_answer(spec, "get", "/v1/jobs/{job_id}", client.get(f"/v1/jobs/{job['id']}"))
    )

    # problem+json answers, from the lane and from the routes
    missing = "0" * 32
    for resp, method, path in (
        (client.get(f"/v1/jobs/{missing}"), "get", "/v1/jobs/{job_id}"),  # the lane's 404
        (client.get("/v1/jobs/nope?history=full"), "get", "/v1/jobs/{job_id}"),
        (client.post(f"/v1/jobs/{job['id']}/cancel"), "post", "/v1/jobs/{job_id}/cancel"),  # 409: finished
        (client.get(f"/v1/jobs/{first['id']}/model"), "get", "/v1/jobs/{job_id}/model"),  # 409: cancelled
        (client.post("/v1/jobs", json={"dataset_id": missing}), "post", "/v1/jobs"),  # the lane's 422
        (client.post("/v1/jobs", json={"training": {"epochs": -1}}), "post", "/v1/jobs"),  # FastAPI's 422
        (client.get("/v1/datasets?limit=0"), "get", "/v1/datasets"),
    ):
        assert resp.status_code >= 400, resp.text
        problem = check_answer(spec, method, path, resp)
        assert problem["status"] == resp.status_code and problem["detail"]


def test_models_refuse_keys_the_views_do_not_document(client):
    """A key added to a view without its field fails the check above (additionalProperties: false)."""
    spec = client.get("/openapi.json").json()
    job = spec["components"]["schemas"]["JobView"]
    assert job["additionalProperties"] is False
    validator = OAS31Validator({"$ref": "#/components/schemas/HistoryEntry", "components": spec["components"]})
    entry = {"epoch": 1, "loss": 0.5, "accuracy": None, "val_loss": None, "val_accuracy": None}
    assert validator.is_valid(entry)
    assert not validator.is_valid({**entry, "undocumented": 1})


# --- a generated client, used as a person would ------------------------------------------------------


def generate_client(spec: dict, tmp_path) -> Any:
    """openapi-python-client's package for `spec`, generated into tmp_path and imported."""
    (tmp_path / "openapi.json").write_text(json.dumps(spec))
    # no post hooks: the generator would run ruff over its own output, which the test does not need
    (tmp_path / "config.yml").write_text("package_name_override: dnnq_openapi_client\npost_hooks: []\n")
    done = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(tmp_path / "openapi.json")]
        + ["--output-path", str(tmp_path / "dnnq_openapi_client"), "--meta", "none"]
        + ["--config", str(tmp_path / "config.yml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    return importlib.import_module("dnnq_openapi_client")


@pytest.mark.e2e
@pytest.mark.slow  # a live stack, a generated client (about 7 s to generate) and a short training
def test_generated_client_trains_and_downloads(live_stack, tmp_path):
    """From the live schema: generate a client, upload a tiny dataset, submit, poll until it succeeds,
    read the model and download the weights, all with attribute access on typed models."""
    pytest.importorskip("openapi_python_client", reason="openapi-python-client (needs Python >= 3.11)")
    with live_stack.client() as http:
        spec = http.get("/openapi.json").json()
    validate_spec(spec)
    generated = generate_client(spec, tmp_path)
    try:
        api_datasets = importlib.import_module("dnnq_openapi_client.api.datasets")
        api_jobs = importlib.import_module("dnnq_openapi_client.api.jobs")
        models = importlib.import_module("dnnq_openapi_client.models")
        types = importlib.import_module("dnnq_openapi_client.types")
        importlib.import_module("dnnq_openapi_client.api.datasets.upload_dataset")
        for name in ("submit_job", "get_job", "list_jobs", "cancel_job", "get_model", "get_weights"):
            importlib.import_module(f"dnnq_openapi_client.api.jobs.{name}")

        client = generated.Client(base_url=live_stack.base_url, raise_on_unexpected_status=True)
        form = models.UploadDatasetForm(
            file=types.File(payload=io.BytesIO(binary_npz(m=60, n=3)), file_name="tiny.npz"), name="tiny"
        )
        dataset = api_datasets.upload_dataset.sync(client=client, body=form)
        assert isinstance(dataset, models.DatasetView), dataset
        assert dataset.n_examples == 60 and dataset.n_features == 3 and dataset.label_kind.value == "binary"

        spec_body = models.JobSpec(
            dataset_id=dataset.id,
            model=models.ModelSpec(hidden_layers=[4]),
            training=models.TrainingSpec(epochs=20, learning_rate=0.05),
        )
        accepted = api_jobs.submit_job.sync(client=client, body=spec_body)
        assert isinstance(accepted, models.JobAccepted), accepted
        assert accepted.status.value == "queued" and accepted.spec.training.epochs == 20

        deadline = time.monotonic() + 60
        job = api_jobs.get_job.sync(accepted.id, client=client)
        while job.status.value not in {s.value for s in jobs.TERMINAL} and time.monotonic() < deadline:
            time.sleep(0.2)
            job = api_jobs.get_job.sync(accepted.id, client=client)
        assert isinstance(job, models.JobView)
        assert job.status.value == "succeeded", (job.status, job.error, live_stack.log()[-2000:])
        assert job.progress.epoch == 20 and len(job.history) == 20 and job.history[-1].epoch == 20
        assert job.metrics.train_accuracy is not None and job.timings.total_s > 0
        assert job.links.weights_npz == f"/v1/jobs/{job.id}/weights?format=npz"

        described = api_jobs.get_model.sync(job.id, client=client)
        assert isinstance(described, models.ModelDescription), described
        assert described.layer_sizes == [3, 4, 1] and described.output == "sigmoid"

        weights = api_jobs.get_weights.sync(job.id, client=client)
        assert isinstance(weights, types.File), weights
        with np.load(io.BytesIO(weights.payload.read()), allow_pickle=False) as npz:
            assert npz["W1"].shape == (4, 3) and npz["b2"].shape == (1, 1)

        listed = api_jobs.list_jobs.sync(client=client)
        assert isinstance(listed, models.JobList) and listed.total == 1 and listed.items[0].id == job.id
        # errors are typed too: problem+json parsed as ProblemDetails
        refused = api_jobs.cancel_job.sync(job.id, client=client)
        assert isinstance(refused, models.ProblemDetails) and refused.status == 409, refused
        missing = api_jobs.get_job.sync("0" * 32, client=client)
        assert isinstance(missing, models.ProblemDetails) and missing.status == 404 and "0" * 32 in missing.detail
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.split(".")[0] == "dnnq_openapi_client"]:
            del sys.modules[name]

    # The live answers of a trained job, validated against the schema: the fast lane's poll and the
    # routes' model description and list, with real metrics and timings.
    with live_stack.client() as http:
        check_answer(spec, "get", "/v1/jobs/{job_id}", http.get(f"/v1/jobs/{job.id}"))
        check_answer(spec, "get", "/v1/jobs/{job_id}/model", http.get(f"/v1/jobs/{job.id}/model"))
        check_answer(spec, "get", "/v1/jobs", http.get("/v1/jobs"))
        check_answer(spec, "get", "/readyz", http.get("/readyz"))
        binary = http.get(f"/v1/jobs/{job.id}/weights?format=onnx")
        assert binary.status_code == 200 and binary.headers["content-type"] == "application/octet-stream"


# --- /docs and /redoc: offline ----------------------------------------------------------------------


def test_docs_pages_load_only_local_assets(client):
    """The pages name only the API's own asset URLs (the browser test renders them offline)."""
    from dnnq.service.docs import ASSETS, PAGE_CSP

    for page, bundle in (
        ("/docs", "/docs/assets/swagger-ui-bundle.js"),
        ("/redoc", "/docs/assets/redoc.standalone.js"),
    ):
        resp = client.get(page)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
        assert resp.headers["content-security-policy"] == PAGE_CSP
        assert f'src="{bundle}"' in resp.text and "/openapi.json" in resp.text
        assert re.findall(r"(?:src|href)=[\"'](https?:[^\"']*)", resp.text) == [], resp.text
    for name, media_type in ASSETS.items():
        resp = client.get(f"/docs/assets/{name}")
        assert resp.status_code == 200 and resp.headers["content-type"].startswith(media_type), name
        assert len(resp.content) > 1000, name
    for bad in ("/docs/assets/core.py", "/docs/assets/..%2F__init__.py", "/docs/assets/"):
        assert client.get(bad).status_code == 404, bad
    assert client.get("/docs/oauth2-redirect").status_code == 200


def test_limits_headers_are_exposed_to_browsers(api_settings):
    """Cross-origin (DNNQ_CORS_ORIGINS), a browser may read the limit headers (Access-Control-Expose-Headers)."""
    from fastapi.testclient import TestClient

    from dnnq.service.app import create_app
    from dnnq.service.routes.predict import LIMIT_HEADERS

    app = create_app(api_settings.model_copy(update={"cors_origins": "http://notebook.example"}))
    with TestClient(app) as client:
        answer = client.get("/v1/limits", headers={"Origin": "http://notebook.example"})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "http://notebook.example"
    exposed = {h.strip().lower() for h in answer.headers["access-control-expose-headers"].split(",")}
    assert exposed == {h.lower() for h in LIMIT_HEADERS}
    assert answer.headers["x-dnnq-max-predict-body-bytes"] == str(answer.json()["max_predict_body_bytes"])
