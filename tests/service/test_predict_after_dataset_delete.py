"""Deleting a training set (allowed once its jobs have finished) leaves its
succeeded jobs' models usable: predict takes the input width from the weights and the class names
from model.json, not from the deleted record (it answered 422 "needs 0 features", or a 500)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.service.test_api import live_worker  # noqa: F401  (fixture)
from tests.service.test_numbers_and_limits import succeeded_job


@pytest.fixture
def job_and_dataset(client, redis_client, store, live_worker):  # noqa: F811
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3))
    weights = {
        "W1": rng.normal(size=(4, 3)),
        "b1": np.zeros((4, 1)),
        "W2": rng.normal(size=(3, 4)),
        "b2": np.zeros((3, 1)),
    }
    job_id = succeeded_job(
        client, redis_client, store, X, np.arange(20) % 3, {"hidden_layers": [4], "output": "softmax"}, weights
    )
    dataset_id = client.get(f"/v1/jobs/{job_id}").json()["dataset_id"]
    store.put(f"jobs/{job_id}/model.json", json.dumps({"classes": [0, 1, 2]}).encode())
    return job_id, dataset_id


def test_predict_answers_the_same_after_its_training_set_is_deleted(client, job_and_dataset):
    job_id, dataset_id = job_and_dataset
    before = client.post(f"/v1/jobs/{job_id}/predict", json={"inputs": [[1, 2, 3], [0, 0, 1]]})
    assert before.status_code == 200, before.text
    assert client.delete(f"/v1/datasets/{dataset_id}").status_code == 204
    after = client.post(f"/v1/jobs/{job_id}/predict", json={"inputs": [[1, 2, 3], [0, 0, 1]]})
    assert after.status_code == 200, after.text
    assert after.json() == before.json()


def test_rows_of_no_features_are_a_422_after_the_delete(client, job_and_dataset):
    job_id, dataset_id = job_and_dataset
    assert client.delete(f"/v1/datasets/{dataset_id}").status_code == 204
    resp = client.post(f"/v1/jobs/{job_id}/predict", json={"inputs": [[]]})
    assert resp.status_code == 422, resp.text
    assert "needs 3 features" in resp.json()["detail"]
