"""The `dnnq` console script: the argument parser and dispatch.

Server side (dnnq/server_commands.py): `up` (everything, supervised: dnnq/up.py), `api`, `worker`.
Client side (dnnq/commands.py, on the Python SDK dnnq/client.py): datasets, submit, status, watch,
list, cancel, download, predict. The client options (--url, --api-key, --timeout, --json) go before
or after the command. Every error is one line on stderr, `dnnq: error: ...`, and a non-zero exit
code; a closed stdout (`dnnq predict ... | head`) ends the command quietly.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from dnnq import commands, sweep_commands
from dnnq.errors import CliError, DnnqError, Unauthorized
from dnnq.server_commands import cmd_api, cmd_up, cmd_worker
from dnnq.wire import DEFAULT_URL
from dnnq.workers.status import STATUSES

__all__ = ["build_parser", "main"]

# The names the API accepts, as declared once in dnnq.models.names and dnnq.service. Copied, not
# imported: importing those imports NumPy, which `dnnq --help` and the client commands do not need.
# tests/cli/test_cli_unit.py checks each copy against its declaration. (The job statuses import
# cheaply: dnnq.workers.status.)
HIDDEN_ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid")
OUTPUTS = ("sigmoid", "softmax", "linear")
OPTIMIZERS = ("gd", "momentum", "rmsprop", "adam")
LR_DECAYS = ("inverse_time", "exponential", "step")
INITS = ("small", "xavier", "he")
DTYPES = ("float32", "float64")
DEVICES = ("auto", "cpu", "gpu")
SYNTHETIC_NAMES = ("moons", "circles", "spiral", "blobs")
LAYOUTS = ("examples_first", "features_first")


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


_Commands = argparse._SubParsersAction  # what add_subparsers returns (argparse has no public name for it)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line too (argparse prints the whole usage block by default)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dnnq", description="Train L-layer neural networks over HTTP.")
    _add_client_options(parser, with_defaults=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_server_commands(sub)
    client_opts = _Parser(add_help=False)  # the same options after a client command (a parent parser)
    _add_client_options(client_opts, with_defaults=False)
    _add_dataset_commands(sub, client_opts)
    _add_submit(sub, client_opts)
    _add_job_commands(sub, client_opts)
    sweep_commands.add_parsers(sub, client_opts)  # dnnq sweep, sweep-status, sweep-cancel, sweep-delete
    return parser


def _add_client_options(parser: argparse.ArgumentParser, with_defaults: bool) -> None:
    """The options every client command takes: on the top-level parser with their defaults, and on
    each client command without (SUPPRESS: the command's parse sets them only when they are given
    there, so `dnnq --url X list` and `dnnq list --url X` both work)."""

    def default(value: object) -> object:
        return value if with_defaults else argparse.SUPPRESS

    parser.add_argument(
        "--url",
        default=default(os.environ.get("DNNQ_URL") or DEFAULT_URL),
        help=f"API base URL (default $DNNQ_URL or {DEFAULT_URL})",
    )
    parser.add_argument(
        "--api-key", default=default(os.environ.get("DNNQ_API_KEY")), help="API key (default $DNNQ_API_KEY)"
    )
    parser.add_argument("--timeout", type=float, default=default(60.0), help="HTTP timeout in seconds (default 60)")
    parser.add_argument("--json", action="store_true", default=default(False), help="machine-readable output")


def _add_server_commands(sub: _Commands) -> None:
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


def _add_dataset_commands(sub: _Commands, client_opts: argparse.ArgumentParser) -> None:
    ds = sub.add_parser("datasets", help="upload, generate and list datasets")
    ds_sub = ds.add_subparsers(dest="datasets_command", metavar="ACTION", required=True)
    p = ds_sub.add_parser("upload", parents=[client_opts], help="upload .npz (X, Y), .csv or .h5")
    p.add_argument("file")
    p.add_argument("--target", help="CSV: the label column (default: the last)")
    p.add_argument("--x-key", help="HDF5: the dataset holding X")
    p.add_argument("--y-key", help="HDF5: the dataset holding Y")
    p.add_argument("--layout", choices=LAYOUTS, default=None)
    p.add_argument("--name", help="a name for the dataset (default: the file name)")
    p.add_argument(
        "--header",
        choices=("auto", "yes", "no"),
        help="CSV: does line 1 name the columns? (default auto: it is data when it is all numbers)",
    )
    p.set_defaults(func=commands.cmd_datasets_upload)
    p = ds_sub.add_parser("list", parents=[client_opts])
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=commands.cmd_datasets_list)
    p = ds_sub.add_parser("show", parents=[client_opts])
    p.add_argument("id")
    p.set_defaults(func=commands.cmd_datasets_show)
    p = ds_sub.add_parser("delete", parents=[client_opts], help="delete a dataset no queued or running job uses")
    p.add_argument("id")
    p.set_defaults(func=commands.cmd_datasets_delete)
    p = ds_sub.add_parser("synthetic", parents=[client_opts], help="generate moons, circles, spiral or blobs")
    p.add_argument("name", choices=SYNTHETIC_NAMES)
    p.add_argument("--n-samples", type=_positive_int)
    p.add_argument("--noise", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--n-classes", type=_positive_int)
    p.add_argument("--n-features", type=_positive_int)
    p.set_defaults(func=commands.cmd_datasets_synthetic)


def _add_submit(sub: _Commands, client_opts: argparse.ArgumentParser) -> None:
    p = sub.add_parser("submit", parents=[client_opts], help="submit a training job (SPEC.json and/or flags)")
    p.add_argument("spec", nargs="?", metavar="SPEC.json")
    p.add_argument("--dataset")
    p.add_argument("--validation-dataset")
    p.add_argument("--hidden", help="hidden layer sizes, e.g. 20,7,5 ('' for none)")
    p.add_argument("--activation", choices=HIDDEN_ACTIVATIONS)
    p.add_argument("--output", choices=OUTPUTS)
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--lr", type=float)
    p.add_argument("--beta", type=float)
    p.add_argument("--beta1", type=float)
    p.add_argument("--beta2", type=float)
    p.add_argument("--lr-decay", choices=LR_DECAYS)
    p.add_argument("--decay-rate", type=float)
    p.add_argument("--decay-every", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--init", choices=INITS)
    p.add_argument("--seed", type=int)
    p.add_argument("--dtype", choices=DTYPES)
    p.add_argument("--l2", type=float)
    p.add_argument("--dropout-keep-prob", type=float)
    p.add_argument("--no-shuffle", action="store_true")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument(
        "--scale",
        type=_number_or_fraction,
        help="multiply X by this before the first layer (e.g. 1/255 for 0..255 pixels)",
    )
    p.add_argument("--device", choices=DEVICES)
    p.add_argument("--idempotency-key")
    p.add_argument(
        "--wait-for-worker",
        action="store_true",
        help="queue the job even if no live worker serves its queue yet (default: refused, 422)",
    )
    p.add_argument("--watch", action="store_true", help="then follow it like `dnnq watch`")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the job id")
    p.set_defaults(func=commands.cmd_submit)


def _add_job_commands(sub: _Commands, client_opts: argparse.ArgumentParser) -> None:
    p = sub.add_parser("status", parents=[client_opts], help="a job's status")
    p.add_argument("id")
    p.add_argument("--history", action="store_true", help="also print every epoch")
    p.set_defaults(func=commands.cmd_status)

    p = sub.add_parser("watch", parents=[client_opts], help="live progress until the job ends (exit 0 = succeeded)")
    p.add_argument("id")
    p.set_defaults(func=commands.cmd_watch)

    p = sub.add_parser("list", parents=[client_opts], help="your jobs, newest first")
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=commands.cmd_list)

    p = sub.add_parser("cancel", parents=[client_opts], help="cancel a job")
    p.add_argument("id")
    p.set_defaults(func=commands.cmd_cancel)

    p = sub.add_parser("delete", parents=[client_opts], help="delete a finished job: record, history and files")
    p.add_argument("id")
    p.set_defaults(func=commands.cmd_delete)

    p = sub.add_parser("download", parents=[client_opts], help="download trained weights (sha256-checked)")
    p.add_argument("id")
    p.add_argument("--format", choices=["npz", "safetensors", "onnx"], default="npz")
    p.add_argument("-o", "--output", metavar="FILE", help="default ID.FORMAT")
    p.set_defaults(func=commands.cmd_download)

    p = sub.add_parser("predict", parents=[client_opts], help="predict with a trained job")
    p.add_argument("id")
    p.add_argument("input", metavar="INPUT", help=".npz with X, .csv or .npy; examples as rows")
    p.add_argument(
        "--chunk",
        type=_positive_int,
        default=None,
        help="examples per request (default: as many as the server's limits allow, GET /v1/limits)",
    )
    p.set_defaults(func=commands.cmd_predict)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return code
    except CliError as exc:
        print(f"dnnq: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Unauthorized as exc:
        print(f"dnnq: error: {exc}: pass --api-key or set DNNQ_API_KEY", file=sys.stderr)
        return 1
    except DnnqError as exc:
        print(f"dnnq: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `dnnq predict ... | head`: the reader has all it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's own flush at exit does not fail
        return 141  # 128 + SIGPIPE, what a shell reports for a command ended by a closed pipe
    except KeyboardInterrupt:
        print("dnnq: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
