"""warm_up(): a worker's training process pays fit's one-time costs before its first job."""

import subprocess
import sys

import pytest


def test_warm_up_compiles_every_kernel_for_both_dtypes_and_never_cupy():
    pytest.importorskip("numba", reason="numba not installed: fit runs the NumPy sequences, nothing to warm")
    code = (
        "import sys\n"
        "from dnnq.models import warm_up\n"
        "from dnnq.models import fused\n"
        "seconds = warm_up()\n"
        "assert seconds > 0\n"
        "assert fused._kernels, 'no compiled kernels'\n"
        "cold = [name for name, k in fused._kernels.items() if len(k.signatures) < 2]\n"
        "print(sorted(cold))\n"
        "assert 'cupy' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    # every kernel the engine and the optimizers call met float32 and float64 (take_rows_ also int64 labels)
    assert out.stdout.strip() == "[]"
