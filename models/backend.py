"""Array-module selection and host/device movement.

This is the ONLY module that imports CuPy, and it does so lazily, inside functions, so that
``import models`` never imports CuPy or initialises CUDA. Every maths function derives its
array module (``xp``) from its arguments with :func:`get_namespace`; nothing keeps a global
"current backend".
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

__all__ = [
    "Array",
    "DeviceUnavailable",
    "Device",
    "get_namespace",
    "is_numpy",
    "to_host",
    "select_device",
    "gpu_available",
    "forget_gpu_check",
    "release_memory",
    "release_gpu_memory",
    "synchronize",
    "device_rng",
    "DEVICE_RNG",
    "GpuMemory",
    "gpu_memory",
    "DeviceGraph",
    "optimizer_kernel",
    "concat",
    "scatter_columns",
    "matmul_transposed_into",
]


# A NumPy, CuPy or array-API array: the numerics take any of them, so annotations say only that.
Array = Any


class DeviceUnavailable(RuntimeError):
    """``device="gpu"`` was asked for but no working CuPy/CUDA device is present."""


def get_namespace(*arrays: Any) -> Any:
    """The array module of ``arrays``: numpy, cupy, or ``x.__array_namespace__()``.

    Python scalars and None are skipped; with no arrays at all the answer is numpy.
    """
    for x in arrays:
        if x is None or isinstance(x, (int, float, bool)):
            continue
        if isinstance(x, (np.ndarray, np.generic)):
            return np
        module = type(x).__module__.split(".")[0]
        if module == "cupy":  # cupy is already imported by whoever made x
            import cupy

            return cupy
        namespace = getattr(x, "__array_namespace__", None)
        if namespace is not None:
            return namespace()
    return np


def is_numpy(xp: Any) -> bool:
    return xp is np


def to_host(x: Array) -> np.ndarray:
    """A NumPy copy (or view, for NumPy input) of any supported array."""
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.split(".")[0] == "cupy":
        return x.get()  # device -> host copy; syncs the GPU
    return np.asarray(x)


@dataclass(frozen=True)
class Device:
    """Where fit computes: ``xp`` is numpy or cupy; ``name`` is ``"cpu"`` or ``"gpu:N"``."""

    xp: Any
    name: str

    def asarray(self, x: Any, dtype: DTypeLike | None = None) -> Array:
        return self.xp.asarray(x, dtype=dtype)


_GPU_CHECK: dict[str, Any] = {}  # cached outcome of the smoke test in this process


def _gpu_smoke_test() -> tuple[Any, str] | str:
    """(cupy, "gpu:N") when a small matmul runs and syncs on the GPU, else the reason why not."""
    if "result" in _GPU_CHECK:
        return _GPU_CHECK["result"]
    try:
        import cupy

        a = cupy.arange(16, dtype=cupy.float32).reshape(4, 4)
        b = a @ a
        cupy.cuda.Stream.null.synchronize()
        if float(b[0, 0]) != float(np.arange(4) @ (np.arange(4) * 4)):
            raise RuntimeError("the GPU smoke test gave a wrong matmul result")
        result: tuple[Any, str] | str = (cupy, f"gpu:{cupy.cuda.Device().id}")
    except ImportError:
        result = "CuPy is not installed (pip install 'dnnq[gpu]')"
    except Exception as exc:  # CUDA driver/runtime errors come in many classes
        result = f"CuPy could not run on a GPU: {type(exc).__name__}: {exc}"
    _GPU_CHECK["result"] = result
    return result


def forget_gpu_check() -> None:
    """Drop the cached smoke-test outcome, so the next question runs it again (tests swap CuPy)."""
    _GPU_CHECK.clear()


def gpu_available() -> bool:
    return not isinstance(_gpu_smoke_test(), str)


def concat(xp: Any, arrays: list[Array], axis: int = 0) -> Array:
    """Arrays joined along ``axis``: the array API's ``concat``, or ``concatenate`` (CuPy 13)."""
    join = getattr(xp, "concat", None) or xp.concatenate
    return join(arrays, axis=axis)


def scatter_columns(xp: Any, out: Array, idx: Array, values: Array) -> None:
    """``out[:, idx] = values`` for distinct indices ``idx`` (n,) and ``values`` (rows, n).

    NumPy and CuPy assign through an index array; the array API has no such assignment, so there
    the columns are placed by a product with the one-hot matrix of ``idx`` (exact: one term each)."""
    if xp is np or getattr(xp, "__name__", "") == "cupy":
        out[:, idx] = values
        return
    one_hot = xp.astype(idx[:, None] == xp.arange(out.shape[1])[None, :], out.dtype)  # (n, cols)
    out[...] = out * (1 - xp.sum(one_hot, axis=0)) + xp.matmul(values, one_hot)  # other columns kept


def matmul_transposed_into(xp: Any, a: Array, b: Array, out: Array) -> None:
    """``out[...] = (a @ b).T``: NumPy writes the product straight into ``out.T`` (BLAS takes a
    column-major output); elsewhere the product is made, then copied in."""
    if xp is np:
        np.matmul(a, b, out=out.T)
    else:
        out[...] = xp.matmul(a, b).T


def select_device(device: str) -> Device:
    """``"cpu"`` -> NumPy; ``"gpu"`` -> CuPy or DeviceUnavailable; ``"auto"`` -> GPU if it works."""
    if device == "cpu":
        return Device(np, "cpu")
    if device not in ("gpu", "auto"):
        raise ValueError(f"The 'device' parameter must be one of 'auto', 'cpu', 'gpu'. Got {device!r} instead.")
    found = _gpu_smoke_test()
    if isinstance(found, str):
        if device == "gpu":
            raise DeviceUnavailable(
                f"device='gpu' was requested but no GPU is usable: {found}. "
                "Use device='cpu' or device='auto' to train on the CPU."
            )
        return Device(np, "cpu")
    return Device(found[0], found[1])


def release_memory(xp: Any) -> None:
    """Give CuPy's pooled device memory back to the driver (no-op on NumPy).

    Only blocks no array holds go back: drop the arrays first (fit does, on success and failure).
    """
    if xp is np or getattr(xp, "__name__", "") != "cupy":
        return
    xp.get_default_memory_pool().free_all_blocks()
    xp.get_default_pinned_memory_pool().free_all_blocks()


def release_gpu_memory() -> None:
    """release_memory for this process's CuPy, if it ever loaded CuPy (a CPU worker: nothing)."""
    import sys

    release_memory(sys.modules.get("cupy"))


def synchronize(xp: Any) -> None:
    """Wait for the device work queued so far on the current stream (no-op on NumPy): a clock read
    right after ``cupy.asarray`` of host data may not include the copy, which CuPy 13 queues on the
    stream (issue 18's reading of cupy/_core/core.pyx; scripts/gpu-check's setup_s shows it)."""
    if xp is not np and getattr(xp, "__name__", "") == "cupy":
        xp.cuda.get_current_stream().synchronize()


class DeviceGraph:
    """The device work of ``fn()`` recorded once as a CUDA graph; ``launch()`` replays all of it
    with one launch on the current stream (instead of one launch per kernel from Python).

    A capture records kernels and their arguments, not Python, so: the arrays the work reads and
    writes must stay where they are (fit's buffers are allocated once), Python numbers are frozen
    at capture time, and nothing in ``fn`` may wait for the device (no float(x), no host copies);
    CuPy raises if it does. Memory that ``fn`` allocates while recording comes from a pool of the
    graph's own, kept as long as the graph, so no array made later can sit where a replay writes
    (the default pool would hand those blocks out again once the temporaries are freed).
    Capture is on a stream of its own (CUDA cannot capture the legacy default stream).
    """

    def __init__(self, xp: Any, fn: Callable[[], object]) -> None:
        cuda = xp.cuda
        self._cuda = cuda
        self._pool = cuda.MemoryPool()
        stream = cuda.Stream(non_blocking=True)
        with cuda.using_allocator(self._pool.malloc), stream:
            stream.begin_capture()
            try:
                fn()
            except BaseException:
                with contextlib.suppress(Exception):  # end the broken capture; the first error is the one to see
                    stream.end_capture()
                raise
            self._graph = stream.end_capture()
        self._stream = stream  # kept with the graph: the pool's blocks were handed out on this stream

    def launch(self) -> None:
        self._graph.launch(stream=self._cuda.get_current_stream())

    def close(self) -> None:
        """Wait for replays still running, then let the graph and its memory go."""
        self._cuda.get_current_stream().synchronize()
        self._graph = self._pool = self._stream = None


@dataclass(frozen=True)
class GpuMemory:
    """This process's GPU memory, in bytes, as CuPy's default pool accounts for it, and the device's size.

    memGetInfo's "used" would be the whole device's (every process and context), so it is not used.
    """

    pool_used: int  # in arrays alive now (MemoryPool.used_bytes)
    pool_held: int  # taken from the device by this process's pool, free blocks included (total_bytes)
    device_total: int  # the device's memory (memGetInfo's total)


def gpu_memory() -> GpuMemory | None:
    """This process's GPU memory on its current device, or None.

    It never imports CuPy itself: a process that never trained on a GPU answers None, so a CPU
    worker asking costs nothing and initialises no CUDA context.
    """
    import sys

    cupy = sys.modules.get("cupy")
    if cupy is None:
        return None
    try:
        pool = cupy.get_default_memory_pool()  # CuPy 13 MemoryPool.used_bytes/total_bytes: this pool, current device
        _, total = cupy.cuda.runtime.memGetInfo()
        return GpuMemory(int(pool.used_bytes()), int(pool.total_bytes()), int(total))
    except Exception:  # no context yet, or a driver error: nothing to report
        return None


# The device generator: cuRAND's counter-based Philox with a fixed number of states. CuPy 13's
# default_rng is XORWOW sized by the GPU (8 x 256 x SM count states, each set up with a skip-ahead),
# and its sampling kernels stride by the state count (cupy/random/_bit_generator.pyx,
# cupy_distributions.cu), so masks would change with the GPU model; Philox's set-up is O(1) a state.
_DEVICE_RNG_STATES = 1 << 16  # 4 MiB of states; a larger draw strides over them, the same on every GPU
DEVICE_RNG = f"Philox4x3210 ({_DEVICE_RNG_STATES} states)"


def device_rng(xp: Any, seed: int, epoch: int) -> _EpochRng:
    """The random generator of one epoch, derived from (seed, epoch) alone.

    Resuming from a checkpoint therefore needs only the epoch number, on any GPU model. The object
    has ``permutation(n)`` (host, NumPy int64) and ``random(shape, dtype)`` (on ``xp``'s device); a
    device generator (DEVICE_RNG) is made on the first ``random`` only, so a run without dropout
    never makes one. ``device_made`` says whether this one did.
    """
    return _EpochRng(xp, seed, epoch)


class _EpochRng:
    def __init__(self, xp: Any, seed: int, epoch: int) -> None:
        # made on first use: an epoch that draws nothing (full batch, no dropout) never builds one
        self._host_rng: np.random.Generator | None = None
        self._xp = xp
        self._seed_epoch = (seed, epoch)
        self._dev: Any = None

    @property
    def _host(self) -> np.random.Generator:
        if self._host_rng is None:
            self._host_rng = np.random.default_rng(list(self._seed_epoch))
        return self._host_rng

    @property
    def device_made(self) -> bool:
        return self._dev is not None

    def permutation(self, n: int) -> np.ndarray:
        return self._host.permutation(n)

    def random(self, shape: int | tuple[int, ...], dtype: np.dtype) -> Array:
        if self._xp is np:
            return self._host.random(shape, dtype=dtype)
        if self._dev is None:
            derived = int(np.random.SeedSequence([*self._seed_epoch, 1]).generate_state(1)[0])
            random = self._xp.random
            self._dev = random.Generator(random.Philox4x3210(derived, size=_DEVICE_RNG_STATES))
        return self._dev.random(shape, dtype=dtype)


# --- optimizer steps on CuPy: one ElementwiseKernel launch per step (models/optimizers.py) ---------
# Each body is written once, as statements that are C and Python alike (``T name = expr;`` and
# ``out = expr;`` over + - * / and sqrt), so the CuPy stand-in in the tests runs the same text with
# NumPy. Same operations in the same order as the optimizer's NumPy sequence and models.fused.
_OPTIMIZER_KERNELS: dict[str, tuple[str, str, str]] = {  # name -> (in_params, out_params, body)
    "dnnq_momentum_step": (
        "T g, T beta, T one_minus_beta, T lr",
        "T p, T v",
        "T vi = v * beta + g * one_minus_beta; v = vi; p = p - vi * lr;",
    ),
    "dnnq_rmsprop_step": (
        "T g, T beta2, T one_minus_beta2, T eps, T lr",
        "T p, T s",
        "T si = s * beta2 + (g * g) * one_minus_beta2; s = si; p = p - (g / (sqrt(si) + eps)) * lr;",
    ),
    "dnnq_adam_step": (
        "T g, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, T sqrt_c2, T eps, T lr_over_c1",
        "T p, T v, T s",
        "T vi = v * beta1 + g * one_minus_beta1; T si = s * beta2 + (g * g) * one_minus_beta2; "
        "v = vi; s = si; p = p - (vi / (sqrt(si) / sqrt_c2 + eps)) * lr_over_c1;",
    ),
}
_compiled_kernels: dict[tuple[Any, str], Any] = {}  # (xp, name) -> its ElementwiseKernel


def optimizer_kernel(xp: Any, name: str) -> Callable[..., object] | None:
    """The fused step ``name`` of _OPTIMIZER_KERNELS as one kernel on ``xp``'s device, called
    ``kernel(*inputs, *outputs)`` with the outputs updated in place; None on NumPy (models.fused's
    kernels serve the CPU).

    CuPy 13's ElementwiseKernel (cupy/_core/_kernel.pyx): output arrays passed explicitly are
    written in place and readable in the body (Chainer's optimizers are written this way), a scalar
    for a ``T`` parameter takes the arrays' dtype, and ``options`` go to NVRTC: ``--fmad=false``
    keeps ``a * b + c`` two roundings, as NumPy's passes round (no fused multiply-add), while NVRTC's
    defaults keep division and sqrt IEEE-exact (``-prec-div``, ``-prec-sqrt``).
    """
    if xp is np or getattr(xp, "__name__", "") != "cupy":
        return None
    key = (xp, name)
    if key not in _compiled_kernels:
        in_params, out_params, body = _OPTIMIZER_KERNELS[name]
        _compiled_kernels[key] = xp.ElementwiseKernel(
            in_params, out_params, body, name=name, options=("--fmad=false",), no_return=True
        )
    return _compiled_kernels[key]
