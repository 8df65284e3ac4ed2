"""``python -m bench``: argument parsing and the run order (one process, same data for all sides).

Per case and repeat the implementations run one after another in blocks (ours, then PyTorch, then
scikit-learn), never interleaved step by step, so one library's spinning thread pool does not
steal the cores of the next.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from bench import envinfo, ours, report, sklearn_ref, torch_ref, workloads


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "--workload",
        choices=["A", "B", "wide", "all"],
        default="all",
        help="A: 60000x784 MLP (SGD, Adam); B: the course's deep model; wide: 4096-wide MLP "
        "(in 'all' only with --device gpu)",
    )
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--quick", action="store_true", help="fewer epochs/iterations (still a median of >= 3)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per implementation (default 1)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON, e.g. bench/results/latest.json")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="cap every BLAS/OpenMP pool and torch at N threads (default: all cores, os.cpu_count()); "
        "--threads 1 gives steadier ratios when other work shares the cores",
    )
    p.add_argument("--no-sklearn", action="store_true", help="skip the scikit-learn reference")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1. Got {args.repeats} instead.")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1. Got {args.threads} instead.")
    return args


def require_gpu() -> str | None:
    try:
        import torch
    except ImportError:
        return "--device gpu needs PyTorch with CUDA for the reference; torch is not installed."

    if not torch.cuda.is_available():
        return (
            "--device gpu needs a CUDA GPU visible to PyTorch (torch.cuda.is_available() is False here; "
            f"torch {torch.__version__}) and CuPy for models.fit. Run it on a GPU machine, "
            "or use --device cpu."
        )
    if ours.available() is None:
        from dnnq.models.backend import DeviceUnavailable, select_device

        try:
            select_device("gpu")  # the same smoke test fit runs; CuPy is imported only there
        except DeviceUnavailable as exc:
            return f"PyTorch sees a GPU but models.fit cannot use it: {exc}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import numpy as np  # noqa: F401 - loaded before torch/sklearn so its BLAS shows first

    try:
        import torch  # noqa: F401 - the reference every case is measured against
    except ImportError:
        print("error: the bench needs PyTorch (pip install 'dnnq[bench]' or torch==2.13.0).", file=sys.stderr)
        return 2

    if args.device == "gpu" and (why := require_gpu()):
        print(f"error: {why}", file=sys.stderr)
        return 2
    if args.threads:
        from threadpoolctl import threadpool_limits

        if sklearn_ref.available():
            import sklearn.neural_network  # noqa: F401 - load its pools now so the cap reaches them too

        threadpool_limits(limits=args.threads)  # numpy's OpenBLAS, scikit-learn's and torch's OpenMP
    env = envinfo.collect()
    env["threads_cap"] = args.threads
    gemm = {
        "numpy sgemm 2048^3": envinfo.numpy_gemm_gflops(2048, "float32"),
        "numpy dgemm 2048^3": envinfo.numpy_gemm_gflops(2048, "float64", repeats=3),
    }
    if args.device == "gpu":
        gemm["torch cuda sgemm 8192^3"] = torch_ref.gemm_gflops("gpu", 8192, "float32")
        gemm["torch cuda dgemm 4096^3"] = torch_ref.gemm_gflops("gpu", 4096, "float64")
    envinfo.print_header(env, gemm)
    missing = ours.available()
    if missing:
        print(f"\nnote: {missing}; timing the references only.")
    if args.threads:
        print(f"threads capped at {args.threads} for every pool and torch (--threads)")

    figs = []
    for case in workloads.build(args.workload, args.quick, args.device):
        runs_ours, runs_torch, runs_sk, runs_eager = [], [], [], []
        load = [os.getloadavg()[0]]
        for _ in range(args.repeats):
            if not missing:
                runs_ours.append(ours.train(case, args.device))
                if args.device == "gpu" and not runs_eager:  # once without step graphs: what they are worth
                    runs_eager.append(ours.train(case, args.device, step_graphs=False))
            runs_torch.append(torch_ref.train(case, args.device, args.threads))
            if case.sklearn and args.device == "cpu" and not args.no_sklearn and sklearn_ref.available():
                runs_sk.append(sklearn_ref.train(case))
        load.append(os.getloadavg()[0])
        rate = _gemm_rate_for(case, args.device, gemm)
        fig = report.summarise(case, args.device, runs_ours, runs_torch, runs_sk, rate, runs_eager)
        fig["load_avg_1min"] = {"before": load[0], "after": load[1], "nproc": os.cpu_count()}
        report.print_case(fig)
        figs.append(fig)
    report.print_summary(figs)
    if args.json:
        report.write_json(args.json, env, gemm, figs, ["python", "-m", "bench", *(argv or sys.argv[1:])])
    missed = [
        f"{f['case']} (vs {', '.join(ref for ref, g in f['goals'].items() if not g['met'])})"
        for f in figs
        if not all(g["met"] for g in f["goals"].values())
    ]
    if missing:
        print("\nno verdict: models.fit is missing")
    else:
        print("\nall goals met" if not missed else f"\ngoals missed in: {', '.join(missed)}")
    print(f"command: {shlex.join(['python', '-m', 'bench', *(argv if argv is not None else sys.argv[1:])])}")
    return 0


def _gemm_rate_for(case, device: str, gemm: dict) -> float | None:
    prec = "sgemm" if case.dtype == "float32" else "dgemm"
    for key, value in gemm.items():
        if prec in key and (("cuda" in key) == (device == "gpu")):
            return value
    return None
