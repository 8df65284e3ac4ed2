"""``python -m bench.store_overhead``: the object store's cost against the local artifact store.

In one run, two stacks on one Redis: each a real API (uvicorn) and a real worker, one on the local
store (DNNQ_DATA_DIR/artifacts), one on S3 (moto's standalone server on loopback, tests/s3.py,
DNNQ_ARTIFACTS_URL=s3://...). Rounds alternate the backends, medians of `--repeats`:

1. a 100 MB dataset upload through the API (an .npz of float32, new content each time: no dedup);
2. the course's cat job end to end: upload train_catvnoncat.h5 (/work/shared/data/catvnoncat, or
   synthetic pixels of its shape), submit [20, 7, 5] relu/sigmoid, gd 0.0075, float64, 2,500 epochs,
   wait for `succeeded`, download the weights;
3. a 100 MB weights download (a trained [5000, 5000, 1] network: 25 M float32 parameters), streamed
   through the API.

Goal (issue 16): each S3 figure within 1.5x of local. moto keeps objects in its own Python process's
memory, a stand-in for a real S3 a network hop away.

``--phases``: where a 100 MB upload's time goes, in this process on each store (no API, no worker): the
route's copy of the received bytes to staging with their sha256, the sandboxed parse that writes the
stored file, and the store's put_file (a rename on the local store, a PUT on S3); then the same bytes
into the S3 server by hand: a multipart upload's parts and its completion, against one PUT.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main"]

CAT_FILE = Path("/work/shared/data/catvnoncat/train_catvnoncat.h5")
GOAL = 1.5


def _cat_h5() -> tuple[bytes, str]:
    if CAT_FILE.exists():
        return CAT_FILE.read_bytes(), "the course's train_catvnoncat.h5"
    import h5py

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f["train_set_x"] = rng.integers(0, 256, size=(209, 64, 64, 3), dtype=np.uint8)
        f["train_set_y"] = rng.integers(0, 2, size=(209,), dtype=np.int64)
    return buf.getvalue(), "synthetic pixels of the cat file's shape (the file is absent)"


def _npz(X: np.ndarray, Y: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, X=X, Y=Y)
    return buf.getvalue()


class Stack:
    def __init__(self, name: str, redis_url: str, root: Path, env: dict[str, str]) -> None:
        from tests.conftest import ROOT  # noqa: F401  (the repository root on sys.path)
        from tests.faults.conftest import start_api, start_worker

        self.name = name
        data = root / name
        (data / "api").mkdir(parents=True)
        (data / "worker").mkdir()
        common = {"DNNQ_MAX_UPLOAD_BYTES": str(512 * 1024 * 1024), "DNNQ_WORKER_MEMORY_BYTES": str(8 * 1024**3)}
        self.api, self.base_url, _ = start_api(redis_url, data / "api", root / f"{name}-api.log", env={**env, **common})
        self.worker = start_worker(
            redis_url,
            data / ("worker" if env else "api"),  # the local store is one directory the API and worker share
            root,
            env={**env, **common, "DNNQ_LEASE_SECONDS": "60", "DNNQ_HEARTBEAT_SECONDS": "5"},
        )
        import httpx

        self.http = httpx.Client(base_url=self.base_url, timeout=600)

    def upload(self, name: str, body: bytes, **form: str) -> str:
        resp = self.http.post("/v1/datasets", files={"file": (name, body)}, data=form)
        assert resp.status_code in (200, 201), resp.text
        return str(resp.json()["id"])

    def train(self, spec: dict[str, Any]) -> str:
        resp = self.http.post("/v1/jobs", json=spec)
        assert resp.status_code == 202, resp.text
        job_id = str(resp.json()["id"])
        while True:
            job = self.http.get(f"/v1/jobs/{job_id}", params={"history": "none"}).json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                assert job["status"] == "succeeded", job
                return job_id
            time.sleep(0.05)

    def weights(self, job_id: str) -> int:
        with self.http.stream("GET", f"/v1/jobs/{job_id}/weights", params={"format": "npz"}) as resp:
            assert resp.status_code == 200, resp.read()
            return sum(len(chunk) for chunk in resp.iter_bytes())

    def close(self) -> None:
        self.http.close()
        self.worker.stop()
        self.api.terminate()
        with contextlib.suppress(Exception):
            self.api.wait(10)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.store_overhead", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2500, help="epochs of the cat job (the course's 2,500)")
    p.add_argument("--mb", type=int, default=100, help="size of the upload and of the weights, MB")
    p.add_argument("--phases", action="store_true", help="time an upload's phases on each store instead")
    args = p.parse_args(argv)
    if args.phases:
        return _phases(args.repeats, args.mb)

    from dnnq.workers.redis_server import start_redis
    from tests.s3 import MotoServer

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cat, cat_note = _cat_h5()
    with tempfile.TemporaryDirectory() as tmp, start_redis(Path(tmp) / "redis") as redis_server:
        root = Path(tmp)
        moto = MotoServer(root / "moto.log")
        stacks: list[Stack] = []
        try:
            stacks = [
                # one Redis database each: the queues too, so neither worker takes the other's jobs
                Stack("local", redis_server.url.rsplit("/", 1)[0] + "/1", root, {}),
                Stack("s3", redis_server.url.rsplit("/", 1)[0] + "/2", root, moto.env(moto.create_bucket())),
            ]
            results: dict[str, dict[str, list[float]]] = {s.name: {} for s in stacks}

            def timed(stack: Stack, what: str, fn: Callable[[], Any]) -> Any:
                t = time.perf_counter()
                out = fn()
                results[stack.name].setdefault(what, []).append(time.perf_counter() - t)
                return out

            big_jobs: dict[str, str] = {}
            wide = int((args.mb * 1e6 / 4) ** 0.5)  # [wide, wide, 1]: wide * wide float32, 100 MB at 5000
            for stack in stacks:  # not timed: the 100 MB network the download rounds fetch
                rng = np.random.default_rng(1)
                X = rng.normal(size=(16, wide)).astype(np.float32)
                ds = stack.upload("wide.npz", _npz(X, (X[:, 0] > 0).astype(np.int64)))
                big_jobs[stack.name] = stack.train(
                    {
                        "dataset_id": ds,
                        "model": {"hidden_layers": [wide]},
                        "training": {"epochs": 1, "optimizer": "gd", "seed": 1},
                    }
                )
            rows = args.mb * 1_000_000 // (4 * 250)
            for r in range(args.repeats):
                order = stacks if r % 2 == 0 else stacks[::-1]
                for stack in order:
                    X = np.random.default_rng(100 + r).normal(size=(rows, 250)).astype(np.float32)
                    body = _npz(X, (X[:, 0] > 0).astype(np.int64))
                    del X
                    timed(
                        stack,
                        f"upload {len(body) / 1e6:.0f} MB .npz",
                        lambda stack=stack, body=body, r=r: stack.upload(f"big{r}.npz", body),
                    )
                    del body

                    def cat_job(stack: Stack = stack) -> None:
                        ds = stack.upload("train_catvnoncat.h5", cat, x_key="train_set_x", y_key="train_set_y")
                        job = stack.train(
                            {
                                "dataset_id": ds,
                                "model": {
                                    "hidden_layers": [20, 7, 5],
                                    "hidden_activation": "relu",
                                    "output": "sigmoid",
                                },
                                "training": {
                                    "optimizer": "gd",
                                    "learning_rate": 0.0075,
                                    "epochs": args.epochs,
                                    "init": "xavier",
                                    "seed": 1,
                                    "dtype": "float64",
                                },
                                "preprocess": {"scale": 1 / 255},
                            }
                        )
                        stack.weights(job)

                    timed(stack, f"cat job end to end ({args.epochs} epochs)", cat_job)
                    n = timed(
                        stack, f"weights download {args.mb} MB", lambda stack=stack: stack.weights(big_jobs[stack.name])
                    )
                    assert n > args.mb * 1e6 * 0.95, n
        finally:
            for stack in stacks:
                stack.close()
            moto.stop()

    print(f"\nartifact store overhead, medians of {args.repeats} (alternating rounds); cat data: {cat_note}")
    print(f"{'':42} {'local s':>9} {'s3 s':>9} {'s3/local':>9}")
    worst = 0.0
    for what in results["local"]:
        a, b = statistics.median(results["local"][what]), statistics.median(results["s3"][what])
        worst = max(worst, b / a)
        print(f"{what:42} {a:9.3f} {b:9.3f} {b / a:9.2f}")
        rounds = zip(results["local"][what], results["s3"][what], strict=True)
        print(f"{'  rounds (local/s3)':42} " + "  ".join(f"{x:.2f}/{y:.2f}" for x, y in rounds))
    print(f"goal: every s3/local <= {GOAL}: {'met' if worst <= GOAL else 'NOT met'} (worst {worst:.2f})")
    command = ["python", "-m", "bench.store_overhead", *(argv if argv is not None else sys.argv[1:])]
    print(f"command: {shlex.join(command)}")
    return 0


def _phases(repeats: int, mb: int) -> int:
    """Time the upload route's phases (service/routes/datasets.py) on each store, medians of `repeats`."""
    import hashlib

    from dnnq.service.sandbox import parse_in_sandbox, warm
    from dnnq.service.uploads import UploadLimits
    from dnnq.workers.artifact_store import LocalArtifactStore
    from dnnq.workers.object_store import ObjectArtifactStore
    from tests.s3 import MotoServer

    times: dict[str, dict[str, list[float]]] = {"local": {}, "s3": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        moto = MotoServer(root / "moto.log")
        try:
            env = moto.env(moto.create_bucket())
            stores = {
                "local": LocalArtifactStore(root / "artifacts"),
                "s3": ObjectArtifactStore(env["DNNQ_ARTIFACTS_URL"], root / "scratch", environ=env),
            }
            stores["s3"].check()  # the client made, as an API's is at start-up
            warm()
            limits = UploadLimits(10**7, 10**6, 4 * mb * 10**6)
            for r in range(repeats):
                X = np.random.default_rng(100 + r).normal(size=(mb * 1_000_000 // 1000, 250)).astype(np.float32)
                body = _npz(X, (X[:, 0] > 0).astype(np.int64))
                del X
                for name, store in stores.items() if r % 2 == 0 else reversed(stores.items()):
                    upload, stored = store.new_staging_path(".upload"), store.new_staging_path(".npz")
                    t0 = time.perf_counter()
                    h = hashlib.sha256()
                    with open(upload, "xb") as out:  # the route's _stream_to, from memory
                        for i in range(0, len(body), 1 << 20):
                            h.update(body[i : i + (1 << 20)])
                            out.write(body[i : i + (1 << 20)])
                    t1 = time.perf_counter()
                    parse_in_sandbox(
                        "d.npz", upload, stored, limits, memory_bytes=8 * mb * 10**6, cpu_seconds=120, wall_seconds=300
                    )
                    t2 = time.perf_counter()
                    store.put_file(f"datasets/phase{r}.npz", stored)
                    t3 = time.perf_counter()
                    upload.unlink()
                    for what, dt in (("copy to staging + sha256", t1 - t0), ("sandboxed parse + write", t2 - t1)):
                        times[name].setdefault(what, []).append(dt)
                    times[name].setdefault("store put_file", []).append(t3 - t2)
                _raw_puts(stores["s3"], body, times["s3"])
        finally:
            moto.stop()
    print(f"\nphases of a {mb} MB .npz upload, medians of {repeats} (alternating order)")
    print(f"{'':36} {'local s':>9} {'s3 s':>9}")
    for what in times["s3"]:
        a = statistics.median(times["local"][what]) if what in times["local"] else float("nan")
        print(f"{what:36} {a:9.3f} {statistics.median(times['s3'][what]):9.3f}")
    return 0


def _raw_puts(store: Any, body: bytes, times: dict[str, list[float]]) -> None:
    """`body` into the S3 server with the store's client: 16 MiB multipart (parts, then the completion
    that makes it visible) against one PUT."""
    from dnnq.workers.object_store import MULTIPART_CHUNK

    client, bucket, key = store._client, store.bucket, f"{store.prefix}/bench/raw"
    t0 = time.perf_counter()
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    for n, at in enumerate(range(0, len(body), MULTIPART_CHUNK), 1):
        chunk = body[at : at + MULTIPART_CHUNK]
        etag = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=n, Body=chunk)["ETag"]
        parts.append({"PartNumber": n, "ETag": etag})
    t1 = time.perf_counter()
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
    t2 = time.perf_counter()
    client.put_object(Bucket=bucket, Key=key, Body=body)
    t3 = time.perf_counter()
    for what, dt in (
        ("raw: multipart parts (16 MiB)", t1 - t0),
        ("raw: multipart complete", t2 - t1),
        ("raw: one PUT", t3 - t2),
    ):
        times.setdefault(what, []).append(dt)


if __name__ == "__main__":
    sys.exit(main())
