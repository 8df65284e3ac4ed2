"""The dnnq client commands against the real stack: Redis, a `python -m dnnq.workers` process and the
API served by uvicorn, over real HTTP (tests/service/conftest.py `live_stack`)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from dnnq.cli import main
from dnnq.models import predict

pytestmark = pytest.mark.e2e


def run(capsys, *argv, url):
    """main(argv) -> (exit code, stdout, stderr); --url before the command (the unit tests put it after)."""
    code = main(["--url", url, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _moons(tmp_path, m=200):
    rng = np.random.default_rng(0)
    t = rng.uniform(0, np.pi, m)
    upper = rng.random(m) < 0.5
    X = np.where(upper[:, None], np.c_[np.cos(t), np.sin(t)], np.c_[1 - np.cos(t), 0.5 - np.sin(t)])
    X += rng.normal(0, 0.1, X.shape)
    Y = upper.astype(np.float64).reshape(-1, 1)
    path = tmp_path / "moons.npz"
    np.savez(path, X=X, Y=Y)
    return path, X, Y


def test_upload_submit_watch_status_download_predict(live_stack, tmp_path, capsys):
    url = live_stack.base_url
    path, X, Y = _moons(tmp_path)

    code, out, err = run(capsys, "datasets", "upload", str(path), "--name", "moons", "--json", url=url)
    assert code == 0, err
    dataset = json.loads(out)
    assert (dataset["n_examples"], dataset["n_features"], dataset["label_kind"]) == (200, 2, "binary")

    code, out, _ = run(capsys, "datasets", "list", url=url)
    assert code == 0 and dataset["id"] in out and "200 examples x 2 features" in out

    code, out, err = run(
        capsys,
        "submit",
        "--dataset",
        dataset["id"],
        "--hidden",
        "8,4",
        "--epochs",
        "30",
        "--lr",
        "0.05",
        "--device",
        "cpu",
        "--seed",
        "1",
        "-q",
        url=url,
    )
    assert code == 0, err
    job_id = out.strip()
    assert len(job_id) == 32

    code, out, err = run(capsys, "watch", job_id, url=url)
    assert code == 0, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"job {job_id}: succeeded, epoch 30/30, loss ")
    assert err.count("\n") == 1 or "30/30 loss" in err  # a job that ended before `watch` began has no bar

    code, out, err = run(capsys, "status", job_id, "--json", url=url)
    assert code == 0, err
    job = json.loads(out)
    assert job["status"] == "succeeded" and job["progress"]["epoch"] == 30
    accuracy = job["metrics"]["train_accuracy"]
    assert len(job["celery_task_id"]) == 36  # the Celery task (a UUID) that delivered it
    code, out, err = run(capsys, "status", job_id, url=url)
    assert code == 0 and f"  celery_task_id: {job['celery_task_id']}" in out, out + err

    code, out, err = run(capsys, "list", "--status", "succeeded", url=url)
    assert code == 0 and f"job {job_id}: succeeded" in out

    weights = tmp_path / "w.npz"
    code, out, err = run(capsys, "download", job_id, "-o", str(weights), url=url)
    assert code == 0, err
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert f"sha256 {digest} (matches the server's ETag)" in out
    with np.load(weights, allow_pickle=False) as npz:
        params = {k: npz[k] for k in npz.files}
    labels = predict(params, X.T, hidden_activation="relu", output="sigmoid")
    assert np.mean(labels == Y[:, 0]) == pytest.approx(accuracy, abs=1e-6)

    st = tmp_path / "w.safetensors"
    code, _, err = run(capsys, "download", job_id, "--format", "safetensors", "-o", str(st), url=url)
    assert code == 0, err
    for name, array in load_file(str(st)).items():
        np.testing.assert_array_equal(array, params[name])

    inputs = tmp_path / "inputs.csv"
    np.savetxt(inputs, X[:25], delimiter=",", header="x1,x2", comments="")
    code, out, err = run(capsys, "predict", job_id, str(inputs), url=url)
    assert code == 0, err
    assert [float(v) for v in out.split()] == labels[:25].tolist()
    code, out, err = run(capsys, "predict", job_id, str(inputs), "--chunk", "10", "--json", url=url)
    assert code == 0, err
    chunked = json.loads(out)  # three requests of 10, 10 and 5 rows, joined in order
    assert chunked["predictions"] == labels[:25].tolist() and len(chunked["probabilities"]) == 25

    code, out, err = run(capsys, "cancel", job_id, url=url)
    assert code == 1 and out == ""
    assert err.startswith("dnnq: error: ") and err.rstrip().endswith("(409)") and err.count("\n") == 1


def test_cancel_a_running_job_and_watch_exits_1(live_stack, tmp_path, capsys):
    url = live_stack.base_url
    code, out, err = run(
        capsys, "datasets", "synthetic", "moons", "--n-samples", "2000", "--seed", "3", "--json", url=url
    )
    assert code == 0, err
    dataset_id = json.loads(out)["id"]
    code, out, err = run(
        capsys,
        "submit",
        "--dataset",
        dataset_id,
        "--hidden",
        "64,64",
        "--epochs",
        "100000",
        "--batch-size",
        "32",
        "--device",
        "cpu",
        "-q",
        url=url,
    )
    assert code == 0, err
    job_id = out.strip()

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = json.loads(run(capsys, "status", job_id, "--json", url=url)[1])
        if status["status"] == "running" and (status["progress"] or {}).get("epoch"):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"job never ran: {status}")

    # `dnnq watch` in its own process: its bar appears, then the cancel ends it with exit code 1.
    watch = subprocess.Popen(
        [sys.executable, "-m", "dnnq", "watch", job_id, "--url", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = watch.stderr.readline()
        assert first.startswith("[") and "/100000 loss " in first and " ETA " in first, first

        code, out, err = run(capsys, "delete", job_id, url=url)  # still running: refused, nothing deleted
        assert code == 1 and "409" in err and "cancel" in err, err
        code, out, err = run(capsys, "datasets", "delete", dataset_id, url=url)  # in use by the running job
        assert code == 1 and "409" in err, err

        code, out, err = run(capsys, "cancel", job_id, url=url)
        assert code == 0, err
        assert out.startswith(f"job {job_id}: cancel")

        assert watch.wait(60) == 1
        assert watch.stderr.read().strip().splitlines()[-1].startswith(f"job {job_id}: cancelled")
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()

    # ended: `dnnq delete` removes the job, then its dataset can go; both are gone afterwards
    assert run(capsys, "delete", job_id, url=url)[:2] == (0, f"job {job_id} deleted\n")
    code, out, err = run(capsys, "status", job_id, url=url)
    assert code == 1 and f"job '{job_id}' not found (404)" in err, err
    assert run(capsys, "datasets", "delete", dataset_id, "--json", url=url)[:2] == (
        0,
        json.dumps({"deleted": dataset_id}, indent=2) + "\n",
    )
    code, out, err = run(capsys, "datasets", "delete", dataset_id, url=url)
    assert code == 1 and f"dataset '{dataset_id}' not found (404)" in err, err


def test_one_line_errors_from_the_real_api(live_stack, tmp_path, capsys):
    url = live_stack.base_url
    unknown = "f" * 32
    for argv in (
        ["status", unknown],
        ["watch", unknown],
        ["cancel", unknown],
        ["download", unknown, "-o", str(tmp_path / "x.npz")],
    ):
        code, out, err = run(capsys, *argv, url=url)
        assert code == 1
        assert err == f"dnnq: error: job '{unknown}' not found (404)\n"
    assert not (tmp_path / "x.npz").exists()

    code, out, err = run(capsys, "submit", "--dataset", "a" * 24, url=url)
    assert code == 1
    assert err.startswith("dnnq: error: ") and "dataset_id" in err and err.rstrip().endswith("(422)")

    bad = tmp_path / "bad.npz"
    np.savez(bad, X=np.zeros((5, 2)), Y=np.zeros((4, 1)))
    code, out, err = run(capsys, "datasets", "upload", str(bad), url=url)
    assert code == 1 and err.count("\n") == 1 and "(422)" in err


def test_api_keys(live_stack_factory, capsys):
    stack = live_stack_factory(env={"DNNQ_API_KEYS": "alice:k-alice,bob:k-bob"}, workers=0)
    url = stack.base_url
    code, out, err = run(capsys, "datasets", "list", url=url)
    assert code == 1
    assert err.endswith("(401): pass --api-key or set DNNQ_API_KEY\n")

    code, out, err = run(
        capsys, "datasets", "synthetic", "circles", "--n-samples", "50", "--json", "--api-key", "k-alice", url=url
    )
    assert code == 0, err
    dataset_id = json.loads(out)["id"]
    code, out, err = run(capsys, "datasets", "show", dataset_id, "--api-key", "k-bob", url=url)
    assert code == 1 and err == f"dnnq: error: dataset '{dataset_id}' not found (404)\n"


def test_csv_header_option_in_the_cli_and_the_sdk(live_stack, tmp_path, capsys):
    """--header auto|yes|no (and the SDK's header=) reach the upload route: a header-less numeric CSV is
    data under auto, an ambiguous first line (numbers, then a label word) is refused naming the option."""
    from dnnq import Client, InvalidRequest

    url = live_stack.base_url
    numeric, labelled = tmp_path / "numeric.csv", tmp_path / "pets.csv"
    numeric.write_text("0.5,1.5,1\n2,3,0\n4,5,1\n")
    labelled.write_text("1.0,2.0,cat\n3,4,dog\n5,6,cat\n")

    def upload(path, *flags):
        code, out, err = run(capsys, "datasets", "upload", str(path), "--json", *flags, url=url)
        return code, (json.loads(out) if code == 0 else err)

    assert upload(numeric)[1]["n_examples"] == 3  # auto: line 1 is numbers, so it is an example
    assert upload(numeric, "--header", "no")[1]["n_examples"] == 3
    assert upload(numeric, "--header", "yes")[1]["n_examples"] == 2
    code, err = upload(labelled)
    assert code == 1 and "header" in err and err.count("\n") == 1
    as_data = upload(labelled, "--header", "no")[1]
    assert (as_data["n_examples"], as_data["classes"]) == (3, ["cat", "dog"])
    assert upload(labelled, "--header", "yes")[1]["n_examples"] == 2
    with pytest.raises(SystemExit):
        main(["datasets", "upload", str(numeric), "--header", "maybe", "--url", url])
    assert "invalid choice: 'maybe'" in capsys.readouterr().err

    with Client(url) as client:
        assert client.upload(labelled, header="no", name="pets").n_examples == 3
        assert client.upload(str(labelled), header="yes").n_examples == 2
        with pytest.raises(InvalidRequest, match="header"):
            client.upload(labelled)
