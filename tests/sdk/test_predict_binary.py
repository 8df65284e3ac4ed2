"""POST /v1/jobs/{id}/predict with a binary body (.npy, .npz) from an untrusted client, and
GET /v1/limits, against the real stack: every bad body is a 4xx problem+json saying what is wrong."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from dnnq import Client

pytestmark = pytest.mark.e2e

NPY = {"Content-Type": "application/x-npy"}
NPZ = {"Content-Type": "application/x-npz"}
BODY_LIMIT = 256 * 1024


@pytest.fixture
def live_stack_env():
    return {"DNNQ_MAX_PREDICT_BODY_BYTES": str(BODY_LIMIT)}


def _npy(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, **kwargs)
    return buffer.getvalue()


def _npy_header(shape: tuple, descr: str = "<f8") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _zip_bomb() -> bytes:
    """An .npz whose X declares 8 MB of zeros (over the body limit) in a few KB."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("X.npy", _npy(np.zeros((500_000, 2))))
    return buffer.getvalue()


@pytest.fixture
def trained(live_stack):
    """(client, job, X): a sigmoid job on 2 features, and its training rows."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 2))
    Y = (X[:, 0] > 0).astype(np.float64)
    client = Client(live_stack.base_url)
    job = client.submit(dataset=client.upload(X=X, Y=Y), hidden_layers=[4], epochs=20, device="cpu")
    assert job.wait(timeout=120).status == "succeeded"
    yield client, job, X
    client.close()


def test_binary_bodies_predict_what_json_does(trained, live_stack):
    client, job, X = trained
    path = f"/v1/jobs/{job.id}/predict"
    with live_stack.client() as http:
        as_json = http.post(path, json={"inputs": X[:20].tolist()})
        assert as_json.status_code == 200, as_json.text
        expected = as_json.json()
        assert np.asarray(expected["probabilities"]).shape == (20, 1)  # rows x outputs for sigmoid
        for body, headers in [
            (_npy(X[:20]), NPY),
            (_npy(X[:20].astype(np.float32).astype(">f4")), NPY),  # big-endian float32
            (_npy(np.asfortranarray(X[:20])), NPY),
            (_npz(X=X[:20], other=np.zeros(3)), NPZ),
            (_npz(X=X[:20]), {"Content-Type": "application/zip"}),
        ]:
            res = http.post(path, content=body, headers=headers)
            assert res.status_code == 200, res.text
            assert res.json()["predictions"] == expected["predictions"]
            np.testing.assert_allclose(res.json()["probabilities"], expected["probabilities"], rtol=1e-6)

        limits_answer = http.get("/v1/limits")
        limits = limits_answer.json()
        # the limits also as headers, on GET /v1/limits and on every predict answer (200s and problems)
        stated = {
            "x-dnnq-max-json-body-bytes": limits["max_json_body_bytes"],
            "x-dnnq-max-predict-body-bytes": BODY_LIMIT,
            "x-dnnq-max-predict-examples": limits["max_predict_examples"],
            "x-dnnq-max-predict-input-values": BODY_LIMIT // 8,
            "x-dnnq-max-predict-values": limits["max_predict_values"],
        }
        for answer in (
            limits_answer,
            res,
            as_json,
            http.post(path, json={"inputs": "rows"}),  # FastAPI's validation of the JSON body: 422
            http.post(f"/v1/jobs/{'0' * 32}/predict", json={"inputs": [[1.0, 2.0]]}),  # 404
        ):
            assert {k: int(answer.headers[k]) for k in stated} == stated, (answer.status_code, dict(answer.headers))
    assert limits["max_predict_body_bytes"] == BODY_LIMIT
    assert limits["max_predict_input_values"] == BODY_LIMIT // 8
    assert {"application/json", "application/x-npy", "application/x-npz"} <= set(limits["predict_content_types"])
    # the SDK splits by those limits: 40,000 rows x 2 float64 = 640 KB, over the 256 KB body limit
    many = np.random.default_rng(1).normal(size=(40_000, 2))
    result = job.predict(many)
    assert result.predictions.shape == (40_000,) and result.probabilities.shape == (40_000, 1)
    np.testing.assert_array_equal(result.predictions[:20], job.predict(many[:20]).predictions)


HOSTILE = [  # (body, headers, status, a fragment of the detail)
    (_npy(np.array([[{"a": 1}, 2]], dtype=object), allow_pickle=True), NPY, 422, "never pickled objects"),
    (_npy_header((10**12, 2)) + b"\0" * 64, NPY, 413, "declares 2000000000000 values"),
    (_npy(np.zeros((10, 2)))[:-8], NPY, 422, "truncated"),
    (_npy(np.zeros((10, 2))) + b"\0" * 8, NPY, 422, "truncated or padded"),
    (_npy(np.array([[0.0, np.nan], [1.0, 2.0]])), NPY, 422, "row 0: NaN"),
    (_npy(np.array([[np.inf, 0.0]])), NPY, 422, "row 0: NaN or an infinite value"),
    (_npy(np.zeros((3, 2), dtype=np.complex128)), NPY, 422, "dtype is complex128"),
    (_npy(np.zeros(3, dtype=[("a", "<f8"), ("b", "<f8")])), NPY, 422, "send numbers"),
    (_npy(np.zeros((3, 5))), NPY, 422, "each example needs 2 features"),
    (_npy(np.float64(1.0)), NPY, 422, "send examples as rows"),
    (_npy(np.zeros((0, 2))), NPY, 422, "send examples as rows"),
    (_npy_header((-1, 2)), NPY, 422, "negative shape (-1, 2)"),
    (b"\x93NUMPY\x01\x00" + b"\xff" * 30, NPY, 422, "not a valid .npy"),
    (b"not numpy at all", NPY, 422, "not a valid .npy"),
    (_npz(Y=np.zeros((3, 2))), NPZ, 422, "no array 'X'"),
    (b"PK\x03\x04 broken", NPZ, 422, "not a valid .npz"),
    (_zip_bomb(), NPZ, 413, "declares 8000128 bytes uncompressed"),
    (_npy(np.zeros((40_000, 2))), NPY, 413, "larger than the limit of 262144 bytes"),
    (b"1,2\n3,4\n", {"Content-Type": "text/csv"}, 415, "is not accepted here"),
]


def test_hostile_bodies_are_4xx_problems(trained, live_stack):
    """One trained job for every case (training one per case would take minutes)."""
    _, job, _ = trained
    with live_stack.client() as http:
        for body, headers, status, fragment in HOSTILE:
            res = http.post(f"/v1/jobs/{job.id}/predict", content=body, headers=headers)
            assert (res.status_code, fragment in res.json()["detail"]) == (status, True), (fragment, res.text)
            assert res.headers["content-type"] == "application/problem+json"
            # the body limit's 413 (app.py's middleware) and the route's own problems state the limits too
            assert res.headers["x-dnnq-max-predict-body-bytes"] == str(BODY_LIMIT), (fragment, dict(res.headers))
        assert http.get("/healthz").status_code == 200
