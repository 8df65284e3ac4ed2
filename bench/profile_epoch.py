"""Where one epoch of workload A goes: ``python -m bench.profile_epoch [--optimizer gd|adam] [--epochs N]``.

Times models.fit's stages (row gather, forward, output+loss, backward, optimizer update) by
wrapping the engine's methods, and inside them every ``xp.*`` call (matmuls by shape, elementwise
ufuncs) through a timing proxy for the array module; array operators (``+=``, ``*=``, ``-``) are
not xp calls and show up as the stage's remainder. The wrappers cost a little per call, so the
profiled epoch is somewhat slower than a plain one; it is printed next to a plain epoch and a
PyTorch epoch of the same case. Diagnostics only: it wraps the engine's methods and the row gather
fit calls (dnnq.models.engine.Engine, dnnq.models.training.take_rows) and says so when they change.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections import defaultdict

import numpy as np

from bench import ours, torch_ref, workloads

TIMES: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)


class TimedXp:
    """Stands in for numpy: each function call is timed under a name (matmul: with its shapes)."""

    def __init__(self, xp):
        self._xp = xp
        self.__name__ = xp.__name__

    def __getattr__(self, name):
        target = getattr(self._xp, name)
        if not callable(target) or isinstance(target, type):
            return target

        def timed(*args, **kwargs):
            key = name
            if name == "matmul":
                key = "matmul " + " @ ".join(
                    "x".join(map(str, a.shape)) + ("T" if not a.flags.c_contiguous else "") for a in args[:2]
                )
            t0 = time.perf_counter()
            out = target(*args, **kwargs)
            TIMES["xp." + key] += time.perf_counter() - t0
            CALLS["xp." + key] += 1
            return out

        return timed


def _wrap(cls, method: str, label: str) -> None:
    original = getattr(cls, method)

    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = original(self, *args, **kwargs)
        TIMES["stage " + label] += time.perf_counter() - t0
        CALLS["stage " + label] += 1
        return out

    setattr(cls, method, timed)


def _timed_call(fn, key: str):
    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        TIMES[key] += time.perf_counter() - t0
        CALLS[key] += 1
        return out

    return timed


def instrument() -> bool:
    try:
        import dnnq.models.training as training
        from dnnq.models.backend import Device
        from dnnq.models.engine import Engine
        from dnnq.models.optimizers import Optimizer
    except ImportError:
        return False
    engine = Engine
    if not all(hasattr(engine, m) for m in ("forward", "output", "backward")) or not hasattr(training, "take_rows"):
        print("note: models.engine.Engine or models.training.take_rows changed; profiling the total only")
        return False
    _wrap(engine, "forward", "forward")
    _wrap(engine, "output", "output+loss")
    _wrap(engine, "backward", "backward")
    for method in ("update", "update_flat", "update_prescaled_flat"):
        if hasattr(Optimizer, method):  # whichever fit calls (flat: all parameters in one array)
            _wrap(Optimizer, method, "optimizer")
    proxy = TimedXp(np)
    from dnnq.models import fused

    wanted = fused.engine_wanted  # the engine sees the proxy as its xp: its kernels still run
    fused.engine_wanted = lambda xp, *a: wanted(np if xp is proxy else xp, *a)
    for name in (
        "bias_relu_",
        "relu_backward_",
        "softmax_head_",
        "softmax_tail_",
        "output_grad_",
        "momentum_",
        "rmsprop_",
        "adam_",
    ):
        if hasattr(fused, name):  # each compiled kernel timed under its name
            setattr(fused, name, _timed_call(getattr(fused, name), "fused." + name))
    take_rows = training.take_rows

    def timed_gather(xp, *args):  # the real NumPy gather (a compiled kernel when models.fused runs)
        t0 = time.perf_counter()
        take_rows(np if xp is proxy else xp, *args)
        TIMES["stage gather"] += time.perf_counter() - t0
        CALLS["stage gather"] += 1

    training.take_rows = timed_gather
    original_select = training.select_device
    training.select_device = lambda d: Device(proxy, "cpu") if d == "cpu" else original_select(d)
    import dnnq.models.optimizers as optimizers

    optimizers.get_namespace = lambda *a: proxy
    return True


def gemm_shapes(layer_dims: list[int], batch: int) -> list[tuple[str, tuple, tuple, bool, bool]]:
    """The matmuls of one step in fit's examples-first layout: (label, a shape, b shape, a.T?, b.T?)."""
    out = []
    for l in range(1, len(layer_dims)):
        n_prev, n_l = layer_dims[l - 1], layer_dims[l]
        out.append((f"fwd Z{l} = A{l - 1} @ W{l}.T", (batch, n_prev), (n_l, n_prev), False, True))
        out.append((f"dW{l} = dZ{l}.T @ A{l - 1}", (batch, n_l), (batch, n_prev), True, False))
        if l > 1:
            out.append((f"dA{l - 1} = dZ{l} @ W{l}", (batch, n_l), (n_l, n_prev), False, False))
    return out


def gemm_table(layer_dims: list[int], batch: int, dtype: str = "float32", reps: int = 200) -> None:
    """Median time of each step matmul in NumPy (its OpenBLAS) and in PyTorch (its BLAS), same threads."""
    import torch

    rng = np.random.default_rng(0)
    print(f"per-step matmuls, median of {reps} ({dtype}, batch {batch}); x steps/epoch = per-epoch cost")
    print(f"  {'matmul':28} {'numpy us':>9} {'torch us':>9} {'numpy/torch':>11}")
    tot_np = tot_t = 0.0
    for label, sa, sb, ta, tb in gemm_shapes(layer_dims, batch):
        a = rng.standard_normal(sa).astype(dtype)
        b = rng.standard_normal(sb).astype(dtype)
        A, B = (a.T if ta else a), (b.T if tb else b)
        out = np.empty((A.shape[0], B.shape[1]), dtype=dtype)
        At, Bt = torch.from_numpy(a), torch.from_numpy(b)
        At, Bt = (At.T if ta else At), (Bt.T if tb else Bt)
        outt = torch.empty(tuple(out.shape), dtype=getattr(torch, dtype))
        times = {}
        numpy_step = functools.partial(np.matmul, A, B, out=out)
        torch_step = functools.partial(torch.matmul, At, Bt, out=outt)
        for who, fn in (("numpy", numpy_step), ("torch", torch_step)):
            ts = []
            for _ in range(reps + 5):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            times[who] = float(np.median(ts[5:]))
        tot_np, tot_t = tot_np + times["numpy"], tot_t + times["torch"]
        ratio = times["numpy"] / times["torch"]
        print(f"  {label:28} {1e6 * times['numpy']:9.1f} {1e6 * times['torch']:9.1f} {ratio:11.2f}")
    print(f"  {'sum per step':28} {1e6 * tot_np:9.1f} {1e6 * tot_t:9.1f} {tot_np / tot_t:11.2f}")


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_epoch")
    p.add_argument("--optimizer", choices=["gd", "adam"], default="gd")
    p.add_argument("--epochs", type=int, default=2, help="epochs per run; the first is a warm-up")
    p.add_argument("--threads", type=int, default=None, help="cap BLAS/OpenMP pools and torch at N threads")
    args = p.parse_args()
    if args.threads:
        import torch
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=args.threads)
        torch.set_num_threads(args.threads)
    case = workloads.workload_a(quick=True)[0 if args.optimizer == "gd" else 1]
    case.epochs = max(2, args.epochs)
    gemm_table(case.layer_dims, case.batch_size)
    plain = ours.train(case)
    ref = torch_ref.train(case, threads=args.threads)
    if not instrument():
        return 1
    TIMES.clear(), CALLS.clear()
    prof = ours.train(case)
    n = case.epochs  # everything was timed over all epochs; show per epoch
    print(
        f"workload A {args.optimizer}: plain epoch {np.median(plain['epoch_s'][1:]):.3f} s, "
        f"profiled epoch {np.median(prof['epoch_s'][1:]):.3f} s, torch epoch {np.median(ref['epoch_s'][1:]):.3f} s"
    )
    xp_in_stage = sum(v for k, v in TIMES.items() if k.startswith("xp."))
    epoch_total = sum(prof["epoch_s"])
    print(f"{'where (per epoch, averaged over ' + str(n) + ' epochs)':58} {'s':>7} {'share':>6} {'calls':>7}")
    for key, value in sorted(TIMES.items(), key=lambda kv: -kv[1]):
        print(f"  {key:56} {value / n:7.3f} {100 * value / epoch_total:5.1f}% {CALLS[key] // n:7d}")
    stages = sum(v for k, v in TIMES.items() if k.startswith("stage "))
    print(f"  {'(outside the stages: gather, loop, bookkeeping)':56} {(epoch_total - stages) / n:7.3f}")
    print(f"  {'(xp calls in all)':56} {xp_in_stage / n:7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
