"""The dnnq CLI without a dnnq server: parsing, spec building, the progress bar, input files, the
bind rule, and the one-line errors (against real sockets: a closed port, and a small
local HTTP server standing in for the API's error and download responses)."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from dnnq.cli import build_parser, main
from dnnq.commands import build_spec, load_inputs
from dnnq.errors import CliError
from dnnq.progress import ProgressBar, format_duration, render
from dnnq.server_commands import worker_env
from dnnq.up import check_bind_allowed, is_loopback


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- parsing ----------------------------------------------------------------------------------
def test_submit_flags_become_a_spec():
    args = build_parser().parse_args(
        [
            "submit",
            "--dataset",
            "ab" * 12,
            "--hidden",
            "20,7,5",
            "--output",
            "softmax",
            "--optimizer",
            "momentum",
            "--lr",
            "0.05",
            "--epochs",
            "30",
            "--batch-size",
            "64",
            "--device",
            "cpu",
            "--no-shuffle",
            "--scale",
            "1/255",
        ]
    )
    spec = build_spec(args)
    assert spec == {
        "dataset_id": "ab" * 12,
        "model": {"hidden_layers": [20, 7, 5], "output": "softmax"},
        "training": {"optimizer": "momentum", "learning_rate": 0.05, "epochs": 30, "batch_size": 64, "shuffle": False},
        "preprocess": {"scale": 1 / 255},
        "device": "cpu",
    }


def test_wait_for_worker_flag_opts_in():
    args = build_parser().parse_args(["submit", "--dataset", "ab" * 12, "--wait-for-worker", "--device", "gpu"])
    assert build_spec(args) == {"dataset_id": "ab" * 12, "device": "gpu", "wait_for_worker": True}
    assert "wait_for_worker" not in build_spec(build_parser().parse_args(["submit", "--dataset", "ab" * 12]))


def test_flags_override_the_spec_file(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"dataset_id": "cd" * 12, "training": {"epochs": 5, "seed": 3}}))
    spec = build_spec(build_parser().parse_args(["submit", str(path), "--epochs", "9", "--hidden", ""]))
    assert spec == {"dataset_id": "cd" * 12, "training": {"epochs": 9, "seed": 3}, "model": {"hidden_layers": []}}


def test_spec_errors_are_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"dataset_id": ')
    assert main(["submit", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dnnq: error: ") and "is not valid JSON" in err and err.count("\n") == 1

    assert main(["submit", "--epochs", "3"]) == 2
    assert "no dataset: pass --dataset ID" in capsys.readouterr().err

    assert main(["submit", "--dataset", "ab" * 12, "--hidden", "20,x"]) == 2
    assert "--hidden must be comma-separated" in capsys.readouterr().err

    assert main(["submit", str(tmp_path / "missing.json")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_bad_choices_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["download", "x", "--format", "pickle"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("dnnq download: error: argument --format: invalid choice: 'pickle'")
    assert err.endswith("(see `dnnq download --help`)\n") and err.count("\n") == 1


def _choices(argv: list[str]) -> dict[str, tuple]:
    """dest -> choices of the subcommand that argv names."""
    parser = build_parser()
    for name in argv:
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = sub.choices[name]
    return {a.dest: tuple(a.choices) for a in parser._actions if a.choices is not None}


def test_the_parser_offers_exactly_the_names_the_engine_and_the_job_store_declare():
    """dnnq/cli.py copies the lists of valid names (importing dnnq.models would import NumPy into
    every `dnnq` command); each copy must be its declaration, in the same order."""
    from typing import get_args

    from dnnq.commands import TERMINAL
    from dnnq.models import names
    from dnnq.service.formats.csvtext import Header
    from dnnq.service.synthetic import GENERATORS, PARAMETERS, SyntheticName
    from dnnq.service.uploads import Layout
    from dnnq.workers import jobs
    from dnnq.workers.status import Status

    assert _choices(["submit"]) == {
        "activation": get_args(names.HiddenActivationName),
        "output": get_args(names.OutputName),
        "optimizer": get_args(names.OptimizerName),
        "lr_decay": get_args(names.LrDecayName),
        "init": get_args(names.InitName),
        "dtype": get_args(names.DtypeName),
        "device": get_args(names.DeviceName),
    }
    assert _choices(["list"]) == {"status": tuple(status.value for status in Status)}
    assert _choices(["datasets", "synthetic"]) == {"name": get_args(SyntheticName)}
    assert set(GENERATORS) == set(PARAMETERS) == set(get_args(SyntheticName))
    assert _choices(["datasets", "upload"]) == {"layout": get_args(Layout), "header": get_args(Header)}
    assert TERMINAL == {"succeeded", "failed", "cancelled"} == {status.value for status in jobs.TERMINAL}


def test_the_cli_does_not_import_numpy_until_a_command_needs_it():
    code = "import sys; from dnnq.cli import build_parser; build_parser(); print('numpy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_unreachable_url_gives_one_line_and_nonzero_exit(capsys):
    url = f"http://127.0.0.1:{_closed_port()}"
    for argv in (["status", "0" * 32], ["list"], ["datasets", "list"], ["watch", "0" * 32]):
        assert main([*argv, "--url", url]) == 1
        err = capsys.readouterr().err
        assert err == f"dnnq: error: cannot reach {url}: is `dnnq up` running?\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["status", ""],
        ["delete", "../datasets/abc"],
        ["cancel", "a/b"],
        ["datasets", "show", "x y"],
        ["datasets", "delete", ""],
        ["sweep-status", ""],
        ["sweep-cancel", "../jobs"],
        ["sweep-delete", "%2e%2e"],
    ],
)
def test_an_id_that_is_not_one_is_refused_before_any_request(argv, capsys):
    """An empty id would ask for the collection (a 307 to /v1/x/), one with '/' for another route: the SDK
    says so in one line without calling the API (the URL is a closed port: a request would say so)."""
    code = main([*argv, "--url", f"http://127.0.0.1:{_closed_port()}"])
    err = capsys.readouterr().err
    assert code == 1 and "is not an id" in err and "use the id the API returned" in err, err
    assert len(err.strip().splitlines()) == 1


def test_url_and_api_key_default_from_the_environment(monkeypatch):
    monkeypatch.setenv("DNNQ_URL", "http://10.0.0.5:9000")
    monkeypatch.setenv("DNNQ_API_KEY", "s3cret")
    args = build_parser().parse_args(["list"])
    assert (args.url, args.api_key) == ("http://10.0.0.5:9000", "s3cret")


def test_api_and_worker_need_a_redis_url(monkeypatch, capsys):
    monkeypatch.delenv("DNNQ_REDIS_URL", raising=False)
    assert main(["worker"]) == 2
    assert "DNNQ_REDIS_URL is not set" in capsys.readouterr().err
    assert main(["api"]) == 2
    assert "DNNQ_REDIS_URL is not set" in capsys.readouterr().err


def test_gpu_worker_env():
    args = build_parser().parse_args(["worker", "--gpu", "1", "--concurrency", "1"])
    env = worker_env(args, env={"PATH": "/bin"})
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert env["DNNQ_QUEUES"] == "gpu"
    assert env["DNNQ_CONCURRENCY"] == "1"
    env = worker_env(build_parser().parse_args(["worker"]), env={})
    assert env["DNNQ_QUEUES"] == "default" and "CUDA_VISIBLE_DEVICES" not in env


# -- the bind rule of `dnnq up` / `dnnq api` ----------------------------------------------------
def test_loopback_without_keys_is_allowed_and_said():
    note = check_bind_allowed("127.0.0.1", False, env={})
    assert "no API keys set" in note and "127.0.0.1 only" in note
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")


def test_remote_without_keys_is_refused_unless_allowed():
    with pytest.raises(CliError) as exc:
        check_bind_allowed("0.0.0.0", False, env={})
    assert exc.value.exit_code == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in str(exc.value)
    assert "--allow-remote-without-keys" in str(exc.value)
    assert "WITHOUT API keys" in check_bind_allowed("0.0.0.0", True, env={})
    assert check_bind_allowed("0.0.0.0", False, env={"DNNQ_API_KEYS": "alice:k"}) is None


def test_keys_set_but_empty_are_refused_not_taken_for_keys_on(tmp_path):
    """DNNQ_API_KEYS="," or an empty keys file used to count as "keys on" for the bind rule while the
    API parsed them to no key at all: `dnnq up --host 0.0.0.0` then served everyone without a key."""
    keys_file = tmp_path / "keys"
    keys_file.write_text("# alice:k1\n\n")
    for env in ({"DNNQ_API_KEYS": ","}, {"DNNQ_API_KEYS": " , "}, {"DNNQ_API_KEYS_FILE": str(keys_file)}):
        for host in ("0.0.0.0", "127.0.0.1"):
            with pytest.raises(CliError) as exc:
                check_bind_allowed(host, False, env=env)
            assert exc.value.exit_code == 2
            assert "holds no key" in str(exc.value)
    with pytest.raises(CliError, match="cannot be read"):
        check_bind_allowed("0.0.0.0", False, env={"DNNQ_API_KEYS_FILE": str(tmp_path / "absent")})
    keys_file.write_text("# a comment\nalice:k1\n")
    assert check_bind_allowed("0.0.0.0", False, env={"DNNQ_API_KEYS_FILE": str(keys_file)}) is None


def test_up_refuses_remote_without_keys(monkeypatch, capsys):
    monkeypatch.delenv("DNNQ_API_KEYS", raising=False)
    monkeypatch.delenv("DNNQ_API_KEYS_FILE", raising=False)
    assert main(["up", "--host", "0.0.0.0", "--port", str(_closed_port())]) == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in capsys.readouterr().err


def test_up_refuses_a_port_in_use(capsys, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["up", "--port", str(port), "--data-dir", str(tmp_path)]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


# -- SSE and the progress bar -------------------------------------------------------------------
def test_client_options_go_before_or_after_the_command(monkeypatch):
    monkeypatch.delenv("DNNQ_URL", raising=False)
    monkeypatch.delenv("DNNQ_API_KEY", raising=False)
    parse = build_parser().parse_args
    for argv in (
        ["--url", "http://h:1", "--api-key", "k", "--json", "list"],
        ["list", "--url", "http://h:1", "--api-key", "k", "--json"],
        ["--url", "http://h:1", "list", "--api-key", "k", "--json"],
    ):
        args = parse(argv)
        assert (args.url, args.api_key, args.json, args.timeout) == ("http://h:1", "k", True, 60.0), argv
    args = parse(["datasets", "list"])
    assert (args.url, args.api_key, args.json) == ("http://127.0.0.1:8000", None, False)
    # given in both places, the one after the command wins (it is parsed last)
    assert parse(["--url", "http://a:1", "status", "x", "--url", "http://b:2"]).url == "http://b:2"


def test_unreachable_url_before_the_command_is_one_line(capsys):
    url = f"http://127.0.0.1:{_closed_port()}"
    assert main(["--url", url, "list"]) == 1
    assert capsys.readouterr().err == f"dnnq: error: cannot reach {url}: is `dnnq up` running?\n"


def test_render_and_durations():
    assert render(30, 100, 0.41234, 0.8712, 7, width=10) == "[###.......]  30/100 loss 0.4123 acc 0.871 ETA 00:07"
    assert render(3, None) == "[" + "?" * 24 + "] 3 ETA --:--"
    assert format_duration(3725) == "1:02:05"
    assert format_duration(None) == "--:--"


def test_progress_bar_on_a_pipe_prints_lines_and_the_final_status():
    out = io.StringIO()
    bar = ProgressBar(4, stream=out, min_interval_s=0.0)
    for epoch in range(1, 5):
        bar.update(epoch, loss=1.0 / epoch, accuracy=0.5 + epoch / 10)
    bar.finish("job x: succeeded")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[") and " 1/4 loss 1 acc 0.600 ETA --:--" in lines[0]
    assert " 4/4 loss 0.25 acc 0.900 ETA 00:00" in lines[3]
    assert lines[-1] == "job x: succeeded"


# -- input files for predict --------------------------------------------------------------------
def test_load_inputs(tmp_path):
    X = np.arange(6, dtype=np.float64).reshape(3, 2)
    np.savez(tmp_path / "a.npz", X=X)
    np.save(tmp_path / "a.npy", X)
    (tmp_path / "a.csv").write_text("x1,x2\n0,1\n2,3\n4,5\n")
    (tmp_path / "b.csv").write_text("0,1\n2,3\n4,5\n")
    for name in ("a.npz", "a.npy", "a.csv", "b.csv"):
        np.testing.assert_array_equal(load_inputs(tmp_path / name), X)


def test_load_inputs_refuses_pickles_and_unknown_files(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CliError, match="cannot read"):
        load_inputs(tmp_path / "obj.npy")
    np.savez(tmp_path / "noX.npz", Z=np.zeros(2))
    with pytest.raises(CliError, match="has no array 'X' \\(it has: Z\\)"):
        load_inputs(tmp_path / "noX.npz")
    (tmp_path / "a.txt").write_text("1,2")
    with pytest.raises(CliError, match="unsupported input type '.txt'"):
        load_inputs(tmp_path / "a.txt")


# -- HTTP errors and download checks against a small real HTTP server ---------------------------
class _Handler(BaseHTTPRequestHandler):
    payload = b"weights-bytes" * 100

    def log_message(self, *args):
        pass

    def _send(self, status, body: bytes, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        good = hashlib.sha256(self.payload).hexdigest()
        if self.headers.get("Authorization") == "Bearer many" and self.path.startswith("/v1/jobs?"):
            items = [{"id": f"{i:032x}", "status": "queued"} for i in range(20_000)]
            body = {"items": items, "total": len(items), "offset": 0, "limit": len(items)}
            self._send(200, json.dumps(body).encode(), [("Content-Type", "application/json")])
        elif self.path.startswith("/v1/jobs/" + "a" * 32 + "/weights"):
            self._send(200, self.payload, [("ETag", f'"{good}"')])
        elif self.path.startswith("/v1/jobs/" + "b" * 32 + "/weights"):
            self._send(200, self.payload, [("ETag", f'"{"0" * 64}"')])
        elif self.path.startswith(("/v1/jobs/" + "a" * 32 + "?", "/v1/jobs/" + "b" * 32 + "?")):
            self._send(
                200,
                json.dumps({"id": self.path[9:41], "status": "succeeded"}).encode(),
                [("Content-Type", "application/json")],
            )
        elif self.path.startswith("/v1/jobs/" + "c" * 32):
            problem = {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "no such job"}
            self._send(404, json.dumps(problem).encode(), [("Content-Type", "application/problem+json")])
        else:
            problem = {"title": "Unauthorized", "status": 401, "detail": "missing or invalid API key"}
            self._send(401, json.dumps(problem).encode(), [("Content-Type", "application/problem+json")])

    def do_POST(self):
        problem = {
            "title": "Unprocessable",
            "status": 422,
            "detail": "invalid job spec",
            "errors": [{"field": "training.learning_rate", "message": "must be > 0"}],
        }
        self._send(422, json.dumps(problem).encode(), [("Content-Type", "application/problem+json")])


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_checks_the_sha256_against_the_etag(http_server, tmp_path, capsys):
    out = tmp_path / "w.npz"
    assert main(["download", "a" * 32, "-o", str(out), "--url", http_server]) == 0
    assert out.read_bytes() == _Handler.payload
    assert hashlib.sha256(_Handler.payload).hexdigest() in capsys.readouterr().out

    bad = tmp_path / "bad.npz"
    assert main(["download", "b" * 32, "-o", str(bad), "--url", http_server]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dnnq: error: download corrupted: sha256 ") and "does not match the ETag" in err
    assert not bad.exists() and list(tmp_path.iterdir()) == [out]  # no partial file left


def test_http_errors_are_one_line(http_server, capsys):
    assert main(["status", "c" * 32, "--url", http_server]) == 1
    assert capsys.readouterr().err == f"dnnq: error: job '{'c' * 32}' not found (404)\n"
    assert main(["list", "--url", http_server]) == 1
    assert capsys.readouterr().err == (
        "dnnq: error: missing or invalid API key (401): pass --api-key or set DNNQ_API_KEY\n"
    )
    assert main(["submit", "--dataset", "ab" * 12, "--lr", "-1", "--url", http_server]) == 1
    assert capsys.readouterr().err == ("dnnq: error: invalid job spec: training.learning_rate: must be > 0 (422)\n")


def test_a_closed_stdout_ends_the_command_quietly(http_server):
    """`dnnq list | head -1`: the reader leaves after one line; no BrokenPipe traceback, exit 141."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dnnq", "list", "--url", http_server, "--api-key", "many"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    first = proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(60) == 141
    assert first.startswith(b"job 00000000000000000000000000000000: queued")
    assert proc.stderr.read() == b""
    proc.stderr.close()


def test_up_with_an_unreachable_redis_url(monkeypatch, capsys, tmp_path):
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    monkeypatch.setenv("DNNQ_REDIS_URL", url)
    assert main(["up", "--port", str(_closed_port()), "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"dnnq: error: cannot reach Redis at {url} (DNNQ_REDIS_URL): ")
    assert err.count("\n") == 1


def test_a_nice_child_is_nice_in_its_own_session_too(tmp_path):
    """`dnnq up` starts each child in its own session. With Linux autogroups the CPU is shared between
    sessions before nice values count, so the workers' lower priority must be set on their session
    (/proc/self/autogroup) as well as on the process, or the API gets no more CPU than they do."""
    import os
    import sys

    from dnnq.supervisor import Child

    report = tmp_path / "report"
    probe = (
        "import os, pathlib, sys; ag = pathlib.Path('/proc/self/autogroup');"
        'pathlib.Path(sys.argv[1]).write_text(f"{os.getpriority(os.PRIO_PROCESS, 0)}|'
        "{ag.read_text().strip() if ag.exists() else ''}\")"
    )
    child = Child("probe", [sys.executable, "-c", probe, str(report)], dict(os.environ), niceness=7)
    child.start()
    assert child.proc.wait(30) == 0
    nice, autogroup = report.read_text().split("|")
    assert int(nice) == os.getpriority(os.PRIO_PROCESS, 0) + 7
    if os.path.exists("/proc/self/autogroup"):  # a kernel with autogroups (CONFIG_SCHED_AUTOGROUP)
        assert autogroup.endswith("nice 7"), autogroup
        # The kernel prints nothing for a task still in the default autogroup (one whose session
        # never left init's, as under CI), so the parent's line may be empty; the child, in a new
        # session, has an autogroup of its own.
        own = Path("/proc/self/autogroup").read_text().split()
        if own:
            assert autogroup.split()[0] != own[0]  # its own session


def test_up_runs_two_api_processes_by_default_where_the_kernel_spreads_connections(monkeypatch):
    import os
    import sys

    from dnnq import up

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert up.default_api_workers() == 2
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert up.default_api_workers() == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(sys, "platform", "darwin")  # its SO_REUSEPORT does not balance
    assert up.default_api_workers() == 1
    assert build_parser().parse_args(["up"]).api_workers is None  # resolved by default_api_workers()
