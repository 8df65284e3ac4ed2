"""The worker's main process imports the training stack before Celery forks (so each new pool child
starts warm), and never CuPy (CUDA must be initialised only after the fork, in the child)."""

import subprocess
import sys


def test_preload_imports_training_modules_and_not_cupy():
    code = (
        "import sys\n"
        "from dnnq.workers.__main__ import preload_training_modules\n"
        "assert 'dnnq.workers.runner' not in sys.modules\n"
        "preload_training_modules()\n"
        "for name in ('dnnq.models', 'dnnq.workers.runner', 'numpy', 'h5py', 'safetensors.numpy'):\n"
        "    assert name in sys.modules, name\n"
        "assert 'cupy' not in sys.modules\n"
        "assert 'numba' not in sys.modules  # compiled kernels load lazily, in the child, for big jobs only\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
