"""`dnnq sweep`, `sweep-status`, `sweep-cancel`, `sweep-delete`: many trials of one spec in one request
(POST /v1/sweeps), and their ends.

    dnnq sweep DATASET --lr 0.001,0.01,0.1 --seed 1,2 [--epochs 50] [--spec base.json] [--grid grid.json] [--wait]

Each list flag is one field of the grid (its cartesian product is the trials); --grid adds a JSON
object of field -> list of values; --spec is the base JobSpec (the flags' values override it). With
--wait, a progress table (one line per trial: status, epoch, loss; the best marked *) until every
trial has finished, following the sweep's event stream. On the SDK (dnnq/client.py, dnnq/sweep.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from dnnq.client import Client, CliError
from dnnq.sweep import Sweep

__all__ = ["add_parsers", "cmd_sweep", "cmd_sweep_cancel", "cmd_sweep_delete", "cmd_sweep_status", "progress_table"]

# flag -> (the field it sweeps, how one value is read)
_FLOAT, _INT, _TEXT = float, int, str
LIST_FLAGS: dict[str, tuple[str, Any]] = {
    "lr": ("training.learning_rate", _FLOAT),
    "l2": ("training.l2", _FLOAT),
    "keep_prob": ("training.dropout_keep_prob", _FLOAT),
    "seed": ("training.seed", _INT),
    "epochs": ("training.epochs", _INT),
    "batch_size": ("training.batch_size", _INT),
    "init": ("training.init", _TEXT),
    "optimizer": ("training.optimizer", _TEXT),
    "beta": ("training.beta", _FLOAT),
    "beta1": ("training.beta1", _FLOAT),
    "beta2": ("training.beta2", _FLOAT),
    "decay_rate": ("training.decay_rate", _FLOAT),
}


def add_parsers(sub: Any, client_opts: argparse.ArgumentParser) -> None:
    """Register `sweep`, `sweep-status`, `sweep-cancel` and `sweep-delete` on the CLI's subcommands (dnnq/cli.py)."""
    p = sub.add_parser("sweep", parents=[client_opts], help="submit a sweep: one job per combination of values")
    p.add_argument("dataset", metavar="DATASET", help="the training dataset's id")
    for flag, (field, kind) in LIST_FLAGS.items():
        p.add_argument(f"--{flag.replace('_', '-')}", metavar="V1,V2,...", help=f"values of {field} ({kind.__name__})")
    p.add_argument("--hidden", metavar="20,7,5;10,5", help="hidden layer lists to sweep, separated by ';'")
    p.add_argument("--spec", metavar="BASE.json", help="the base job spec (as for `dnnq submit`)")
    p.add_argument("--grid", metavar="GRID.json", help="a JSON object: field -> list of values")
    p.add_argument("--validation-dataset")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"))
    p.add_argument("--wait-for-worker", action="store_true", help="queue even if no worker serves the queue yet")
    p.add_argument("--idempotency-key")
    p.add_argument("--metric", choices=("val_loss", "loss", "val_accuracy", "accuracy"), help="rank trials by this")
    p.add_argument("--wait", action="store_true", help="then show a progress table until every trial has finished")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes with --wait")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("sweep-status", parents=[client_opts], help="a sweep's trials and its best")
    p.add_argument("id")
    p.add_argument("--metric", choices=("val_loss", "loss", "val_accuracy", "accuracy"))
    p.set_defaults(func=cmd_sweep_status)

    p = sub.add_parser("sweep-cancel", parents=[client_opts], help="cancel every unfinished trial of a sweep")
    p.add_argument("id")
    p.set_defaults(func=cmd_sweep_cancel)

    p = sub.add_parser(
        "sweep-delete", parents=[client_opts], help="delete a finished sweep: its trials' records, histories and files"
    )
    p.add_argument("id")
    p.set_defaults(func=cmd_sweep_delete)


def _values(text: str, kind: Any, flag: str) -> list[Any]:
    try:
        return [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CliError(f"--{flag} takes comma-separated {kind.__name__} values; got {text!r}", exit_code=2) from None


def _read_json(path: str, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CliError(f"cannot read {what} {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise CliError(f"{what} {path} is not JSON: {exc}") from None


def build_request(args: argparse.Namespace) -> dict[str, Any]:
    """The POST /v1/sweeps body from the command line."""
    base = _read_json(args.spec, "spec file") if args.spec else {}
    if not isinstance(base, dict):
        raise CliError("the spec file must hold a JSON object (a job spec)")
    base["dataset_id"] = args.dataset
    if args.validation_dataset:
        base["validation_dataset_id"] = args.validation_dataset
    if args.device:
        base["device"] = args.device
    if args.wait_for_worker:
        base["wait_for_worker"] = True
    grid = _read_json(args.grid, "grid file") if args.grid else {}
    if not isinstance(grid, dict):
        raise CliError("the grid file must hold a JSON object: field -> list of values")
    for flag, (field, kind) in LIST_FLAGS.items():
        text = getattr(args, flag, None)
        if text is not None:
            grid[field] = _values(text, kind, flag.replace("_", "-"))
    if args.hidden is not None:
        grid["model.hidden_layers"] = [_values(part, int, "hidden") for part in args.hidden.split(";")]
    if not grid:
        raise CliError("nothing to sweep: give values such as --lr 0.001,0.01,0.1 or a --grid file", exit_code=2)
    return {"base": base, "grid": grid}


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, (int, float)) else "-"


def _short(overrides: dict[str, Any]) -> str:
    return " ".join(f"{k.rsplit('.', 1)[-1]}={json.dumps(v)}" for k, v in overrides.items())


def progress_table(view: dict[str, Any]) -> str:
    """One line per trial (status, epoch, the last epoch's loss, the value it is ranked by; the best marked
    *), then the best."""
    metric = view["metric"]
    lines = [f"  {'#':>3}  {'status':<10} {'epoch':>13}  {'last loss':>10}  {'by ' + metric:>12}  overrides"]
    for t in view["trials"]:
        progress = t.get("progress") or {}
        epoch = f"{progress.get('epoch', 0)}/{progress.get('epochs') or '?'}"
        mark = "*" if t.get("best") else " "
        lines.append(
            f"{mark} {t['index']:>3}  {t['status']:<10} {epoch:>13}  {_fmt(progress.get('loss')):>10}  "
            f"{_fmt(t.get('value')):>12}  {_short(t['overrides'])}"
        )
    best = view.get("best")
    counts = ", ".join(f"{n} {s}" for s, n in sorted(view["counts"].items()))
    lines.append(f"sweep {view['id']}: {view['status']} ({counts})")
    if best:
        lower = "lower" if view["lower_is_better"] else "higher"
        lines.append(
            f"best: trial {best['index']} ({best['job_id']}), {metric} {_fmt(best['value'])} ({lower} is better)"
        )
    return "\n".join(lines)


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, args.api_key or "", timeout=args.timeout)  # "": no key, not $DNNQ_API_KEY again


class _Table:
    """The progress table, redrawn in place on a terminal (appended on a pipe) when it changes."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.shown: str | None = None

    def show(self, view: dict[str, Any]) -> None:
        table = progress_table(view)
        if table == self.shown or self.quiet:
            return
        if self.shown is not None and sys.stdout.isatty():
            print(f"\x1b[{self.shown.count(chr(10)) + 1}F\x1b[J", end="")  # redraw in place
        print(table, flush=True)
        self.shown = table


def _watch(sweep: Sweep, args: argparse.Namespace) -> Sweep:
    """Follow the sweep's event stream; the table is read again at most every --interval seconds."""
    table = _Table(quiet=args.json)
    interval = max(0.1, args.interval)
    drawn = time.monotonic()
    table.show(sweep.refresh(args.metric).data)

    def on_update(_trial: dict[str, Any]) -> None:
        nonlocal drawn
        if time.monotonic() - drawn >= interval:
            table.show(sweep.refresh().data)
            drawn = time.monotonic()

    sweep.wait(on_update=on_update, poll_interval=interval)
    table.show(sweep.data)
    return sweep


def _exit_code(view: dict[str, Any]) -> int:
    return 0 if view["counts"].get("succeeded") else 1


def cmd_sweep(args: argparse.Namespace) -> int:
    body = build_request(args)
    with _client(args) as client:
        sweep = client.sweep(base=body["base"], grid=body["grid"], idempotency_key=args.idempotency_key)
        if not args.wait:
            view = sweep.data
            print(json.dumps(view, indent=2) if args.json else f"{view['id']} ({view['n_trials']} trials queued)")
            return 0
        if not args.json:
            print(f"sweep {sweep.id}: {sweep.n_trials} trials queued", flush=True)
        view = _watch(sweep, args).data
        if args.json:
            print(json.dumps(view, indent=2))
        return _exit_code(view)


def cmd_sweep_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        view = client.get_sweep(args.id, metric=args.metric).data
    print(json.dumps(view, indent=2) if args.json else progress_table(view))
    return 0


def cmd_sweep_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        view = client.get_sweep(args.id).cancel().data
    print(json.dumps(view, indent=2) if args.json else progress_table(view))
    return 0


def cmd_sweep_delete(args: argparse.Namespace) -> int:
    """409 while a trial is queued or running: the server's message says to cancel first."""
    with _client(args) as client:
        client.get_sweep(args.id).delete()
    print(json.dumps({"deleted": args.id}) if args.json else f"sweep {args.id} deleted")
    return 0
