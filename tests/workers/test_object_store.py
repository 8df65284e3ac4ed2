"""ObjectArtifactStore against a real S3 server (moto's, tests/s3.py): the ArtifactStore contract,
atomic replace, range reads of one version, multipart uploads, the dataset cache, and configuration
errors that say what to fix."""

from __future__ import annotations

import base64
import hashlib
import os
import threading

import numpy as np
import pytest

from dnnq.workers import datasets, object_store
from dnnq.workers.artifact_store import ArtifactStore, InvalidKey, StoreConfigError, StoreUnavailable, open_store
from dnnq.workers.object_store import MULTIPART_CHUNK, ObjectArtifactStore, parse_artifacts_url
from dnnq.workers.settings import WorkerSettings


@pytest.fixture
def s3(s3_server, s3_env, monkeypatch, tmp_path) -> ObjectArtifactStore:
    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)
    store = open_store(WorkerSettings(artifacts_url=s3_env["DNNQ_ARTIFACTS_URL"], data_dir=tmp_path / "scratch"))
    assert isinstance(store, ObjectArtifactStore)
    store.check()
    return store


def test_is_an_artifact_store(s3):
    assert isinstance(s3, ArtifactStore)
    assert s3.local_path("jobs/x/weights.npz") is None


def test_put_get_replace_delete(s3, s3_server):
    data = b"first version"
    assert s3.put("jobs/abc/weights.npz", data) == hashlib.sha256(data).hexdigest()
    assert s3.exists("jobs/abc/weights.npz")
    assert s3.get("jobs/abc/weights.npz") == data
    assert s3.put("jobs/abc/weights.npz", b"second") == hashlib.sha256(b"second").hexdigest()
    assert s3.get("jobs/abc/weights.npz") == b"second"
    assert f"{s3.prefix}/jobs/abc/weights.npz" in s3_server.keys(s3.bucket)  # under the URL's prefix
    s3.delete("jobs/abc/weights.npz")
    assert not s3.exists("jobs/abc/weights.npz")
    s3.delete("jobs/abc/weights.npz")  # absent: no error


def test_missing_key(s3):
    with pytest.raises(KeyError):
        s3.get("jobs/nope/model.json")
    with pytest.raises(KeyError):
        s3.open_read("jobs/nope/model.json")
    with pytest.raises(KeyError):
        s3.stream("jobs/nope/model.json")
    assert not s3.exists("jobs/nope/model.json")


def test_keys_are_validated(s3):
    for bad in ("../x", "/abs", "a//b", "a/./b", ".staging/x"):
        with pytest.raises(InvalidKey):
            s3.put(bad, b"x")


def test_open_read_seeks_with_range_reads(s3):
    data = os.urandom(1_000_000)
    s3.put("datasets/blob.npz", data)
    with s3.open_read("datasets/blob.npz") as f:
        f.seek(999_990)
        assert f.read() == data[999_990:]
        f.seek(10)
        assert f.read(5) == data[10:15]
        f.seek(-3, os.SEEK_END)
        assert f.read(10) == data[-3:]


def test_open_read_never_mixes_two_versions(s3):
    s3.put("datasets/v.npz", b"a" * 600_000)
    with s3.open_read("datasets/v.npz") as f:
        assert f.read(10) == b"a" * 10
        s3.put("datasets/v.npz", b"b" * 600_000)
        f.seek(500_000)  # outside the buffer: a new range GET, refused (If-Match on the old ETag)
        with pytest.raises(OSError, match="replaced while being read"):
            f.read(10)


@pytest.fixture
def sent(s3):
    """sent(operation): the headers of each `operation` request the store's client sends during the test."""
    events, handlers = s3._client.meta.events, []

    def watch(operation: str, fail_part: int | None = None) -> list[dict[str, str]]:
        seen: list[dict[str, str]] = []

        def handler(request, **_):
            headers = {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
            seen.append(headers)
            if fail_part is not None and f"partNumber={fail_part}&" in request.url + "&":
                raise ConnectionResetError("the test cut this part's connection")

        name = f"before-send.s3.{operation}"
        events.register(name, handler)
        handlers.append((name, handler))
        return seen

    yield watch
    for name, handler in handlers:  # the client is this process's, shared with later tests
        events.unregister(name, handler)


def _b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_put_file_is_one_put_carrying_its_sha256(s3, sent):
    puts, parts = sent("PutObject"), sent("UploadPart")
    path = s3.new_staging_path(".npz")
    data = os.urandom(2 * MULTIPART_CHUNK + 12345)
    path.write_bytes(data)
    assert s3.put_file("datasets/big.npz", path) == hashlib.sha256(data).hexdigest()
    assert not path.exists()
    assert len(puts) == 1 and parts == []
    # the store checks the body against the signed checksum header; the body itself is not hashed to sign it
    assert puts[0]["x-amz-checksum-sha256"] == _b64_sha256(data)
    assert puts[0]["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    size, chunks = s3.stream("datasets/big.npz")
    assert size == len(data)
    assert b"".join(chunks) == data


def test_put_carries_its_sha256(s3, sent):
    puts = sent("PutObject")
    assert s3.put("jobs/j/model.json", b"{}") == hashlib.sha256(b"{}").hexdigest()
    assert [p["x-amz-checksum-sha256"] for p in puts] == [_b64_sha256(b"{}")]


def test_put_file_above_single_put_max_is_multipart_with_checksummed_parts(s3, sent, monkeypatch):
    monkeypatch.setattr(object_store, "SINGLE_PUT_MAX", MULTIPART_CHUNK)
    parts = sent("UploadPart")
    path = s3.new_staging_path(".npz")
    data = os.urandom(2 * MULTIPART_CHUNK + 12345)
    path.write_bytes(data)
    assert s3.put_file("datasets/big.npz", path) == hashlib.sha256(data).hexdigest()
    assert not path.exists()
    chunks = [data[i : i + MULTIPART_CHUNK] for i in range(0, len(data), MULTIPART_CHUNK)]
    assert sorted(p["x-amz-checksum-sha256"] for p in parts) == sorted(_b64_sha256(c) for c in chunks)
    assert s3._head("datasets/big.npz")["ETag"].endswith('-3"')  # completed from 3 parts
    size, body = s3.stream("datasets/big.npz")
    assert size == len(data)
    assert b"".join(body) == data


def test_a_failed_multipart_upload_leaves_no_object_and_no_upload_in_progress(s3, s3_server, sent, monkeypatch):
    monkeypatch.setattr(object_store, "SINGLE_PUT_MAX", MULTIPART_CHUNK)
    s3.retry_seconds = 0.5
    parts = sent("UploadPart", fail_part=2)
    path = s3.new_staging_path(".npz")
    path.write_bytes(os.urandom(2 * MULTIPART_CHUNK + 12345))
    with pytest.raises(StoreUnavailable, match="failed PUT 'datasets/cut.npz'"):
        s3.put_file("datasets/cut.npz", path)
    assert len(parts) >= 2  # parts went up before the cut one failed
    assert path.exists()  # not consumed: the caller's to remove
    assert not s3.exists("datasets/cut.npz")
    assert s3_server.multipart_uploads(s3.bucket) == []  # each attempt's upload was aborted


def test_delete_prefix(s3):
    for name in ("weights.npz", "model.json", "checkpoint.npz"):
        s3.put(f"jobs/j1/{name}", b"x")
    s3.put("jobs/j10/weights.npz", b"y")  # shares the characters, not the prefix
    with pytest.raises(InvalidKey, match="must end with '/'"):
        s3.delete_prefix("jobs/j1")
    assert s3.delete_prefix("jobs/j1/") == 3
    assert not s3.exists("jobs/j1/model.json")
    assert s3.exists("jobs/j10/weights.npz")


def test_presigned_url_serves_the_object(s3):
    import httpx

    s3.put("jobs/j2/weights.npz", b"signed bytes")
    url = s3.presigned_url("jobs/j2/weights.npz", 60)
    assert url and "X-Amz-Signature" in url
    assert httpx.get(url).content == b"signed bytes"


def test_datasets_load_through_the_cache_once(s3, redis_client, tmp_path):
    X = np.arange(60, dtype=np.float32).reshape(20, 3)
    Y = (np.arange(20) % 2).astype(np.float32)
    rec = datasets.save_dataset(
        redis_client, s3, tenant="public", name="t", source="test", X=X, Y=Y, label_kind="binary"
    )
    calls = []
    original = s3._download
    s3._download = lambda key, out: (calls.append(key), original(key, out))  # type: ignore[method-assign]
    for _ in range(3):
        X2, Y2 = datasets.load_arrays(s3, rec["id"], rec["sha256"])
        np.testing.assert_array_equal(X2, X)
        np.testing.assert_array_equal(Y2[:, 0], Y)
    assert calls == [f"datasets/{rec['id']}.npz"]  # downloaded once
    cached = list((tmp_path / "scratch" / "cache" / "datasets").glob("*.cached"))
    assert len(cached) == 1
    prev_X, _ = datasets.read_preview(s3, rec["id"], 5, 2)  # the API's preview: range reads
    np.testing.assert_array_equal(prev_X, X[:5, :2])


def test_cache_refuses_a_copy_with_another_checksum(s3):
    s3.put("datasets/aaaaaaaaaaaaaaaaaaaaaaaa.npz", b"not what the record says")
    with pytest.raises(OSError, match="sha256"):
        s3.open_cached("datasets/aaaaaaaaaaaaaaaaaaaaaaaa.npz", "0" * 64)


def test_cache_is_bounded_lru_and_shared_by_threads(s3, tmp_path):
    from dnnq.workers.dataset_cache import DatasetCache

    cache = DatasetCache(tmp_path / "c", max_bytes=250)
    blobs = {f"datasets/{i}.npz": bytes([i]) * 100 for i in range(4)}
    for key, data in blobs.items():
        s3.put(key, data)
    sha = {k: hashlib.sha256(v).hexdigest() for k, v in blobs.items()}
    fills = []

    def fill(key):
        def run(out):
            fills.append(key)
            out.write(s3.get(key))

        return run

    results = []

    def read(key):
        with cache.open(key, sha[key], fill(key)) as f:
            results.append(f.read() == blobs[key])

    threads = [threading.Thread(target=read, args=("datasets/0.npz",)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 4 and fills == ["datasets/0.npz"]  # four readers, one download
    for key in ("datasets/1.npz", "datasets/2.npz", "datasets/3.npz"):
        read(key)
    names = sorted(p.name for _, _, p in cache.entries())
    assert len(names) == 2 and all(n.startswith(("datasets__2", "datasets__3")) for n in names)  # 0 and 1 evicted


@pytest.mark.parametrize(
    "url, message",
    [
        ("http://bucket/x", "not an object-store URL"),
        ("gs://bucket/x", "not an object-store URL"),
        ("s3://", "names no valid bucket"),
        ("s3://Bad_Bucket/x", "names no valid bucket"),
        ("s3://bucket/a//b", "odd parts"),
        ("s3://bucket/x?region=eu", "query"),
    ],
)
def test_malformed_urls(url, message):
    with pytest.raises(StoreConfigError, match=message):
        parse_artifacts_url(url)


def test_missing_bucket_and_dead_endpoint(s3_server, monkeypatch, tmp_path, dead_port):
    env = s3_server.env("no-such-bucket")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(StoreConfigError, match="bucket 'no-such-bucket' does not exist"):
        ObjectArtifactStore(env["DNNQ_ARTIFACTS_URL"], tmp_path).check()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{dead_port}")
    with pytest.raises(StoreConfigError, match="does not answer: check AWS_ENDPOINT_URL"):
        ObjectArtifactStore(env["DNNQ_ARTIFACTS_URL"], tmp_path).check()
    store = ObjectArtifactStore(env["DNNQ_ARTIFACTS_URL"], tmp_path, retry_seconds=0.5)
    with pytest.raises(StoreUnavailable, match=r"failed PUT 'jobs/x/checkpoint.npz' \(retried for 0.5 s\)") as info:
        store.put("jobs/x/checkpoint.npz", b"x")
    assert "\n" not in str(info.value)


def test_wrong_credentials(tmp_path, monkeypatch):
    from tests.s3 import MotoServer

    server = MotoServer(tmp_path / "moto-auth.log", auth=True)
    try:
        for k, v in server.env("somebucket").items():
            monkeypatch.setenv(k, v)
        with pytest.raises(StoreConfigError, match="refused the credentials.*AWS_ACCESS_KEY_ID"):
            ObjectArtifactStore("s3://somebucket/p", tmp_path).check()
    finally:
        server.stop()


def _child_reads(store, queue):
    queue.put(store.get("jobs/fork/weights.npz"))


def test_a_child_forked_after_the_parent_used_the_store_can_use_it(s3):
    """Celery's prefork pool forks new children from a parent that has used the store (its start-up
    check, the sweeper's housekeeping): the child must not hang on the parent's client."""
    import multiprocessing

    s3.put("jobs/fork/weights.npz", b"from the parent")
    assert s3.get("jobs/fork/weights.npz") == b"from the parent"
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_reads, args=(s3, queue))
    child.start()
    child.join(30)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung on the store")
    assert child.exitcode == 0
    assert queue.get(timeout=5) == b"from the parent"
