"""Upload and preview over HTTP: the parse runs in the sandbox, nothing is left in staging, a failed
upload stores nothing, and the API process neither grows with the upload nor stops answering."""

from __future__ import annotations

import io
import threading
import time

import httpx
import numpy as np

from tests.service.test_api import assert_problem, make_client, npz_bytes, stored_files, upload

MiB = 1024 * 1024


def staged(data_dir) -> list:
    staging = data_dir / "artifacts" / ".staging"
    return sorted(staging.iterdir()) if staging.exists() else []


def test_upload_stores_the_file_the_sandbox_wrote_and_previews_it(client, data_dir, store):
    X = np.arange(6 * 30, dtype=np.float32).reshape(6, 30)
    resp = upload(client, npz_bytes(X=X, Y=np.arange(6) % 2), name="wide")
    assert resp.status_code == 201, resp.text
    ds = resp.json()
    assert ds["n_examples"] == 6 and ds["n_features"] == 30 and ds["label_kind"] == "binary"
    assert staged(data_dir) == []
    X2, _ = __import__("dnnq.workers.datasets", fromlist=["load_arrays"]).load_arrays(store, ds["id"])
    np.testing.assert_array_equal(X2, X)
    short = client.get(f"/v1/datasets/{ds['id']}").json()["preview"]
    assert short["X"] == X[:5, :20].tolist() and short["Y"] == [[0.0], [1.0], [0.0], [1.0], [0.0]]
    assert short["features_truncated"] is True
    full = client.get(f"/v1/datasets/{ds['id']}", params={"preview": "full"}).json()["preview"]
    assert full["X"] == X[:5].tolist() and full["features_truncated"] is False


def test_a_refused_upload_leaves_nothing_in_staging_or_the_store(client, data_dir):
    before = stored_files(data_dir)
    assert_problem(upload(client, npz_bytes(X=np.ones((5, 2)), Y=np.ones(4))), 422, "X has 5 examples but Y has 4")
    assert_problem(upload(client, b"PK\x03\x04 not a zip", filename="d.npz"), 422)
    assert stored_files(data_dir) == before and staged(data_dir) == []
    assert client.get("/v1/datasets").json()["total"] == 0


def test_a_parse_past_the_wall_time_is_a_422_that_names_the_limits(api_settings, data_dir):
    with make_client(api_settings, parse_wall_seconds=0.001) as c:
        resp = upload(c, npz_bytes(X=np.ones((50, 2)), Y=np.ones(50)), idempotency_key="k1")
        assert_problem(resp, 422, "within the parser's limits", "time 0.001 s", "took longer than")
        assert staged(data_dir) == [] and c.get("/v1/datasets").json()["total"] == 0
        assert c.get("/healthz").status_code == 200  # the next request is answered as usual
    with make_client(api_settings) as c:  # the key was released: the same request now succeeds
        resp = c.post(
            "/v1/datasets",
            files={"file": ("d.npz", npz_bytes(X=np.ones((50, 2)), Y=np.ones(50)))},
            headers={"Idempotency-Key": "k1"},
        )
        assert resp.status_code == 201, resp.text


def test_idempotent_replay_answers_without_parsing_again(client, monkeypatch):
    from dnnq.service.routes import datasets as route

    body = npz_bytes(X=np.ones((8, 2)), Y=np.arange(8) % 2)
    key = {"Idempotency-Key": "same"}
    first = client.post("/v1/datasets", files={"file": ("d.npz", body)}, headers=key)
    assert first.status_code == 201
    monkeypatch.setattr(route, "parse_in_sandbox", lambda *a, **k: (_ for _ in ()).throw(AssertionError("parsed")))
    again = client.post("/v1/datasets", files={"file": ("d.npz", body)}, headers=key)
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]


def _vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def test_the_api_process_does_not_hold_the_upload_and_keeps_answering(live_stack):
    """A 32 MiB .npz and a CSV that takes the child seconds: the API's peak RSS grows by far less than
    the upload (it streams it to disk; the child parses), and /healthz answers fast meanwhile."""
    with live_stack.client(timeout=120) as c:
        assert (
            c.post("/v1/datasets", files={"file": ("s.npz", npz_bytes(X=np.ones((4, 2)), Y=np.ones(4)))}).status_code
            == 201
        )  # the fork server and the route are warm
        pid = live_stack.api.pid
        before = _vm_hwm_kib(pid)
        X = np.random.default_rng(0).normal(size=(32 * MiB // 8 // 64, 64))
        resp = c.post("/v1/datasets", files={"file": ("big.npz", npz_bytes(X=X, Y=(X[:, 0] > 0).astype(int)))})
        assert resp.status_code == 201, resp.text
        grown_kib = _vm_hwm_kib(pid) - before
        assert grown_kib < 8 * 1024, f"API peak RSS grew {grown_kib} KiB for a 32 MiB upload"

        rng = np.random.default_rng(1)
        rows = rng.normal(size=(200_000, 10)).round(4)
        text = io.StringIO()
        np.savetxt(
            text,
            np.column_stack([rows, rows[:, 0] > 0]),
            delimiter=",",
            fmt="%g",
            header=",".join([f"f{i}" for i in range(10)] + ["y"]),
            comments="",
        )
        body = text.getvalue().encode()
        done, result = threading.Event(), {}

        def post():
            with httpx.Client(base_url=live_stack.base_url, timeout=120) as other:
                result["resp"] = other.post("/v1/datasets", files={"file": ("slow.csv", body)})
            done.set()

        threading.Thread(target=post, daemon=True).start()
        latencies = []
        while not done.is_set():
            start = time.perf_counter()
            assert c.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.02)
        assert result["resp"].status_code == 201, result["resp"].text
        assert len(latencies) >= 5
        latencies.sort()
        assert latencies[len(latencies) // 2] < 0.1, latencies[-5:]
