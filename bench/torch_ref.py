"""PyTorch reference: the same network, data, init, batch size, optimizer and shuffling work.

Data go to the device as tensors once, up front, examples-first. The input tensor does not require
a gradient, so autograd skips dA0 exactly as ``models.fit`` does. The loss is accumulated on the
device and read back once per epoch (``.item()`` syncs), as fit does.

Shuffled mini-batches are timed in both ordinary forms, and the faster is the reference (``train``):
- "indexed": PyTorch's idiomatic loop, a fresh permutation each epoch and each batch's rows indexed
  (``X[perm[s:e]]``), as a DataLoader over a TensorDataset with shuffle=True does;
- "gather": the whole epoch gathered once with ``index_select``, then sliced (one copy of X per
  epoch, as our shuffled fit does).
Full batches have one form ("full"): the textbook loop does not shuffle.
"""

from __future__ import annotations

import os
import time

import numpy as np

from bench.workloads import Case, initial_parameters


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(case: Case, device):
    import torch
    from torch import nn

    dtype = getattr(torch, case.dtype)
    layers: list[nn.Module] = []
    dims = case.layer_dims
    for l in range(1, len(dims)):
        layers.append(nn.Linear(dims[l - 1], dims[l]))
        if l < len(dims) - 1:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers).to(device=device, dtype=dtype)
    params = initial_parameters(case)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for l, lin in enumerate(linears, start=1):
            lin.weight.copy_(torch.from_numpy(params[f"W{l}"]))  # (n_l, n_{l-1}): same layout as ours
            lin.bias.copy_(torch.from_numpy(params[f"b{l}"].ravel()))
    return model


FORMS = ("indexed", "gather")


def train(case: Case, device_name: str = "cpu", threads: int | None = None) -> dict:
    """The faster form's run (its steady epochs' median), with every form's median under "forms"."""
    if case.batch_size is None:
        run = train_form(case, device_name, threads, "full")
        run["forms"] = {"full": _steady(run, case)}
        return run
    runs = {form: train_form(case, device_name, threads, form) for form in FORMS}
    medians = {form: _steady(run, case) for form, run in runs.items()}
    best = min(medians, key=lambda form: medians[form])
    return {**runs[best], "forms": medians}


def _steady(run: dict, case: Case) -> float:
    return float(np.median(run["epoch_s"][case.warmup :] or run["epoch_s"]))


def train_form(case: Case, device_name: str = "cpu", threads: int | None = None, form: str = "indexed") -> dict:
    """Train ``case`` once in ``form`` (FORMS, or "full"); return per-epoch seconds, the last
    epoch's mean loss and the final parameters.

    ``threads`` defaults to os.cpu_count(), as the brief asks of the reference."""
    import torch
    from torch import nn

    torch.set_num_threads(threads or os.cpu_count() or 1)
    device = torch.device("cuda" if device_name == "gpu" else "cpu")
    dtype = getattr(torch, case.dtype)
    model = build_model(case, device)
    X = torch.from_numpy(np.ascontiguousarray(case.X)).to(device=device, dtype=dtype)  # (m, n_x)
    if case.output == "softmax":
        y = torch.from_numpy(case.y).to(device)  # (m,) int64
        loss_fn = nn.CrossEntropyLoss()
    else:
        y = torch.from_numpy(case.y).to(device=device, dtype=dtype).reshape(-1, 1)  # (m, 1)
        loss_fn = nn.BCEWithLogitsLoss()  # sigmoid + BCE fused, as ours fuses dZ = AL - Y
    if case.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=case.learning_rate, betas=(0.9, 0.999), eps=1e-8)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=case.learning_rate, momentum=0.0)
    m = X.shape[0]
    bs = case.batch_size or m
    gen = torch.Generator(device=device).manual_seed(case.seed)
    epoch_s: list[float] = []
    last_loss = float("nan")
    _sync(device)
    for _ in range(case.epochs):
        t0 = time.perf_counter()
        perm = None if case.batch_size is None else torch.randperm(m, generator=gen, device=device)
        if form == "gather" and perm is not None:
            Xs, ys = X.index_select(0, perm), y.index_select(0, perm)
        else:
            Xs, ys = X, y  # full batch: the textbook loop does not shuffle
        total = torch.zeros((), device=device, dtype=dtype)
        for start in range(0, m, bs):
            if form == "indexed" and perm is not None:
                rows = perm[start : start + bs]
                xb, yb = X[rows], y[rows]
            else:
                xb, yb = Xs[start : start + bs], ys[start : start + bs]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            total += loss.detach() * xb.shape[0]
        last_loss = total.item() / m  # .item() syncs the device: once per epoch
        epoch_s.append(time.perf_counter() - t0)
    linears = [mod for mod in model if isinstance(mod, nn.Linear)]
    params = {}
    for l, lin in enumerate(linears, start=1):
        params[f"W{l}"] = lin.weight.detach().cpu().numpy()
        params[f"b{l}"] = lin.bias.detach().cpu().numpy().reshape(-1, 1)
    return {"epoch_s": epoch_s, "loss": last_loss, "parameters": params, "form": form}


def gemm_gflops(device_name: str, n: int, dtype: str, repeats: int = 5) -> float:
    """Median GFLOP/s of an n x n x n matmul with PyTorch (used for the GPU's rate)."""
    import torch

    device = torch.device("cuda" if device_name == "gpu" else "cpu")
    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    times = []
    for _ in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / float(np.median(times[1:])) / 1e9
