"""Entry point of ``python -m bench``.

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE slow NumPy's sgemm on this kind of machine and OpenBLAS reads
them only when the library loads, so when either is set we drop both and re-exec the same command
before NumPy is imported (nothing above this point may import NumPy).
"""

import os
import sys

_SLOW_BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_REEXEC_MARK = "DNNQ_BENCH_REMOVED_ENV"


def _reexec_without_slow_blas_vars() -> None:
    found = [f"{name}={os.environ[name]}" for name in _SLOW_BLAS_VARS if name in os.environ]
    if not found:
        return
    for name in _SLOW_BLAS_VARS:
        os.environ.pop(name, None)
    os.environ[_REEXEC_MARK] = " ".join(found)
    # `-m bench` must resolve the same package after exec, whatever the working directory.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "bench", *sys.argv[1:]])


if __name__ == "__main__":
    _reexec_without_slow_blas_vars()
    from bench.cli import main

    sys.exit(main())
