"""``python -m bench.sweep_seeds``: workload A (bench/workloads.py) with 8 seeds, three ways, in one process:
packed (models.packed.fit_packed: the 8 trials as one stacked computation), the same 8 configs as 8 fit()
calls one after another, and 8 plain PyTorch runs one after another; modes in rotating order, medians.

The order of the mini-batches: UNSHUFFLED (shuffle=False: batch b is always examples b*256 .. b*256+255)
for all three. Seeds differ, and a shuffled epoch's permutation comes from the seed, so 8 shuffled seeds
could not share a pack; unshuffled, they differ only in their initial weights and share every batch.
PyTorch's side is its fastest ordinary form for that order: the data on the device once, each batch a
slice of it (no gather, no indexing: bench/torch_ref.py's two shuffled forms both cost more), nn.Linear
and ReLU, CrossEntropyLoss, SGD or Adam, the same initial weights, the loss read once per epoch.

``--case sgd|adam|both`` (workload A's two cases), ``--examples``/``--epochs`` to size it, ``--quick``
(1,024 examples, 1 epoch, 1 repeat: seconds, for CI's bench tests), ``--dtype float64`` (the packed and
solo losses then equal to 1e-12; workload A is float32, where they agree to rounding, 1e-5 the goal).
``--device gpu``: fit on CuPy, PyTorch on CUDA when torch has it; without a usable GPU it refuses in one
line ("no GPU: ...") with exit status 2. ``--json``: one JSON object instead of the text.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import sys
import time
from typing import Any

from bench import devices, ours, workloads
from bench.workloads import Case

SEEDS = tuple(range(1, 9))
MODES = ("packed", "solo", "torch")
ORDER = "unshuffled (shuffle=False): the same batches in the same order for every seed and mode"
# float32 trials equal their solo fits to 1e-5 relative (issue 17); float64 to 1e-12
SAME = {"float32": 1e-5, "float64": 1e-12}


def fit_configs(case: Case, device: str) -> list[Any]:
    base = ours.config(case, device)
    return [dataclasses.replace(base, shuffle=False, seed=seed) for seed in SEEDS]


def run_packed(case: Case, configs: list[Any]) -> tuple[float, list[float]]:
    from dnnq.models.packed import fit_packed

    t0 = time.perf_counter()
    results = fit_packed(case.X.T, case.y, configs, path="textbook")
    seconds = time.perf_counter() - t0
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise RuntimeError(f"packed: {len(failed)} trials diverged: {failed[0]}")
    return seconds, [r.history[-1].loss for r in results]  # type: ignore[union-attr]


def run_solo(case: Case, configs: list[Any]) -> tuple[float, list[float]]:
    from dnnq.models import fit

    t0 = time.perf_counter()
    results = [fit(case.X.T, case.y, cfg, path="textbook") for cfg in configs]
    return time.perf_counter() - t0, [r.history[-1].loss for r in results]


def torch_unshuffled(case: Case, X: Any, y: Any, device: str) -> float:
    """One PyTorch run of ``case`` over the data already on ``device``, batches sliced in order; the
    last epoch's example-weighted mean loss (fit's definition)."""
    import torch
    from torch import nn

    from bench.torch_ref import build_model

    model = build_model(case, torch.device(device))
    if case.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=case.learning_rate, eps=1e-8)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=case.learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    m, bs = X.shape[0], case.batch_size or X.shape[0]
    last = float("nan")
    for _ in range(case.epochs):
        total = torch.zeros((), device=device, dtype=X.dtype)
        for start in range(0, m, bs):
            xb, yb = X[start : start + bs], y[start : start + bs]  # (B, n_x), (B,): views
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            total += loss.detach() * xb.shape[0]
        last = total.item() / m  # .item() syncs the device: once per epoch, as fit
    return last


def run_torch(case: Case, torch_dev: str) -> tuple[float, list[float]]:
    import torch

    X = torch.from_numpy(case.X).to(torch_dev)  # (m, n_x): on the device once for all 8 runs
    y = torch.from_numpy(case.y).to(torch_dev)  # (m,) int64
    devices.torch_sync(torch_dev)
    t0 = time.perf_counter()
    losses = [torch_unshuffled(dataclasses.replace(case, seed=seed), X, y, torch_dev) for seed in SEEDS]
    return time.perf_counter() - t0, losses


def max_rel(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))


def bench_case(case: Case, device: str, torch_dev: str, repeats: int, say: Any) -> dict:
    configs = fit_configs(case, device)
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    losses: dict[str, list[float]] = {}
    for i in range(repeats):
        for mode in MODES[i % 3 :] + MODES[: i % 3]:
            if mode == "torch":
                seconds, losses[mode] = run_torch(case, torch_dev)
            else:
                seconds, losses[mode] = (run_packed if mode == "packed" else run_solo)(case, configs)
            times[mode].append(seconds)
            say(f"  {case.name} {mode:>6} run {i + 1}: {seconds:.3f} s", flush=True)
    med = {mode: statistics.median(t) for mode, t in times.items()}
    diffs = {
        "packed_vs_solo": max_rel(losses["packed"], losses["solo"]),
        "torch_vs_solo": max_rel(losses["torch"], losses["solo"]),
    }
    return {
        "case": case.name,
        "optimizer": case.optimizer,
        "learning_rate": case.learning_rate,
        "times_s": times,
        "medians_s": {mode: round(t, 4) for mode, t in med.items()},
        "solo_over_packed": med["solo"] / med["packed"],
        "torch_over_packed": med["torch"] / med["packed"],
        "torch_over_solo": med["torch"] / med["solo"],
        "final_losses": losses,
        "max_rel_diff": diffs,
        "packed_equals_solo": diffs["packed_vs_solo"] <= SAME[case.dtype],
    }


def warm_up(case: Case, device: str, torch_dev: str) -> None:
    """First calls (imports, BLAS and CUDA start-up, CuPy's kernels) outside the timed runs."""
    small = dataclasses.replace(case, X=case.X[:512], y=case.y[:512], epochs=1)
    configs = fit_configs(small, device)[:2]
    run_packed(small, configs)
    run_solo(small, configs[:1])
    run_torch(small, torch_dev)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.sweep_seeds", description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=["sgd", "adam", "both"], default="both", help="workload A's case(s)")
    p.add_argument("--examples", type=int, default=None, help="the first N of workload A's 60,000 examples")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: workload A's 5)")
    p.add_argument("--repeats", type=int, default=None, help="runs of each mode, rotating order (default 3; --quick 1)")
    p.add_argument("--quick", action="store_true", help="1,024 examples, 1 epoch, 1 repeat (unless given)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="workload A's is float32")
    p.add_argument("--threads", type=int, default=None, help="cap every BLAS/OpenMP pool and torch at N threads")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="gpu: fit on CuPy, PyTorch on CUDA")
    p.add_argument("--json", action="store_true", help="print one JSON object with the figures instead of the text")
    args = p.parse_args(argv)
    if args.quick:
        args.examples = args.examples or 1024
        args.epochs = args.epochs or 1
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    for name in ("examples", "epochs", "repeats", "threads"):
        value = getattr(args, name)
        if value is not None and not 1 <= value <= (60_000 if name == "examples" else 10**6):
            p.error(f"--{name} must be >= 1{' and <= 60000' if name == 'examples' else ''}. Got {value} instead.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (status := devices.refuse_unless_ready(args.device)) is not None:
        return status
    import torch

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=args.threads)
    say = (lambda *a, **k: None) if args.json else print
    torch_dev = devices.torch_device(args.device)
    cases = [c for c in workloads.workload_a(quick=False) if args.case in ("both", c.name.split("-")[1])]
    m = args.examples or cases[0].m
    cases = [
        dataclasses.replace(
            c, X=c.X[:m].astype(args.dtype), y=c.y[:m], epochs=args.epochs or c.epochs, dtype=args.dtype, sklearn=False
        )
        for c in cases
    ]
    first = cases[0]
    dims = "-".join(map(str, first.layer_dims))
    say(f"workload A with {len(SEEDS)} seeds: {dims}, {first.dtype}, batch {first.batch_size}")
    say(f"{m} examples ({first.data_note}), {first.epochs} epochs, {args.repeats} repeats, modes in rotating order")
    say(f"mini-batch order: {ORDER}")
    say(f"device: fit on {args.device}, PyTorch on {torch_dev}; load (1-min) {os.getloadavg()[0]:.1f}")
    warm_up(first, args.device, torch_dev)
    figures = [bench_case(case, args.device, torch_dev, args.repeats, say) for case in cases]
    command = shlex.join(["python", "-m", "bench.sweep_seeds", *(argv if argv is not None else sys.argv[1:])])
    result = {
        "workload": "A",
        "device": args.device,
        "torch_device": torch_dev,
        "order": ORDER,
        "examples": m,
        "dtype": args.dtype,
        "epochs": first.epochs,
        "seeds": list(SEEDS),
        "repeats": args.repeats,
        "cases": figures,
        "load_1min": os.getloadavg()[0],
        "command": command,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    for f in figures:
        med, diffs = f["medians_s"], f["max_rel_diff"]
        print(
            f"\n{f['case']} ({f['optimizer']}, lr {f['learning_rate']}), medians: packed {med['packed']:.3f} s, "
            f"8 fits one after another {med['solo']:.3f} s, 8 PyTorch runs {med['torch']:.3f} s"
        )
        print(
            f"  solo / packed {f['solo_over_packed']:.2f}x; PyTorch / packed {f['torch_over_packed']:.2f}x; "
            f"PyTorch / solo {f['torch_over_solo']:.2f}x"
        )
        print(
            f"  final losses: packed vs solo max rel diff {diffs['packed_vs_solo']:.1e} "
            f"(within {SAME[first.dtype]:g}: {f['packed_equals_solo']}); PyTorch vs solo {diffs['torch_vs_solo']:.1e}"
        )
    print(f"command: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
