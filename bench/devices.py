"""``--device {cpu,gpu}`` for the sweep benches (bench.cat_model, bench.sweep_e2e, bench.sweep_seeds).

``refusal(device)``: None when the device can be used, else one line starting "no GPU: " that the bench
prints to stderr before exiting with status 2 (never a traceback). The GPU is fit's (CuPy, through the
same smoke test fit runs); PyTorch's reference goes to CUDA when torch has it and stays on the CPU,
said in the output, when it does not.
"""

from __future__ import annotations

import sys

EXIT_REFUSED = 2


def refusal(device: str) -> str | None:
    if device != "gpu":
        return None
    from dnnq.models.backend import DeviceUnavailable, select_device

    try:
        select_device("gpu")  # imports CuPy only here, and only for --device gpu
    except DeviceUnavailable as exc:
        return f"no GPU: {' '.join(str(exc).split())}"
    return None


def refuse(device: str) -> int | None:
    """Print the refusal and return the exit status, or None when the device is usable."""
    why = refusal(device)
    if why is None:
        return None
    print(why, file=sys.stderr)
    return EXIT_REFUSED


def refuse_unless_ready(device: str) -> int | None:
    """refuse(device), then PyTorch's presence (the benches compare against it): the exit status to
    return, or None when both are there."""
    if (status := refuse(device)) is not None:
        return status
    try:
        import torch  # noqa: F401
    except ImportError:
        print("error: the bench needs PyTorch (pip install torch==2.13.0).", file=sys.stderr)
        return EXIT_REFUSED
    return None


def torch_device(device: str) -> str:
    """PyTorch's device for a bench on ``device``: "cuda" for gpu when torch sees one, else "cpu"."""
    import torch

    return "cuda" if device == "gpu" and torch.cuda.is_available() else "cpu"


def torch_sync(device: str) -> None:
    """Wait for queued CUDA work before a clock read (no-op on the CPU)."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
