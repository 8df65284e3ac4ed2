"""The `dnnq` console script: argument parsing and dispatch.

Server side: `up` (everything, supervised: dnnq/up.py), `api`, `worker`.
Client side (HTTP, dnnq/client.py): datasets, submit, status, watch, list, cancel, download, predict.
Every error is one line on stderr, `dnnq: error: ...`, and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dnnq.client import Client, CliError, decode

__all__ = ["build_parser", "main"]

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("succeeded", "failed", "cancelled")


# -- output helpers ---------------------------------------------------------------------------
def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def _fmt(value, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec) if isinstance(value, (int, float)) else str(value)


def _dataset_line(d: dict) -> str:
    classes = d.get("classes")
    extra = f", classes {classes}" if classes else ""
    return (
        f"{d.get('id')}  {d.get('name') or '-'}: {d.get('n_examples')} examples x {d.get('n_features')} "
        f"features, {d.get('n_outputs')} output(s), labels {d.get('label_kind')}{extra}"
    )


def _job_line(job: dict) -> str:
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


def _items(page) -> list:
    return page.get("items", []) if isinstance(page, dict) else list(page)


# -- client commands --------------------------------------------------------------------------
def _client(args) -> Client:
    return Client(args.url, args.api_key, timeout=args.timeout)


def cmd_datasets_upload(args) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    fields = {"target": args.target, "x_key": args.x_key, "y_key": args.y_key, "layout": args.layout, "name": args.name}
    with _client(args) as client:
        dataset = client.upload_dataset(path, fields)
    _print_json(dataset) if args.json else print(_dataset_line(dataset))
    return 0


def cmd_datasets_synthetic(args) -> int:
    body = {
        "name": args.name,
        "n_samples": args.n_samples,
        "noise": args.noise,
        "seed": args.seed,
        "n_classes": args.n_classes,
        "n_features": args.n_features,
    }
    with _client(args) as client:
        dataset = client.synthetic_dataset({k: v for k, v in body.items() if v is not None})
    _print_json(dataset) if args.json else print(_dataset_line(dataset))
    return 0


def cmd_datasets_list(args) -> int:
    with _client(args) as client:
        page = client.list_datasets(offset=args.offset, limit=args.limit)
    if args.json:
        _print_json(page)
        return 0
    items = _items(page)
    if not items:
        print("no datasets: add one with `dnnq datasets upload FILE` or `dnnq datasets synthetic moons`")
    for d in items:
        print(_dataset_line(d))
    return 0


def cmd_datasets_show(args) -> int:
    with _client(args) as client:
        dataset = client.get_dataset(args.id)
    _print_json(dataset) if args.json else print(_dataset_line(dataset))
    return 0


def _set(spec: dict, dotted: str, value) -> None:
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


def build_spec(args) -> dict:
    spec: dict = {}
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


def cmd_submit(args) -> int:
    spec = build_spec(args)
    with _client(args) as client:
        job = client.submit(spec, idempotency_key=args.idempotency_key)
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


def cmd_status(args) -> int:
    with _client(args) as client:
        job = client.job(args.id, history="full" if args.history else "none")
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
    ):
        if job.get(key) not in (None, ""):
            print(f"  {key}: {job[key]}")
    for entry in job.get("history") or []:
        print(f"  epoch {entry.get('epoch')}: loss {_fmt(entry.get('loss'))} accuracy {_fmt(entry.get('accuracy'))}")
    return 0


def cmd_watch(args) -> int:
    from dnnq.progress import ProgressBar

    with _client(args) as client:
        job = client.job(args.id)
        epochs = (job.get("progress") or {}).get("epochs") or ((job.get("spec") or {}).get("training") or {}).get(
            "epochs"
        )
        bar = ProgressBar(epochs)
        done = (job.get("progress") or {}).get("epoch") or 0
        # Start after the epochs already done (Last-Event-ID = epoch): no replay of a long history.
        final, last_id = (job if job.get("status") in TERMINAL else None), (str(done) if done else None)
        if final is None and done:
            bar.update(done, (job.get("progress") or {}).get("loss"))
        for _attempt in range(0 if final else 5):  # a dropped stream resumes where it stopped
            for event, data, event_id in client.events(args.id, last_event_id=last_id):
                last_id = event_id if event_id is not None else last_id
                payload = decode(data)
                if event == "epoch" and isinstance(payload, dict):
                    bar.update(
                        int(payload.get("epoch") or 0),
                        payload.get("loss"),
                        payload.get("accuracy"),
                        epochs=payload.get("epochs"),
                    )
                elif event == "end":
                    final = payload if isinstance(payload, dict) else None
                    break
            if final is not None:
                break
            job = client.job(args.id)
            if job.get("status") in TERMINAL:
                final = job
                break
        if final is None or "status" not in final:
            final = client.job(args.id)
    bar.finish(_job_line(final))
    return 0 if final.get("status") == "succeeded" else 1


def cmd_list(args) -> int:
    with _client(args) as client:
        page = client.list_jobs(status=args.status, offset=args.offset, limit=args.limit)
    if args.json:
        _print_json(page)
        return 0
    items = _items(page)
    if not items:
        print("no jobs" + (f" with status {args.status}" if args.status else ""))
    for job in items:
        print(f"{_job_line(job)}  (created {job.get('created_at', '-')})")
    if isinstance(page, dict) and page.get("total", 0) > len(items) + args.offset:
        print(f"... {page['total']} in all: use --offset/--limit")
    return 0


def cmd_cancel(args) -> int:
    with _client(args) as client:
        job = client.cancel(args.id)
    _print_json(job) if args.json else print(_job_line(job))
    return 0


def cmd_download(args) -> int:
    out = Path(args.output or f"{args.id}.{args.format}")
    with _client(args) as client:
        digest, size = client.download(args.id, args.format, out)
    print(f"{out}: {size} bytes, sha256 {digest} (matches the server's ETag)")
    return 0


def load_inputs(path: Path):
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


def cmd_predict(args) -> int:
    X = load_inputs(Path(args.input))
    result: dict = {"predictions": [], "probabilities": []}
    with _client(args) as client:
        for start in range(0, max(len(X), 1), args.chunk):  # the API caps examples per request
            part = client.predict(args.id, X[start : start + args.chunk].tolist())
            result["predictions"] += part.get("predictions") or []
            result["probabilities"] += part.get("probabilities") or []
    result["probabilities"] = result["probabilities"] or None
    if args.json:
        _print_json(result)
    else:
        for value in result.get("predictions", []):
            print(value)
    return 0


# -- server commands --------------------------------------------------------------------------
def _require_redis_url() -> str:
    url = os.environ.get("DNNQ_REDIS_URL", "").strip()
    if not url:
        raise CliError(
            "DNNQ_REDIS_URL is not set: point it at your Redis (e.g. redis://127.0.0.1:6379/0), "
            "or run everything at once with `dnnq up`",
            exit_code=2,
        )
    return url


def cmd_up(args) -> int:
    from dnnq.up import default_api_workers, run_up

    return run_up(
        args.host,
        args.port,
        Path(args.data_dir),
        args.workers,
        args.queues,
        args.allow_remote_without_keys,
        grace_s=args.grace,
        api_workers=args.api_workers or default_api_workers(),
        access_log=args.access_log,
    )


def cmd_api(args) -> int:
    from dnnq.up import check_bind_allowed

    _require_redis_url()
    note = check_bind_allowed(args.host, args.allow_remote_without_keys)
    if note:
        print(f"dnnq: {note}", file=sys.stderr, flush=True)
    import uvicorn

    uvicorn.run("dnnq.service.app:create_app", factory=True, host=args.host, port=args.port)
    return 0


def worker_env(args, env=None) -> dict:
    env = dict(os.environ if env is None else env)
    queues = args.queues
    if args.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = env["DNNQ_CUDA_VISIBLE_DEVICES"] = str(args.gpu)
        queues = queues or "gpu"
    env["DNNQ_QUEUES"] = queues or "default"
    env["DNNQ_CONCURRENCY"] = str(args.concurrency)
    if args.name:
        env["DNNQ_WORKER_NAME"] = args.name
    return env


def cmd_worker(args) -> int:
    _require_redis_url()
    env = worker_env(args)
    argv = [sys.executable, "-m", "dnnq.workers"]
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)  # the worker takes this pid: signals reach Celery directly
    return 0  # not reached


# -- parser -----------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _number_or_fraction(text: str) -> float:
    """'0.5' or '1/255'."""
    try:
        num, _, den = text.partition("/")
        return float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number like 0.5 or 1/255, got {text!r}") from None


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line too (argparse prints the whole usage block by default)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dnnq", description="Train L-layer neural networks over HTTP.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    client_opts = _Parser(add_help=False)
    client_opts.add_argument(
        "--url",
        default=os.environ.get("DNNQ_URL") or DEFAULT_URL,
        help="API base URL (default $DNNQ_URL or %(default)s)",
    )
    client_opts.add_argument(
        "--api-key", default=os.environ.get("DNNQ_API_KEY"), help="API key (default $DNNQ_API_KEY)"
    )
    client_opts.add_argument("--timeout", type=float, default=60.0, help="HTTP timeout in seconds")
    client_opts.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("up", help="start Redis (embedded), workers and the API; Ctrl-C stops them all")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_positive_int, default=8000)
    p.add_argument("--data-dir", default=os.environ.get("DNNQ_DATA_DIR") or "./dnnq-data")
    p.add_argument("--workers", type=_positive_int, default=1)
    p.add_argument("--queues", default="default", help="queues the workers take (e.g. default,gpu)")
    p.add_argument("--grace", type=float, default=10.0, help="seconds children get to stop before SIGKILL")
    p.add_argument(
        "--api-workers",
        type=_positive_int,
        default=None,
        help="API processes, each on its own SO_REUSEPORT socket on Linux; /metrics sums them all "
        "(default: 2 on Linux with 2+ cores, else 1)",
    )
    p.add_argument(
        "--access-log",
        action="store_true",
        help="log every HTTP request (off by default: it costs about a tenth of a status poll)",
    )
    p.add_argument(
        "--allow-remote-without-keys",
        action="store_true",
        help="listen on a non-loopback address without API keys (unsafe)",
    )
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("api", help="run the API alone (needs DNNQ_REDIS_URL)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_positive_int, default=8000)
    p.add_argument("--allow-remote-without-keys", action="store_true")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("worker", help="run a Celery worker alone (needs DNNQ_REDIS_URL)")
    p.add_argument("--queues", choices=["default", "gpu", "default,gpu"], default=None)
    p.add_argument("--concurrency", type=_positive_int, default=1)
    p.add_argument(
        "--gpu",
        type=int,
        default=None,
        metavar="N",
        help="train on GPU N: sets CUDA_VISIBLE_DEVICES=N and the queue 'gpu'",
    )
    p.add_argument("--name", default=None, help="worker name (default host-pid)")
    p.set_defaults(func=cmd_worker)

    ds = sub.add_parser("datasets", help="upload, generate and list datasets")
    ds_sub = ds.add_subparsers(dest="datasets_command", metavar="ACTION", required=True)
    p = ds_sub.add_parser("upload", parents=[client_opts], help="upload .npz (X, Y), .csv or .h5")
    p.add_argument("file")
    p.add_argument("--target", help="CSV: the label column (default: the last)")
    p.add_argument("--x-key", help="HDF5: the dataset holding X")
    p.add_argument("--y-key", help="HDF5: the dataset holding Y")
    p.add_argument("--layout", choices=["examples_first", "features_first"], default=None)
    p.add_argument("--name", help="a name for the dataset (default: the file name)")
    p.set_defaults(func=cmd_datasets_upload)
    p = ds_sub.add_parser("list", parents=[client_opts])
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_datasets_list)
    p = ds_sub.add_parser("show", parents=[client_opts])
    p.add_argument("id")
    p.set_defaults(func=cmd_datasets_show)
    p = ds_sub.add_parser("synthetic", parents=[client_opts], help="generate moons, circles, spiral or blobs")
    p.add_argument("name", choices=["moons", "circles", "spiral", "blobs"])
    p.add_argument("--n-samples", type=_positive_int)
    p.add_argument("--noise", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--n-classes", type=_positive_int)
    p.add_argument("--n-features", type=_positive_int)
    p.set_defaults(func=cmd_datasets_synthetic)

    p = sub.add_parser("submit", parents=[client_opts], help="submit a training job (SPEC.json and/or flags)")
    p.add_argument("spec", nargs="?", metavar="SPEC.json")
    p.add_argument("--dataset")
    p.add_argument("--validation-dataset")
    p.add_argument("--hidden", help="hidden layer sizes, e.g. 20,7,5 ('' for none)")
    p.add_argument("--activation", choices=["relu", "leaky_relu", "tanh", "sigmoid"])
    p.add_argument("--output", choices=["sigmoid", "softmax", "linear"])
    p.add_argument("--optimizer", choices=["gd", "momentum", "rmsprop", "adam"])
    p.add_argument("--lr", type=float)
    p.add_argument("--beta", type=float)
    p.add_argument("--beta1", type=float)
    p.add_argument("--beta2", type=float)
    p.add_argument("--lr-decay", choices=["inverse_time", "exponential", "step"])
    p.add_argument("--decay-rate", type=float)
    p.add_argument("--decay-every", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--init", choices=["small", "xavier", "he"])
    p.add_argument("--seed", type=int)
    p.add_argument("--dtype", choices=["float32", "float64"])
    p.add_argument("--l2", type=float)
    p.add_argument("--dropout-keep-prob", type=float)
    p.add_argument("--no-shuffle", action="store_true")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument(
        "--scale",
        type=_number_or_fraction,
        help="multiply X by this before the first layer (e.g. 1/255 for 0..255 pixels)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "gpu"])
    p.add_argument("--idempotency-key")
    p.add_argument(
        "--wait-for-worker",
        action="store_true",
        help="queue the job even if no live worker serves its queue yet (default: refused, 422)",
    )
    p.add_argument("--watch", action="store_true", help="then follow it like `dnnq watch`")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the job id")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", parents=[client_opts], help="a job's status")
    p.add_argument("id")
    p.add_argument("--history", action="store_true", help="also print every epoch")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("watch", parents=[client_opts], help="live progress until the job ends (exit 0 = succeeded)")
    p.add_argument("id")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("list", parents=[client_opts], help="your jobs, newest first")
    p.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelling", "cancelled"])
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("cancel", parents=[client_opts], help="cancel a job")
    p.add_argument("id")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("download", parents=[client_opts], help="download trained weights (sha256-checked)")
    p.add_argument("id")
    p.add_argument("--format", choices=["npz", "safetensors", "onnx"], default="npz")
    p.add_argument("-o", "--output", metavar="FILE", help="default ID.FORMAT")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("predict", parents=[client_opts], help="predict with a trained job")
    p.add_argument("id")
    p.add_argument("input", metavar="INPUT", help=".npz with X, .csv or .npy; examples as rows")
    p.add_argument("--chunk", type=_positive_int, default=5000, help="examples per request (default %(default)s)")
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"dnnq: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dnnq: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
