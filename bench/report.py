"""Figures per case (medians, GFLOP/s, ratios, goals), the closing summary table, and the JSON file."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

# Goals from issue 2, section 4, as time ratios ours / reference (< 1 = we are faster).
CPU_GOALS = {"A": {"torch": 0.85, "sklearn": 0.5}, "B": {"torch": 0.8}}
GPU_TORCH_GOAL = 1 / 0.9  # >= 0.9x PyTorch's throughput == time ratio <= 1.11


def median_epoch(runs: list[dict], warmup: int) -> float:
    """Median over all runs of the epochs after the warm-up ones."""
    samples = [s for run in runs for s in run["epoch_s"][warmup:]]
    return statistics.median(samples)


def goals_for(workload: str, device: str) -> dict[str, float]:
    if device == "gpu":
        return {"torch": GPU_TORCH_GOAL}
    return CPU_GOALS.get(workload, {})


def summarise(
    case,
    device: str,
    ours: list[dict],
    torch: list[dict],
    sk: list[dict],
    gemm_gflops: float | None,
    ours_eager: list[dict] | None = None,
) -> dict:
    """``ours_eager``: GPU runs with step graphs off, reported beside ours (no goal)."""
    flops = case.flops_per_epoch()
    fig: dict = {
        "case": case.name,
        "workload": case.workload,
        "device": device,
        "dtype": case.dtype,
        "layer_dims": case.layer_dims,
        "optimizer": case.optimizer,
        "batch_size": case.batch_size,
        "epochs_per_run": case.epochs,
        "warmup_epochs": case.warmup,
        "runs": len(torch),
        "data": case.data_note,
        "gflop_per_epoch": flops / 1e9,
        "times": {},
        "gflops": {},
        "ratios": {},
        "goals": {},
        "loss": {},
    }
    fig["times"]["torch"] = median_epoch(torch, case.warmup)
    fig["loss"]["torch"] = torch[-1]["loss"]
    if "forms" in torch[-1]:  # every PyTorch form's median (bench/torch_ref.py); the faster is the reference
        fig["torch_forms"] = {
            form: statistics.median(run["forms"][form] for run in torch if form in run.get("forms", {}))
            for form in torch[-1]["forms"]
        }
    if sk:
        fig["times"]["sklearn"] = statistics.median(r["epoch_s"] for r in sk)
        fig["loss"]["sklearn"] = sk[-1]["loss"]
    if ours:
        fig["times"]["ours"] = median_epoch(ours, case.warmup)
        fig["loss"]["ours"] = ours[-1]["loss"]
        fig["fit_device"] = ours[-1]["device"]
        if ours[-1].get("step_graph") is not None:
            fig["step_graph"] = ours[-1]["step_graph"]
        for ref in ("torch", "sklearn"):
            if ref in fig["times"]:
                fig["ratios"][ref] = fig["times"]["ours"] / fig["times"][ref]
        for ref, limit in goals_for(case.workload, device).items():
            if ref in fig["ratios"]:
                fig["goals"][ref] = {"limit": limit, "met": fig["ratios"][ref] <= limit}
        fig["sanity"] = sanity(case, ours[-1], torch[-1])
    if ours_eager:
        fig["times"]["ours_eager"] = median_epoch(ours_eager, case.warmup)
        fig["loss"]["ours_eager"] = ours_eager[-1]["loss"]
    for who, t in fig["times"].items():
        fig["gflops"][who] = flops / t / 1e9
    if gemm_gflops:
        fig["gemm_gflops"] = gemm_gflops
        fig["fraction_of_gemm"] = {who: g / gemm_gflops for who, g in fig["gflops"].items()}
    return fig


def sanity(case, ours: dict, torch: dict) -> dict:
    """Our final loss against torch's. Full batch from the same init is deterministic: it must match
    closely; shuffled mini-batches follow different orders, so only 'similar' is asked there."""
    a, b = ours["loss"], torch["loss"]
    rel = abs(a - b) / max(abs(b), 1e-12)
    if case.batch_size is None:
        tol = 1e-6 if case.dtype == "float64" else 1e-3
        pdiff = max(
            float(
                abs(ours["parameters"][k] - torch["parameters"][k]).max()
                / max(abs(torch["parameters"][k]).max(), 1e-30)
            )
            for k in torch["parameters"]
        )
        return {
            "loss_rel_diff": rel,
            "param_max_rel_diff": pdiff,
            "tolerance": tol,
            "ok": rel <= tol and pdiff <= max(tol * 100, 1e-4),
        }
    return {"loss_rel_diff": rel, "tolerance": 0.15, "ok": rel <= 0.15}


def print_case(fig: dict) -> None:
    t, g = fig["times"], fig["gflops"]
    print(
        f"\n== {fig['case']} ({fig['device']}, {fig['dtype']}, {'-'.join(map(str, fig['layer_dims']))}, "
        f"{fig['optimizer']}, batch {fig['batch_size'] or 'full'}) "
        f"{fig['gflop_per_epoch']:.2f} GFLOP/epoch; {fig['data']}"
    )
    unit = "iteration" if fig["batch_size"] is None else "epoch"
    for who in ("ours", "ours_eager", "torch", "sklearn"):
        if who in t:
            frac = fig.get("fraction_of_gemm", {}).get(who)
            frac_s = f", {100 * frac:.0f}% of GEMM rate" if frac is not None else ""
            loss = fig["loss"].get(who)
            print(f"  {who:8} {t[who]:.4f} s/{unit} (median)  {g[who]:7.1f} GFLOP/s{frac_s}  final loss {loss:.6g}")
    if len(fig.get("torch_forms", {})) > 1:
        forms = ", ".join(f"{form} {s:.4f} s" for form, s in fig["torch_forms"].items())
        print(f"  torch forms (median s/{unit}): {forms}; the reference is each run's faster form")
    if "step_graph" in fig:
        print(
            f"  ours: step graphs {fig['step_graph']}"
            + ("; ours_eager: the same, kernel by kernel" if "ours_eager" in t else "")
        )
    for ref, r in fig["ratios"].items():
        goal = fig["goals"].get(ref)
        verdict = f"goal <= {goal['limit']:.2f}: {'MET' if goal['met'] else 'MISSED'}" if goal else "no goal"
        print(f"  ratio ours/{ref}: {r:.3f}  ({verdict})")
    la = fig.get("load_avg_1min")
    if la:
        busy = (
            "  BUSY: other work shared the cores, figures are noisy"
            if max(la["before"], la["after"]) > la["nproc"]
            else ""
        )
        print(
            f"  machine load (1-min average) {la['before']:.1f} before, {la['after']:.1f} after, "
            f"nproc {la['nproc']}{busy}"
        )
    if "sanity" in fig:
        s = fig["sanity"]
        extra = f", params max rel diff {s['param_max_rel_diff']:.2e}" if "param_max_rel_diff" in s else ""
        print(f"  sanity: loss rel diff vs torch {s['loss_rel_diff']:.2e}{extra} -> {'ok' if s['ok'] else 'CHECK'}")


def print_summary(figs: list[dict]) -> None:
    print("\nSummary (s per epoch; per iteration for full batch; medians on a shared, noisy machine)")
    head = f"{'case':10} {'dev':4} {'ours':>9} {'torch':>9} {'sklearn':>9} {'o/torch':>8} {'o/sk':>7}  goals"
    print(head)
    print("-" * len(head))
    for f in figs:
        t, r = f["times"], f["ratios"]
        cell = lambda d, k, fmt: format(d[k], fmt) if k in d else "-"  # noqa: E731
        goals = ", ".join(f"{ref} {'met' if g['met'] else 'MISSED'}" for ref, g in f["goals"].items()) or "-"
        print(
            f"{f['case']:10} {f['device']:4} {cell(t, 'ours', '9.4f'):>9} {cell(t, 'torch', '9.4f'):>9} "
            f"{cell(t, 'sklearn', '9.4f'):>9} {cell(r, 'torch', '8.3f'):>8} {cell(r, 'sklearn', '7.3f'):>7}  {goals}"
        )


def write_json(path: str, env: dict, gemm: dict, figs: list[dict], argv: list[str]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(
        json.dumps({"command": argv, "environment": env, "gemm_gflops": gemm, "cases": figs}, indent=2, default=str)
        + "\n"
    )
    print(f"\nwrote {p}")
