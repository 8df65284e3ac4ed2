"""``python -m bench.pack_overhead``: the worker's side of a sweep of the cat model's 8 learning rates,
in one process: a stacked pack, the same with the trials' own progress writes and dataset reads (the
pack runner before FlushGroup and ScoringRows), a pack trained one after another, and 8 solo jobs one
after another; the modes rotating, with the summed seconds of the per-trial phases.

It starts bench.load's stack (``dnnq up``, one worker), uploads the cat images, SIGSTOPs the stack's
worker processes and calls workers/pack_runner.py's run_pack / run_trial in this process (the HTTP and
polling around them, the same for every mode, are left out). Figures: docs/perf.md, 'Sweep pack
overhead in the worker'.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench import sweep_e2e
from bench.load import start_stack

MODES = ("stacked", "stacked_before", "sequential", "solo")


def spec(dataset_id: str, epochs: int, lr: float = 0.0075) -> dict:
    return {**sweep_e2e.spec(dataset_id, epochs, lr), "wait_for_worker": True}  # the worker is stopped


def descendants(pid: int) -> list[int]:
    kids = [int(k) for k in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]
    return kids + [d for k in kids for d in descendants(k)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pack_overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        stack = start_stack(1, Path(tmp), {"DNNQ_MAX_QUEUED_JOBS_PER_TENANT": "1000"})
        stopped: list[int] = []
        try:
            http = httpx.Client(base_url=stack.base_url, timeout=60)
            dataset_id, _ = sweep_e2e.upload_cat(http)
            sweep_e2e.wait_job(http, http.post("/v1/jobs", json=spec(dataset_id, 5)).json()["id"], 0.05)
            for pid in descendants(stack.proc.pid):
                if "dnnq.workers" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                    os.kill(pid, signal.SIGSTOP)
                    stopped.append(pid)
            os.environ["DNNQ_REDIS_URL"] = stack.redis_url
            os.environ["DNNQ_DATA_DIR"] = str(Path(tmp) / "data")
            run(http, dataset_id, args.epochs, args.repeats)
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
            stack.stop()


def run(http: httpx.Client, dataset_id: str, epochs: int, repeats: int) -> None:
    from dnnq.workers import artifacts, jobs, pack_runner, reporter, runner

    spent: dict[str, float] = collections.defaultdict(float)

    def timed(owner: Any, name: str) -> None:
        f = getattr(owner, name)

        @functools.wraps(f)
        def wrapper(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                spent[name] += time.perf_counter() - t

        setattr(owner, name, wrapper)

    for owner, name in (
        (reporter.EpochReporter, "on_epoch"),
        (runner, "accuracy"),
        (artifacts, "save_trained"),
        (jobs, "finish"),
    ):
        timed(owner, name)
    group, rows = pack_runner.FlushGroup, pack_runner._pack_rows

    def mode_is(mode: str) -> None:
        before = mode == "stacked_before"
        pack_runner.STACK_PACKS = mode in ("stacked", "stacked_before")
        pack_runner.FlushGroup = (lambda r, s: None) if before else group  # type: ignore[assignment,misc]
        pack_runner._pack_rows = (lambda *a: (None, None)) if before else rows  # type: ignore[assignment]

    def sweep(n_epochs: int) -> list[str]:
        got = http.post("/v1/sweeps", json={"base": spec(dataset_id, n_epochs), "grid": {"lr": sweep_e2e.LRS}})
        got.raise_for_status()
        return [t["job_id"] for t in http.get(f"/v1/sweeps/{got.json()['id']}").json()["trials"]]

    for warm in ("stacked", "sequential"):
        mode_is(warm)
        pack_runner.run_trial(sweep(5)[0])
    times: dict[str, list[float]] = collections.defaultdict(list)
    for i in range(repeats):
        for mode in MODES[i % 4 :] + MODES[: i % 4]:
            spent.clear()
            if mode == "solo":
                mode_is("sequential")
                ids = [http.post("/v1/jobs", json=spec(dataset_id, epochs, lr)).json()["id"] for lr in sweep_e2e.LRS]
                t = time.perf_counter()
                outcomes = [pack_runner.run_trial(j) for j in ids]
            else:
                mode_is(mode)
                ids = sweep(epochs)
                t = time.perf_counter()
                outcomes = list(pack_runner.run_pack(ids[0]).values())
            seconds = time.perf_counter() - t
            if outcomes != ["succeeded"] * len(sweep_e2e.LRS):
                raise RuntimeError(f"{mode}: the trials ended {outcomes}")
            times[mode].append(seconds)
            phases = " ".join(f"{k}={v:.3f}" for k, v in sorted(spent.items()))
            print(f"{mode:>15} run {i + 1}: {seconds:6.2f} s  {phases}", flush=True)
    solo = statistics.median(times["solo"])
    for mode in MODES:
        median = statistics.median(times[mode])
        print(f"{mode:>15}: median {median:6.2f} s, solo / mode {solo / median:.2f}x")


if __name__ == "__main__":
    main()
