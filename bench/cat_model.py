"""``python -m bench.cat_model``: the course's cat model in fit (Gram and textbook paths) against a
plain PyTorch loop, in one process, runs alternating, medians of the whole-run times.

The model is workload B (bench/workloads.py): [12288, 20, 7, 5, 1], relu/sigmoid, float64,
full-batch gd at 0.0075 from the same initial weights, 2,500 iterations, on the course's 209 cat
images (or synthetic pixels of that shape when the file or h5py is missing). PyTorch's side is the
loop anyone would write: leaf tensors, F.linear and relu, binary_cross_entropy_with_logits, SGD,
autograd; the cost kept per iteration as a tensor and read once at the end, as fit reads it per epoch.
Goal (issue 17): fit (Gram path) at most 1/15 of PyTorch's time.

``--device gpu``: fit on CuPy and PyTorch on CUDA (on the CPU, said in the output, when torch has no
CUDA); without a usable GPU it refuses in one line ("no GPU: ...") with exit status 2.
``--json``: one JSON object with the figures instead of the text.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time

import numpy as np

from bench import devices, envinfo, ours, workloads
from bench.workloads import Case, initial_parameters

GOAL = 1 / 15


def torch_plain(case: Case, threads: int | None = None, device: str = "cpu") -> dict:
    """The cat model's full-batch gd loop in plain PyTorch on ``device`` ("cpu" or "cuda"): seconds,
    costs per iteration, parameters."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads or os.cpu_count() or 1)
    start = initial_parameters(case)
    L = len(case.layer_dims) - 1
    W = [torch.tensor(start[f"W{l}"], device=device, requires_grad=True) for l in range(1, L + 1)]  # (n_l, n_{l-1})
    b = [torch.tensor(start[f"b{l}"].ravel(), device=device, requires_grad=True) for l in range(1, L + 1)]  # (n_l,)
    X = torch.from_numpy(np.ascontiguousarray(case.X)).to(device)  # (m, n_x) float64, no gradient: no dA0
    y = torch.from_numpy(case.y.astype(case.dtype)).reshape(-1, 1).to(device)  # (m, 1)
    opt = torch.optim.SGD([*W, *b], lr=case.learning_rate)
    costs = []
    devices.torch_sync(device)  # the data's copy to the device is setup, not training
    t0 = time.perf_counter()
    for _ in range(case.epochs):
        A = X
        for l in range(L - 1):
            A = torch.relu(F.linear(A, W[l], b[l]))
        loss = F.binary_cross_entropy_with_logits(F.linear(A, W[L - 1], b[L - 1]), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        costs.append(loss.detach())
    history = torch.stack(costs).tolist()  # one read at the end (syncs the device)
    seconds = time.perf_counter() - t0
    params = {}
    for l in range(L):
        params[f"W{l + 1}"] = W[l].detach().cpu().numpy().copy()
        params[f"b{l + 1}"] = b[l].detach().cpu().numpy().reshape(-1, 1).copy()
    return {"seconds": seconds, "history": history, "parameters": params}


def fit_run(case: Case, path: str, device: str = "cpu") -> dict:
    run = ours.train(case, device, path=path)
    return {"seconds": run["total_s"], "history": run["history"], "parameters": run["parameters"], "path": run["path"]}


def max_rel(a: list[float], b: list[float]) -> float:
    x, y = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(x - y) / np.abs(y)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.cat_model", description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=2500, help="full-batch iterations per run (default 2500)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each side, alternating (default 3)")
    p.add_argument(
        "--textbook-iterations",
        type=int,
        default=None,
        help="iterations of fit's textbook path and of a second PyTorch run beside it (default: --iterations; "
        "fewer keeps a busy machine's run short: its ratio is taken against PyTorch over the same count)",
    )
    p.add_argument("--threads", type=int, default=None, help="cap every BLAS/OpenMP pool and torch at N threads")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="gpu: fit on CuPy, PyTorch on CUDA")
    p.add_argument("--json", action="store_true", help="print one JSON object with the figures instead of the text")
    args = p.parse_args(argv)
    for name in ("iterations", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1. Got {getattr(args, name)} instead.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (status := devices.refuse_unless_ready(args.device)) is not None:
        return status
    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=args.threads)
    torch_dev = devices.torch_device(args.device)
    say = (lambda *a, **k: None) if args.json else print
    if not args.json:
        envinfo.print_header(envinfo.collect(), {})
    [case] = workloads.workload_b(quick=False)
    case.epochs = args.iterations
    tb_case = Case(**{**vars(case), "epochs": args.textbook_iterations or args.iterations})
    say(f"\ncat model {'-'.join(map(str, case.layer_dims))}, float64 gd lr {case.learning_rate}, {case.data_note}")
    say(f"{args.iterations} iterations (textbook path: {tb_case.epochs}), {args.repeats} repeats alternating")
    say(f"device: fit on {args.device}, PyTorch on {torch_dev}")
    warm = Case(**{**vars(case), "epochs": 2})  # first calls (imports, CuPy's kernels, CUDA context) untimed
    for path in ("gram", "textbook"):
        fit_run(warm, path, args.device)
    torch_plain(warm, args.threads, torch_dev)
    times: dict[str, list[float]] = {"gram": [], "torch": [], "textbook": [], "torch_tb": []}
    last: dict[str, dict] = {}
    load = [os.getloadavg()[0]]
    for _ in range(args.repeats):
        last["gram"] = fit_run(case, "gram", args.device)
        last["torch"] = torch_plain(case, args.threads, torch_dev)
        last["textbook"] = fit_run(tb_case, "textbook", args.device)
        last["torch_tb"] = (
            last["torch"] if tb_case.epochs == case.epochs else torch_plain(tb_case, args.threads, torch_dev)
        )
        for who in times:
            times[who].append(last[who]["seconds"])
        say("  run: " + ", ".join(f"{who} {last[who]['seconds']:.3f} s" for who in times), flush=True)
    load.append(os.getloadavg()[0])
    med = {who: statistics.median(t) for who, t in times.items()}
    gram_ratio, tb_ratio = med["gram"] / med["torch"], med["textbook"] / med["torch_tb"]
    n = min(len(last["textbook"]["history"]), len(last["gram"]["history"]))
    gram_h, tb_h, torch_h = last["gram"]["history"], last["textbook"]["history"], last["torch"]["history"]
    at100 = gram_h[min(100, len(gram_h) - 1)]
    command = shlex.join(["python", "-m", "bench.cat_model", *(argv if argv is not None else sys.argv[1:])])
    figures = {
        "device": args.device,
        "torch_device": torch_dev,
        "data": case.data_note,
        "iterations": case.epochs,
        "textbook_iterations": tb_case.epochs,
        "repeats": args.repeats,
        "times_s": times,
        "medians_s": {who: round(t, 4) for who, t in med.items()},
        "gram_over_torch": gram_ratio,
        "textbook_over_torch": tb_ratio,
        "goal": GOAL,
        "met": gram_ratio <= GOAL,
        "costs_max_rel_diff": {
            "gram_vs_textbook": max_rel(gram_h[:n], tb_h[:n]),
            "gram_vs_torch": max_rel(gram_h, torch_h),
        },
        "costs_at_0_100": [gram_h[0], at100],
        "paths": {"gram": last["gram"]["path"], "textbook": last["textbook"]["path"]},
        "load_1min": load,
        "command": command,
    }
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"\nmedians: fit gram {med['gram']:.3f} s, PyTorch {med['torch']:.3f} s ({case.epochs} iterations)")
    print(
        f"         fit textbook {med['textbook']:.3f} s, PyTorch {med['torch_tb']:.3f} s ({tb_case.epochs} iterations)"
    )
    verdict = "MET" if figures["met"] else "MISSED"
    print(f"fit (gram) / PyTorch     {gram_ratio:.4f}  (1/{1 / gram_ratio:.1f}; goal <= 1/15: {verdict})")
    print(f"fit (textbook) / PyTorch {tb_ratio:.3f}")
    diffs = figures["costs_max_rel_diff"]
    print(
        f"costs: gram vs textbook max rel diff {diffs['gram_vs_textbook']:.1e} over {n} iterations; "
        f"gram vs PyTorch {diffs['gram_vs_torch']:.1e}"
    )
    print(f"costs after iterations 0, 100: {gram_h[0]:.6f}, {at100:.6f} (the course prints 0.771749, 0.672053)")
    print(f"machine load (1-min average) {load[0]:.1f} before, {load[1]:.1f} after, nproc {os.cpu_count()}")
    print(f"command: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
