"""``python -m bench.sweep_e2e``: a sweep of 8 learning rates of the course's cat model through the
service, packed (one POST /v1/sweeps: one worker trains the trials as one pack, workers/pack_runner.py)
against the same 8 specs as solo jobs submitted one after another (each waited for before the next).

It starts ``dnnq up --workers 1`` itself (embedded Redis, a tmp data dir, a free port), uploads the
course's 209 training images (bench/workloads.py `cat_images`: synthetic pixels of that shape when the
file or h5py is missing), trains one short job to warm the worker, then times each mode end to end
(from the first request to the last trial seen finished by polling), the modes alternating, and prints
the medians. The model: [12288, 20, 7, 5, 1], relu/sigmoid, full-batch gd, float64, 2,500 iterations.
Goal (issue 17): packed at least 4x faster end to end (10x on a GPU). Figures: docs/perf.md, 'Sweeps
packed, end to end' and 'Sweep and seed benches (issue 17, third session)'.

Beside them, the PyTorch reference: the same 8 learning rates as 8 plain PyTorch loops of the cat model
(bench/cat_model.py's ``torch_plain``, same initial weights), one after another in this process, timed
alone (no service around them). ``--device gpu``: the specs ask for device "gpu", the worker takes the
gpu queue (``dnnq up --queues default,gpu``) and PyTorch runs on CUDA when torch has it; without a
usable GPU the bench refuses in one line ("no GPU: ...") with exit status 2.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench import devices
from bench.load import TERMINAL, start_stack
from bench.workloads import Case, cat_images, workload_b

LRS = [0.0025, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.0175, 0.02]
GOALS = {"cpu": 4.0, "gpu": 10.0}
MODES = ("packed", "solo", "torch")


def spec(dataset_id: str, epochs: int, lr: float = 0.0075, device: str = "cpu") -> dict:
    return {
        "dataset_id": dataset_id,
        "model": {"hidden_layers": [20, 7, 5], "hidden_activation": "relu", "output": "sigmoid"},
        "training": {
            "epochs": epochs,
            "learning_rate": lr,
            "optimizer": "gd",
            "dtype": "float64",
            "seed": 1,
            # the course's init (workload B's), so PyTorch's loops start from the same weights
            "init": "xavier",
        },
        "device": device,
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


def run_solo(http: httpx.Client, dataset_id: str, epochs: int, poll: float, device: str) -> tuple[float, list[dict]]:
    t0 = time.perf_counter()
    done = []
    for lr in LRS:
        got = http.post("/v1/jobs", json=spec(dataset_id, epochs, lr, device))
        got.raise_for_status()
        done.append(wait_job(http, got.json()["id"], poll))
    return time.perf_counter() - t0, done


def run_packed(http: httpx.Client, dataset_id: str, epochs: int, poll: float, device: str) -> tuple[float, list[dict]]:
    t0 = time.perf_counter()
    got = http.post("/v1/sweeps", json={"base": spec(dataset_id, epochs, device=device), "grid": {"lr": LRS}})
    got.raise_for_status()
    sweep_id = got.json()["id"]
    while http.get(f"/v1/sweeps/{sweep_id}", params={"history": "none"}).json()["status"] != "finished":
        time.sleep(poll)
    seconds = time.perf_counter() - t0
    view = http.get(f"/v1/sweeps/{sweep_id}", params={"history": "none"}).json()
    return seconds, [http.get(f"/v1/jobs/{t['job_id']}", params={"history": "none"}).json() for t in view["trials"]]


def run_torch(case: Case, threads: int, torch_dev: str) -> tuple[float, list[float]]:
    """The 8 learning rates as 8 plain PyTorch loops one after another: seconds, final losses."""
    from bench.cat_model import torch_plain

    t0 = time.perf_counter()
    losses = [torch_plain(Case(**{**vars(case), "learning_rate": lr}), threads, torch_dev)["history"][-1] for lr in LRS]
    return time.perf_counter() - t0, losses


def max_rel(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))


def check(jobs: list[dict], mode: str) -> list[float]:
    bad = [j["status"] for j in jobs if j["status"] != "succeeded"]
    if bad:
        raise RuntimeError(f"{mode}: trials ended {bad}: {[j.get('error') for j in jobs]}")
    return [j["metrics"]["final_loss"] for j in jobs]


def _medians(timings: list[dict]) -> dict[str, float]:
    names = sorted({k for t in timings for k in t})
    return {k: round(statistics.median(t[k] for t in timings if k in t), 4) for k in names}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep_e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2500)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each mode (rotating order); medians")
    parser.add_argument("--threads", type=int, default=2, help="BLAS threads of the worker and of PyTorch")
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between a client's status polls")
    parser.add_argument(
        "--device", choices=["cpu", "gpu"], default="cpu", help="gpu: the jobs on CuPy, PyTorch on CUDA"
    )
    parser.add_argument(
        "--no-torch", action="store_true", help="leave out the 8 PyTorch runs (solo against packed only)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    for name in ("epochs", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1. Got {getattr(args, name)} instead.")
    return args


def measure(args: argparse.Namespace) -> dict:
    """Start the stack, time the modes (rotating order), and return the figures."""
    torch_dev = "not run (--no-torch)" if args.no_torch else devices.torch_device(args.device)
    threads = str(args.threads)
    env = {"OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    [case] = workload_b(quick=False)
    case.epochs = args.epochs
    from bench.cat_model import torch_plain

    modes = tuple(m for m in MODES if m != "torch" or not args.no_torch)
    if not args.no_torch:
        torch_plain(Case(**{**vars(case), "epochs": 2}), args.threads, torch_dev)  # CUDA context, first calls, untimed
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    losses: dict[str, list[float]] = {}
    timings: dict[str, list[dict]] = {}
    queues = "default,gpu" if args.device == "gpu" else "default"
    with tempfile.TemporaryDirectory() as tmp:
        stack = start_stack(1, Path(tmp), env, queues=queues)
        try:
            with httpx.Client(base_url=stack.base_url, timeout=60) as http:
                dataset_id, source = upload_cat(http)
                warm = http.post("/v1/jobs", json=spec(dataset_id, 5, device=args.device))
                warm.raise_for_status()
                check(
                    [wait_job(http, warm.json()["id"], args.poll)], "warm-up"
                )  # the worker's first fit pays its imports
                for i in range(args.repeats):
                    for mode in modes[i % len(modes) :] + modes[: i % len(modes)]:
                        if mode == "torch":
                            seconds, losses["torch"] = run_torch(case, args.threads, torch_dev)
                        else:
                            run = run_packed if mode == "packed" else run_solo
                            seconds, done = run(http, dataset_id, args.epochs, args.poll, args.device)
                            losses[mode] = check(done, mode)
                            if mode == "packed":
                                sizes = {int(j["timings"].get("pack_size", 1)) for j in done}
                                if sizes != {len(LRS)}:
                                    raise RuntimeError(f"packed: the trials' pack sizes were {sizes}, not {len(LRS)}")
                            timings.setdefault(mode, []).extend(j["timings"] for j in done)
                        times[mode].append(seconds)
                        if not args.json:
                            print(f"  {mode:>6} run {i + 1}: {seconds:7.2f} s", flush=True)
        finally:
            stack.stop()
    med = {mode: statistics.median(t) for mode, t in times.items()}
    torch_med = med.get("torch")
    return {
        "device": args.device,
        "torch_device": torch_dev,
        "data": source,
        "epochs": args.epochs,
        "trials": len(LRS),
        "repeats": args.repeats,
        "threads": args.threads,
        "solo_s": times["solo"],
        "packed_s": times["packed"],
        "torch_s": times.get("torch", []),
        "solo_median_s": round(med["solo"], 3),
        "packed_median_s": round(med["packed"], 3),
        "torch_median_s": None if torch_med is None else round(torch_med, 3),
        "speedup": round(med["solo"] / med["packed"], 3),
        "torch_over_packed": None if torch_med is None else round(torch_med / med["packed"], 3),
        "torch_over_solo": None if torch_med is None else round(torch_med / med["solo"], 3),
        "goal": GOALS[args.device],
        "met": med["solo"] / med["packed"] >= GOALS[args.device],
        "final_losses_equal": max_rel(losses["packed"], losses["solo"]) <= 1e-12,
        "final_losses_max_rel_diff": {
            "packed_vs_solo": max_rel(losses["packed"], losses["solo"]),
            "torch_vs_solo": max_rel(losses["torch"], losses["solo"]) if "torch" in losses else None,
        },
        # the workers' own per-trial timings, medians by phase: where the end-to-end time goes
        "trial_timings": {m: _medians(t) for m, t in timings.items()},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (status := devices.refuse(args.device)) is not None:
        return status
    result = measure(args)
    if args.json:
        print(json.dumps(result))
        return 0
    solo, packed, torch_s = result["solo_median_s"], result["packed_median_s"], result["torch_median_s"]
    print(f"data: {result['data']}")
    print(f"8 trials x {args.epochs} iterations, {args.repeats} runs each, {args.threads} BLAS threads")
    print(f"device: the jobs on {args.device}, PyTorch on {result['torch_device']}")
    print(f"solo one after another: median {solo:.2f} s; packed sweep: median {packed:.2f} s")
    if torch_s is not None:
        print(f"8 PyTorch runs one after another (in process, no service): median {torch_s:.2f} s")
    for mode, phases in result["trial_timings"].items():
        print(f"  {mode} trial timings (medians): {phases}")
    diffs = result["final_losses_max_rel_diff"]
    against_torch = (
        ""
        if torch_s is None
        else f"; PyTorch / packed {result['torch_over_packed']:.2f}x, PyTorch / solo {result['torch_over_solo']:.2f}x"
    )
    print(
        f"speedup {result['speedup']:.2f}x (goal {result['goal']:.0f}x: {'MET' if result['met'] else 'MISSED'})"
        + against_torch
    )
    torch_diff = "" if torch_s is None else f"; PyTorch vs solo {diffs['torch_vs_solo']:.1e}"
    print(
        f"final losses: packed vs solo max rel diff {diffs['packed_vs_solo']:.1e} (equal to 1e-12: "
        f"{result['final_losses_equal']}){torch_diff}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
