"""The Python SDK against the real stack: Redis, a `python -m dnnq.workers` process and the API served
by uvicorn, over real HTTP (tests/service/conftest.py `live_stack`)."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest

from dnnq import Client, Conflict, InvalidRequest, Job, NotFound
from dnnq.cli import main
from dnnq.models import predict

pytestmark = pytest.mark.e2e


def _moons(m: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    t = rng.uniform(0, np.pi, m)
    upper = rng.random(m) < 0.5
    X = np.where(upper[:, None], np.c_[np.cos(t), np.sin(t)], np.c_[1 - np.cos(t), 0.5 - np.sin(t)])
    X += rng.normal(0, 0.1, X.shape)
    return X, upper.astype(np.float64)


def test_upload_submit_wait_history_weights_download_predict_delete(live_stack, tmp_path):
    X, Y = _moons()
    with Client(live_stack.base_url) as client:
        data = client.upload(X=X, Y=Y, name="moons")
        assert (data.n_examples, data.n_features, data.label_kind) == (200, 2, "binary")
        assert client.dataset(data.id) == data and data in client.datasets()

        job = client.submit(dataset=data, hidden_layers=[8, 4], epochs=30, learning_rate=0.05, device="cpu", seed=1)
        assert isinstance(job, Job) and job.status in ("queued", "running", "succeeded")
        seen: list[dict] = []
        assert job.wait(timeout=120, on_epoch=seen.append) is job
        assert job.status == "succeeded" and job.progress["epoch"] == 30
        epochs = [entry["epoch"] for entry in seen]
        # each epoch once, in order, up to the last (none if the job ended before wait began)
        assert epochs == sorted(set(epochs)) and (not epochs or epochs[-1] == 30)

        history = job.history
        np.testing.assert_array_equal(history.epoch, np.arange(1, 31))
        assert history.loss.dtype == np.float64 and np.isfinite(history.loss).all()
        assert history["loss"][-1] == pytest.approx(job.metrics["final_loss"])

        weights = job.weights()
        assert sorted(weights) == ["W1", "W2", "W3", "b1", "b2", "b3"] and weights["W1"].shape == (8, 2)
        saved = job.download(str(tmp_path / "w.npz"))  # a str path
        with np.load(saved) as npz:
            for name in weights:
                np.testing.assert_array_equal(npz[name], weights[name])
        assert job.download(tmp_path / "w.onnx", format="onnx").stat().st_size > 0

        expected = predict(weights, X.T, hidden_activation="relu", output="sigmoid")
        result = job.predict(X)
        np.testing.assert_array_equal(result.predictions, expected)
        assert result.probabilities.shape == (200, 1)  # rows x outputs, sigmoid too
        assert np.mean(result.predictions == Y) == pytest.approx(job.metrics["train_accuracy"], abs=1e-6)
        assert result.labels == [float(k) for k in expected]  # the dataset's labels: 0.0 and 1.0
        np.testing.assert_array_equal(job.predict(X[0]).predictions, expected[:1])  # one row as 1-D

        # typed errors, each with the status, the detail and the problem+json body
        with pytest.raises(NotFound) as missing:
            client.job("f" * 32)
        assert missing.value.status == 404 and missing.value.problem["status"] == 404
        with pytest.raises(Conflict) as conflict:
            job.cancel()
        assert conflict.value.status == 409 and "succeeded" in conflict.value.detail
        with pytest.raises(InvalidRequest) as invalid:
            client.submit(dataset=data, learning_rate=-1)
        assert invalid.value.status == 422 and "learning_rate" in str(invalid.value)
        assert any(e["field"] == "training.learning_rate" for e in invalid.value.problem["errors"])
        with pytest.raises(InvalidRequest, match="features"):
            job.predict(np.zeros((3, 5)))

        job.delete()
        with pytest.raises(NotFound):
            job.refresh()
        data.delete()
        with pytest.raises(NotFound):
            client.dataset(data.id)


def test_wait_times_out_and_a_running_job_cannot_be_deleted(live_stack):
    with Client(live_stack.base_url) as client:
        data = client.synthetic("moons", n_samples=2000, seed=3)
        job = client.submit(dataset=data, hidden_layers=[64, 64], epochs=100_000, batch_size=32, device="cpu")
        while not (job.refresh().status == "running" and job.progress["epoch"]):
            time.sleep(0.1)
        seen: list[dict] = []
        with pytest.raises(TimeoutError):
            job.wait(timeout=2, on_epoch=seen.append)
        epochs = [entry["epoch"] for entry in seen]
        assert epochs and epochs == sorted(set(epochs)) and all("loss" in e for e in seen)
        with pytest.raises(Conflict) as conflict:
            job.delete()
        assert conflict.value.status == 409 and "cancel" in conflict.value.detail
        assert job.cancel().status in ("cancelling", "cancelled")
        assert job.wait(timeout=60).status == "cancelled"


def test_class_labels_from_a_csv_in_the_sdk_and_the_cli(live_stack, tmp_path, capsys):
    X, Y = _moons()
    csv = tmp_path / "pets.csv"
    rows = [f"{a:.6f},{b:.6f},{'dog' if y else 'cat'}" for (a, b), y in zip(X, Y, strict=True)]
    csv.write_text("x1,x2,pet\n" + "\n".join(rows) + "\n")
    with Client(live_stack.base_url) as client:
        data = client.upload(csv)
        assert data.classes == ["cat", "dog"]
        job = client.submit(dataset=data, hidden_layers=[8], epochs=40, learning_rate=0.05, device="cpu", seed=1)
        assert job.wait(timeout=120).status == "succeeded"
        result = job.predict(X[:10])
        assert result.labels == [["cat", "dog"][k] for k in result.predictions]
    np.save(tmp_path / "x.npy", X[:10])
    assert main(["--url", live_stack.base_url, "predict", job.id, str(tmp_path / "x.npy")]) == 0
    assert capsys.readouterr().out.split() == result.labels  # cat/dog, not 0/1


def test_the_course_test_set_predicts_in_one_call(live_stack, tmp_path, capsys, monkeypatch):
    """50 rows x 12,288 features (the course's 64x64x3 images): ~5 MB as float64, ~2.7 MB as JSON,
    over the 1 MB JSON limit. The SDK and the CLI each send them as one .npy request."""
    rng = np.random.default_rng(7)
    X_train = rng.integers(0, 256, (60, 64, 64, 3)).astype(np.uint8)
    Y_train = (rng.random(60) < 0.5).astype(np.float64)
    X_test = rng.random((50, 12288)) * 255  # float64
    predicts: list[httpx.Request] = []
    send = httpx.Client.send

    def counting_send(self, request, **kwargs):
        if request.url.path.endswith("/predict"):
            predicts.append(request)
        return send(self, request, **kwargs)

    monkeypatch.setattr(httpx.Client, "send", counting_send)
    with Client(live_stack.base_url) as client:
        data = client.upload(X=X_train.reshape(60, -1), Y=Y_train, name="cats")
        job = client.submit(dataset=data, hidden_layers=[4], epochs=2, scale=1 / 255, device="cpu")
        assert job.wait(timeout=120).status == "succeeded"
        assert client.limits()["max_json_body_bytes"] < len(json.dumps(X_test.tolist()))

        result = job.predict(X_test)
        assert len(predicts) == 1 and predicts[0].headers["content-type"] == "application/x-npy"
        assert result.predictions.shape == (50,) and result.probabilities.shape == (50, 1)
        weights = job.weights()
    expected = predict(weights, X_test.T / 255, hidden_activation="relu", output="sigmoid")
    np.testing.assert_array_equal(result.predictions, expected)

    np.save(tmp_path / "test_x.npy", X_test.reshape(50, 64, 64, 3))  # as the course keeps its images
    predicts.clear()
    assert main(["predict", job.id, str(tmp_path / "test_x.npy"), "--json", "--url", live_stack.base_url]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(predicts) == 1
    assert out["predictions"] == expected.tolist() and np.asarray(out["probabilities"]).shape == (50, 1)


def test_wait_polls_when_the_keys_event_streams_are_all_open(live_stack_factory, live_stack_env):
    """A 429 on the event stream (DNNQ_MAX_STREAMS_PER_TENANT reached, here 1, held by another stream)
    makes wait() poll instead of raising."""
    stack = live_stack_factory(env={**live_stack_env, "DNNQ_MAX_STREAMS_PER_TENANT": "1"})
    X, Y = _moons()
    with Client(stack.base_url) as client:
        data = client.upload(X=X, Y=Y, name="moons")
        held = client.submit(dataset=data, hidden_layers=[4], device="gpu", wait_for_worker=True)  # never runs here
        job = client.submit(dataset=data, hidden_layers=[4], epochs=200, device="cpu")
        with (
            httpx.Client(base_url=stack.base_url, timeout=30) as raw,
            raw.stream("GET", f"/v1/jobs/{held.id}/events") as stream,
        ):
            assert stream.status_code == 200
            assert raw.get(f"/v1/jobs/{job.id}/events").status_code == 429
            assert job.wait(timeout=120, poll_interval=0.1) is job
        assert job.status == "succeeded"
