"""``python -m bench.predict_body --url URL``: the course's test set (50 images of 64x64x3 pixels)
predicted over HTTP three ways, against a running ``dnnq up``: one binary .npy body of uint8 pixels
(what the SDK and ``dnnq predict test_x.npy`` send), one .npy body of float64, and JSON in requests
under the 1 MiB JSON limit. Trains a small job on random pixels first. Prints JSON: median wall
time per way over alternating rounds, requests and bytes sent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import httpx
import numpy as np

from dnnq import Client
from dnnq.wire import npy_bytes

__all__ = ["main"]


def _json_chunks(X: np.ndarray, limit: int) -> list[bytes]:
    """JSON bodies of as many rows as fit under `limit` bytes each."""
    rows = [json.dumps(row) for row in X.tolist()]
    bodies, current = [], []
    for row in rows:
        if current and len(",".join([*current, row])) + 20 > limit:
            bodies.append(('{"inputs": [' + ",".join(current) + "]}").encode())
            current = []
        current.append(row)
    bodies.append(('{"inputs": [' + ",".join(current) + "]}").encode())
    return bodies


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    X_train = rng.integers(0, 256, (209, 12288), dtype=np.uint8)
    Y_train = (rng.random(209) < 0.35).astype(np.float64)
    X_test = rng.integers(0, 256, (50, 64, 64, 3), dtype=np.uint8)
    with Client(args.url) as client, httpx.Client(base_url=args.url, timeout=120) as http:
        job = client.submit(
            dataset=client.upload(X=X_train, Y=Y_train),
            hidden_layers=[20, 7, 5],
            epochs=3,
            scale=1 / 255,
            wait_for_worker=True,
        )
        assert job.wait(timeout=600).status == "succeeded", job.data
        limit = client.limits()["max_json_body_bytes"]
        rows = X_test.reshape(50, -1)
        ways = {
            "npy_uint8": [(npy_bytes(rows), "application/x-npy")],
            "npy_float64": [(npy_bytes(rows.astype(np.float64)), "application/x-npy")],
            "json_under_limit": [(body, "application/json") for body in _json_chunks(rows, limit)],
        }
        times: dict[str, list[float]] = {way: [] for way in ways}
        answers = {}
        for _ in range(args.rounds):
            for way, bodies in ways.items():
                start = time.perf_counter()
                parts = []
                for body, ctype in bodies:
                    res = http.post(f"/v1/jobs/{job.id}/predict", content=body, headers={"Content-Type": ctype})
                    res.raise_for_status()
                    parts += res.json()["predictions"]
                times[way].append(time.perf_counter() - start)
                answers[way] = parts
        assert len({json.dumps(a) for a in answers.values()}) == 1  # the same 50 predictions every way
        job.delete()
    print(
        json.dumps(
            {
                way: {
                    "median_ms": round(statistics.median(times[way]) * 1e3, 1),
                    "requests": len(bodies),
                    "bytes": sum(len(b) for b, _ in bodies),
                }
                for way, bodies in ways.items()
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
