"""``python -m bench.sweep_e2e``: a sweep of 8 learning rates of the course's cat model through the
service, packed (one POST /v1/sweeps: one worker trains the trials as one pack, workers/pack_runner.py)
against the same 8 specs as solo jobs submitted one after another (each waited for before the next).

It starts ``dnnq up --workers 1`` itself (embedded Redis, a tmp data dir, a free port), uploads the
course's 209 training images (bench/workloads.py `cat_images`: synthetic pixels of that shape when the
file or h5py is missing), trains one short job to warm the worker, then times each mode end to end
(from the first request to the last trial seen finished by polling), the modes alternating, and prints
the medians. The model: [12288, 20, 7, 5, 1], relu/sigmoid, full-batch gd, float64, 2,500 iterations.
Goal (issue 17): packed at least 4x faster end to end. Figures: docs/perf.md, 'Sweeps packed, end to end'.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.load import TERMINAL, start_stack
from bench.workloads import cat_images

LRS = [0.0025, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.0175, 0.02]
GOAL = 4.0


def spec(dataset_id: str, epochs: int, lr: float = 0.0075) -> dict:
    return {
        "dataset_id": dataset_id,
        "model": {"hidden_layers": [20, 7, 5], "hidden_activation": "relu", "output": "sigmoid"},
        "training": {"epochs": epochs, "learning_rate": lr, "optimizer": "gd", "dtype": "float64", "seed": 1},
        "device": "cpu",
    }


def upload_cat(http: httpx.Client) -> tuple[str, str]:
    X, y, source = cat_images("float64", 0)
    buf = io.BytesIO()
    np.savez(buf, X=X, Y=y)
    got = http.post("/v1/datasets", files={"file": ("cat.npz", buf.getvalue())}, timeout=120)
    got.raise_for_status()
    return got.json()["id"], source


def wait_job(http: httpx.Client, job_id: str, poll: float) -> dict:
    while True:
        job = http.get(f"/v1/jobs/{job_id}", params={"history": "none"}).json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(poll)


def run_solo(http: httpx.Client, dataset_id: str, epochs: int, poll: float) -> tuple[float, list[dict]]:
    t0 = time.perf_counter()
    done = []
    for lr in LRS:
        got = http.post("/v1/jobs", json=spec(dataset_id, epochs, lr))
        got.raise_for_status()
        done.append(wait_job(http, got.json()["id"], poll))
    return time.perf_counter() - t0, done


def run_packed(http: httpx.Client, dataset_id: str, epochs: int, poll: float) -> tuple[float, list[dict]]:
    t0 = time.perf_counter()
    got = http.post("/v1/sweeps", json={"base": spec(dataset_id, epochs), "grid": {"lr": LRS}})
    got.raise_for_status()
    sweep_id = got.json()["id"]
    while http.get(f"/v1/sweeps/{sweep_id}", params={"history": "none"}).json()["status"] != "finished":
        time.sleep(poll)
    seconds = time.perf_counter() - t0
    view = http.get(f"/v1/sweeps/{sweep_id}", params={"history": "none"}).json()
    return seconds, [http.get(f"/v1/jobs/{t['job_id']}", params={"history": "none"}).json() for t in view["trials"]]


def check(jobs: list[dict], mode: str) -> list[float]:
    bad = [j["status"] for j in jobs if j["status"] != "succeeded"]
    if bad:
        raise RuntimeError(f"{mode}: trials ended {bad}: {[j.get('error') for j in jobs]}")
    return [j["metrics"]["final_loss"] for j in jobs]


def _medians(timings: list[dict]) -> dict[str, float]:
    names = sorted({k for t in timings for k in t})
    return {k: round(statistics.median(t[k] for t in timings if k in t), 4) for k in names}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2500)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each mode (alternating); medians")
    parser.add_argument("--threads", type=int, default=2, help="BLAS threads of the worker")
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between a client's status polls")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    threads = str(args.threads)
    env = {"OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    times: dict[str, list[float]] = {"solo": [], "packed": []}
    losses: dict[str, list[float]] = {}
    timings: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        stack = start_stack(1, Path(tmp), env)
        try:
            with httpx.Client(base_url=stack.base_url, timeout=60) as http:
                dataset_id, source = upload_cat(http)
                run_solo_warm = http.post("/v1/jobs", json=spec(dataset_id, 5))
                wait_job(http, run_solo_warm.json()["id"], args.poll)  # the worker's first fit pays its imports
                for i in range(args.repeats):
                    order = ("packed", "solo") if i % 2 == 0 else ("solo", "packed")
                    for mode in order:
                        run = run_packed if mode == "packed" else run_solo
                        seconds, done = run(http, dataset_id, args.epochs, args.poll)
                        losses[mode] = check(done, mode)
                        if mode == "packed":
                            sizes = {int(j["timings"].get("pack_size", 1)) for j in done}
                            if sizes != {len(LRS)}:
                                raise RuntimeError(f"packed: the trials' pack sizes were {sizes}, not {len(LRS)}")
                        times[mode].append(seconds)
                        timings.setdefault(mode, []).extend(j["timings"] for j in done)
                        if not args.json:
                            print(f"  {mode:>6} run {i + 1}: {seconds:7.2f} s", flush=True)
        finally:
            stack.stop()
    same = all(
        abs(a - b) <= 1e-12 * abs(b) for a, b in zip(losses["packed"], losses["solo"], strict=True)
    )  # fmt: skip
    solo, packed = statistics.median(times["solo"]), statistics.median(times["packed"])
    result = {
        "data": source,
        "epochs": args.epochs,
        "trials": len(LRS),
        "repeats": args.repeats,
        "threads": args.threads,
        "solo_s": times["solo"],
        "packed_s": times["packed"],
        "solo_median_s": round(solo, 3),
        "packed_median_s": round(packed, 3),
        "speedup": round(solo / packed, 3),
        "goal": GOAL,
        "final_losses_equal": same,
        # the workers' own per-trial timings, medians by phase: where the end-to-end time goes
        "trial_timings": {m: _medians(t) for m, t in timings.items()},
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"data: {source}")
        print(f"8 trials x {args.epochs} iterations, {args.repeats} runs each, {args.threads} BLAS threads")
        print(f"solo one after another: median {solo:.2f} s; packed sweep: median {packed:.2f} s")
        for mode, phases in result["trial_timings"].items():
            print(f"  {mode} trial timings (medians): {phases}")
        print(f"speedup {solo / packed:.2f}x (goal {GOAL:.0f}x); final losses equal to 1e-12: {same}")
    return result


if __name__ == "__main__":
    main()
