"""What ran: BLAS libraries and threads, library versions, CPU, and the machine's GEMM rates."""

from __future__ import annotations

import os
import platform
import time

import numpy as np


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def collect() -> dict:
    """Versions and thread pools, read after numpy, torch and sklearn are loaded (so all pools show)."""
    import torch

    try:
        import threadpoolctl

        pools = [
            {
                k: p.get(k)
                for k in (
                    "user_api",
                    "internal_api",
                    "prefix",
                    "version",
                    "architecture",
                    "threading_layer",
                    "num_threads",
                    "filepath",
                )
            }
            for p in threadpoolctl.threadpool_info()
        ]
    except ImportError:  # a bare GPU box may lack it; the run goes on without the pool listing
        pools = []
    info = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "sklearn": _version("sklearn"),
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "thread_pools": pools,
        "removed_env": os.environ.get("DNNQ_BENCH_REMOVED_ENV", ""),
        "numpy_blas": _numpy_blas(pools),
        "load_avg_1min_at_start": os.getloadavg()[0],
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["torch_cuda"] = torch.version.cuda
        info["torch_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return info


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return "not installed"


def _numpy_blas(pools: list[dict]) -> str:
    numpy_dir = os.path.dirname(np.__file__)
    for p in pools:
        path = p.get("filepath") or ""
        if p.get("user_api") == "blas" and ("numpy" in path or path.startswith(numpy_dir)):
            return f"{p['internal_api']} {p['version']} kernel={p.get('architecture')} threads={p['num_threads']}"
    if not pools:
        return "unknown (threadpoolctl is not installed)"
    return "unknown (threadpoolctl saw no BLAS inside numpy's folder)"


def numpy_gemm_gflops(n: int = 2048, dtype: str = "float32", repeats: int = 5) -> float:
    """Median GFLOP/s of an n^3 NumPy matmul (the first call is a warm-up)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = np.empty((n, n), dtype=dtype)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / float(np.median(times[1:])) / 1e9


def print_header(info: dict, gemm: dict) -> None:
    if info["removed_env"]:
        print(f"note: removed {info['removed_env']} from the environment and re-ran (they slow NumPy here)")
    print(
        f"CPU: {info['cpu_model']}, nproc={info['nproc']}, 1-min load average "
        f"{info['load_avg_1min_at_start']:.1f}; python {info['python']}"
    )
    print(
        f"numpy {info['numpy']}, torch {info['torch']} (threads={info['torch_threads']}), "
        f"scikit-learn {info['sklearn']}"
    )
    if "gpu" in info:
        print(f"GPU: {info['gpu']} (CUDA {info['torch_cuda']}, torch TF32 matmul={info['torch_allow_tf32']})")
    print(f"NumPy BLAS: {info['numpy_blas']}")
    print("thread pools (threadpoolctl):")
    for p in info["thread_pools"]:
        arch = f" kernel={p['architecture']}" if p.get("architecture") else ""
        print(
            f"  {p['user_api']:6} {p['internal_api']:9} {p.get('version') or '':14}{arch} "
            f"threads={p['num_threads']}  {os.path.basename(p['filepath'] or '')}"
        )
    for key, value in gemm.items():
        print(f"GEMM rate {key}: {value:.1f} GFLOP/s (median)")
