"""The client commands of `dnnq`, on the Python SDK (dnnq/client.py): datasets, submit, status,
watch, list, cancel, download and predict. Each takes the parsed arguments (dnnq/cli.py) and returns
the exit code; a failure the user can act on is a CliError or an SDK DnnqError, printed by cli.main
as one line (`_missing` names what a 404 did not find).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dnnq import wire
from dnnq.client import Client
from dnnq.errors import CliError, NotFound
from dnnq.job import TERMINAL

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "TERMINAL",
    "build_spec",
    "cmd_cancel",
    "cmd_datasets_delete",
    "cmd_datasets_list",
    "cmd_datasets_show",
    "cmd_datasets_synthetic",
    "cmd_datasets_upload",
    "cmd_delete",
    "cmd_download",
    "cmd_list",
    "cmd_predict",
    "cmd_status",
    "cmd_submit",
    "cmd_watch",
    "load_inputs",
]


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def _fmt(value: Any, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec) if isinstance(value, (int, float)) else str(value)


def _dataset_line(d: dict[str, Any]) -> str:
    classes = d.get("classes")
    extra = f", classes {classes}" if classes else ""
    return (
        f"{d.get('id')}  {d.get('name') or '-'}: {d.get('n_examples')} examples x {d.get('n_features')} "
        f"features, {d.get('n_outputs')} output(s), labels {d.get('label_kind')}{extra}"
    )


def _job_line(job: dict[str, Any]) -> str:
    progress = job.get("progress") or {}
    metrics = job.get("metrics") or {}
    line = f"job {job.get('id')}: {job.get('status')}"
    if progress.get("epochs"):
        line += f", epoch {progress.get('epoch') or 0}/{progress['epochs']}"
    loss = metrics.get("final_loss", progress.get("loss"))
    if loss is not None:
        line += f", loss {_fmt(loss)}"
    if metrics.get("train_accuracy") is not None:
        line += f", train accuracy {_fmt(metrics['train_accuracy'], '.4f')}"
    if metrics.get("validation_accuracy") is not None:
        line += f", validation accuracy {_fmt(metrics['validation_accuracy'], '.4f')}"
    if job.get("device"):
        line += f", on {job['device']}"
    if job.get("error"):
        line += f": {job['error']}"
    return line


def _sweep_line(job: dict[str, Any]) -> str:
    overrides = job.get("sweep_overrides") or {}
    changes = " ".join(f"{k.rsplit('.', 1)[-1]}={json.dumps(v)}" for k, v in sorted(overrides.items()))
    trial = f"trial {job.get('sweep_trial')} ({changes or 'the base spec'})"
    return f"sweep: {job['sweep_id']} {trial}, pack {job.get('sweep_pack')}"


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, args.api_key or "", timeout=args.timeout)  # "": no key, not $DNNQ_API_KEY again


@contextlib.contextmanager
def _missing(what: str) -> Iterator[None]:
    """A 404 from the calls inside as the one line "job 'x' not found (404)"."""
    try:
        yield
    except NotFound:
        raise CliError(f"{what} not found (404)") from None


def _page_json(page: Any) -> dict[str, Any]:
    return {"items": [item.data for item in page], "total": page.total, "offset": page.offset, "limit": page.limit}


def cmd_datasets_upload(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    fields = {
        "target": args.target,
        "x_key": args.x_key,
        "y_key": args.y_key,
        "layout": args.layout,
        "name": args.name,
        "header": args.header,
    }
    with _client(args) as client:
        dataset = client.upload(path, **fields).data
    _print_json(dataset) if args.json else print(_dataset_line(dataset))
    return 0


def cmd_datasets_synthetic(args: argparse.Namespace) -> int:
    params = {
        "n_samples": args.n_samples,
        "noise": args.noise,
        "seed": args.seed,
        "n_classes": args.n_classes,
        "n_features": args.n_features,
    }
    with _client(args) as client:
        dataset = client.synthetic(args.name, **params).data
    _print_json(dataset) if args.json else print(_dataset_line(dataset))
    return 0


def cmd_datasets_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = client.datasets(offset=args.offset, limit=args.limit)
    if args.json:
        _print_json(_page_json(page))
        return 0
    if not page:
        print("no datasets: add one with `dnnq datasets upload FILE` or `dnnq datasets synthetic moons`")
    for d in page:
        print(_dataset_line(d.data))
    return 0


def cmd_datasets_show(args: argparse.Namespace) -> int:
    with _client(args) as client, _missing(f"dataset '{args.id}'"):
        dataset = client.dataset(args.id).data
    _print_json(dataset) if args.json else print(_dataset_line(dataset))
    return 0


def cmd_datasets_delete(args: argparse.Namespace) -> int:
    with _client(args) as client, _missing(f"dataset '{args.id}'"):
        client.dataset(args.id).delete()
    _print_json({"deleted": args.id}) if args.json else print(f"dataset {args.id} deleted")
    return 0


def _set(spec: dict[str, Any], dotted: str, value: Any) -> None:
    node = spec
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise CliError(f"the spec's '{key}' must be a JSON object")
    node[leaf] = value


def _parse_hidden(text: str) -> list[int]:
    if text.strip() == "":
        return []
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise CliError(f"--hidden must be comma-separated layer sizes like 20,7,5; got {text!r}", exit_code=2) from None


# flag dest -> spec path (flags left unset keep the spec's or the server's defaults)
_SPEC_FLAGS = {
    "dataset": "dataset_id",
    "validation_dataset": "validation_dataset_id",
    "activation": "model.hidden_activation",
    "output": "model.output",
    "optimizer": "training.optimizer",
    "lr": "training.learning_rate",
    "beta": "training.beta",
    "beta1": "training.beta1",
    "beta2": "training.beta2",
    "lr_decay": "training.lr_decay",
    "decay_rate": "training.decay_rate",
    "decay_every": "training.decay_every",
    "epochs": "training.epochs",
    "batch_size": "training.batch_size",
    "init": "training.init",
    "seed": "training.seed",
    "dtype": "training.dtype",
    "l2": "training.l2",
    "dropout_keep_prob": "training.dropout_keep_prob",
    "checkpoint_every": "training.checkpoint_every",
    "scale": "preprocess.scale",
    "device": "device",
}


def build_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The job spec: SPEC.json if given, then every flag that was set, at its place in the spec."""
    spec: dict[str, Any] = {}
    if args.spec:
        path = Path(args.spec)
        try:
            spec = json.loads(path.read_text())
        except FileNotFoundError:
            raise CliError(f"no such file: {path}") from None
        except json.JSONDecodeError as exc:
            raise CliError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        if not isinstance(spec, dict):
            raise CliError(f"{path} must hold a JSON object (a job spec), not {type(spec).__name__}")
    for dest, dotted in _SPEC_FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            _set(spec, dotted, value)
    if args.hidden is not None:
        _set(spec, "model.hidden_layers", _parse_hidden(args.hidden))
    if args.no_shuffle:
        _set(spec, "training.shuffle", False)
    if args.wait_for_worker:
        spec["wait_for_worker"] = True
    if "dataset_id" not in spec:
        raise CliError(
            "no dataset: pass --dataset ID (see `dnnq datasets list`) or put dataset_id in SPEC.json", exit_code=2
        )
    return spec


def cmd_submit(args: argparse.Namespace) -> int:
    spec = build_spec(args)
    with _client(args) as client:
        job = client.submit(spec, idempotency_key=args.idempotency_key).data
    if args.quiet:
        print(job["id"])
    elif args.json:
        _print_json(job)
    else:
        print(f"submitted {_job_line(job)}")
        print(f"  follow it: dnnq watch {job['id']}")
    if args.watch:
        return cmd_watch(argparse.Namespace(**{**vars(args), "id": job["id"]}))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client, _missing(f"job '{args.id}'"):
        path = f"/v1/jobs/{wire.resource_id('job', args.id)}"
        job = client.request_json("GET", path, params={"history": "full" if args.history else "none"})
    if args.json:
        _print_json(job)
        return 0
    print(_job_line(job))
    for key in (
        "created_at",
        "started_at",
        "finished_at",
        "dataset_id",
        "attempts",
        "resumed_from_epoch",
        "released_at",
        "release_reason",
        "celery_task_id",
    ):
        if job.get(key) not in (None, ""):
            print(f"  {key}: {job[key]}")
    if job.get("sweep_id"):  # a sweep's trial: `dnnq sweep-status ID` shows the others
        print(f"  {_sweep_line(job)}")
    for entry in job.get("history") or []:
        print(f"  epoch {entry.get('epoch')}: loss {_fmt(entry.get('loss'))} accuracy {_fmt(entry.get('accuracy'))}")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from dnnq.progress import ProgressBar

    with _client(args) as client, _missing(f"job '{args.id}'"):
        job = client.job(args.id)
        progress = job.data.get("progress") or {}
        epochs = progress.get("epochs") or ((job.data.get("spec") or {}).get("training") or {}).get("epochs")
        bar = ProgressBar(epochs)
        if progress.get("epoch") and job.status not in TERMINAL:  # an ended job gets its final line only
            bar.update(progress["epoch"], progress.get("loss"))

        def on_epoch(entry: dict[str, Any]) -> None:
            bar.update(
                int(entry.get("epoch") or 0), entry.get("loss"), entry.get("accuracy"), epochs=entry.get("epochs")
            )

        job.wait(on_epoch=on_epoch)
    bar.finish(_job_line(job.data))
    return 0 if job.status == "succeeded" else 1


def cmd_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = client.jobs(status=args.status, offset=args.offset, limit=args.limit)
    if args.json:
        _print_json(_page_json(page))
        return 0
    if not page:
        print("no jobs" + (f" with status {args.status}" if args.status else ""))
    for job in page:
        print(f"{_job_line(job.data)}  (created {job.data.get('created_at', '-')})")
    if page.total > len(page) + args.offset:
        print(f"... {page.total} in all: use --offset/--limit")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client, _missing(f"job '{args.id}'"):
        job = client.job(args.id).cancel().data
    _print_json(job) if args.json else print(_job_line(job))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """409 while the job is queued or running: the server's message says to cancel first."""
    with _client(args) as client, _missing(f"job '{args.id}'"):
        client.job(args.id).delete()
    _print_json({"deleted": args.id}) if args.json else print(f"job {args.id} deleted")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    out = Path(args.output or f"{args.id}.{args.format}")
    with _client(args) as client:
        with _missing(f"job '{args.id}'"):
            job = client.job(args.id)  # an unknown job is "not found (404)"; a 404 below: a missing format
        job.download(out, format=args.format)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"{out}: {out.stat().st_size} bytes, sha256 {digest} (matches the server's ETag)")
    return 0


def load_inputs(path: Path) -> np.ndarray:
    """Examples as rows from .npz (array X), .npy or .csv (a header row is skipped)."""
    import numpy as np

    if not path.is_file():
        raise CliError(f"no such file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                if "X" not in npz.files:
                    raise CliError(f"{path} has no array 'X' (it has: {', '.join(npz.files) or 'none'})")
                X = npz["X"]
        elif suffix == ".npy":
            X = np.load(path, allow_pickle=False)
        elif suffix == ".csv":
            with open(path) as fh:
                first = fh.readline()
            try:
                [float(v) for v in first.strip().split(",")]
                skip = 0
            except ValueError:
                skip = 1
            X = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2)
        else:
            raise CliError(f"{path}: unsupported input type '{suffix}'; use .npz (array X), .npy or .csv")
    except ValueError as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    if X.dtype == object or not np.issubdtype(X.dtype, np.number):
        raise CliError(f"{path}: inputs must be numeric, got dtype {X.dtype}")
    if X.ndim == 1:
        X = X.reshape(1, -1)
    elif X.ndim > 2:
        X = X.reshape(X.shape[0], -1)
    return X


def cmd_predict(args: argparse.Namespace) -> int:
    X = load_inputs(Path(args.input))
    with _client(args) as client:
        with _missing(f"job '{args.id}'"):
            job = client.job(args.id)
        if args.chunk:
            parts = [job.predict(X[start : start + args.chunk]) for start in range(0, max(len(X), 1), args.chunk)]
        else:  # split by the server's stated limits (GET /v1/limits)
            parts = [job.predict(X)]
    predictions = [v for p in parts for v in p.predictions.tolist()]
    probabilities = [r for p in parts if p.probabilities is not None for r in p.probabilities.tolist()] or None
    labels = [v for p in parts if p.labels is not None for v in p.labels] or None
    if args.json:
        _print_json({"predictions": predictions, "probabilities": probabilities, "labels": labels})
    else:  # the training set's class labels (e.g. cat/dog from a CSV); the outputs for a linear model
        for value in labels if labels is not None else predictions:
            print(value)
    return 0
