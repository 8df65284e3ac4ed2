"""Parse an uploaded file in a sandboxed child process, never in the API process.

parse_in_sandbox() hands a child the path of the uploaded bytes and the path to write the stored
dataset to. The child confines itself with hard resource limits, parses (service.uploads), checks
and normalises the arrays (workers.datasets.write_dataset_file, the same code every stored dataset
goes through), writes the stored .npz and answers with a small JSON document over a pipe. The API
process only streams files; it never holds the arrays and never unpickles anything the child made.

Why a multiprocessing "forkserver": the server is a fresh interpreter started once (with only its
own descriptors: none of the API's sockets), which imports numpy, h5py and the parser up front;
each upload is then a fork of that server, costing milliseconds rather than an interpreter start
and the imports. A plain fork of the API would copy the API's threads' state, its sockets and its
memory; "spawn" would pay ~0.5 s of imports per upload. The standard library restarts a server
that died (ensure_running), and each upload gets its own child, so uploads run concurrently.

The child's limits (set by the child on itself before it reads a byte of the upload):
RLIMIT_AS (its address space at start + memory_bytes: an allocation past it is a MemoryError),
RLIMIT_CPU (SIGXCPU, then SIGKILL a second later), RLIMIT_FSIZE (its output cannot outgrow its
memory), RLIMIT_CORE 0, and RLIMIT_NOFILE small after every inherited descriptor but the result
pipe is closed. The parent adds the wall-clock limit and kills on timeout. A crash, a kill, a
MemoryError or a timeout is an UploadError(422) that names the limits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import io
import json
import logging
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import multiprocessing.forkserver
import multiprocessing.popen_forkserver
import multiprocessing.process
import multiprocessing.reduction
import multiprocessing.spawn
import multiprocessing.util
import os
import re
import resource
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, cast

from dnnq.service import confinement
from dnnq.service.uploads import UploadError, UploadLimits, parse_upload
from dnnq.workers.datasets import LABEL_KINDS, DatasetError, ParsedInfo, read_layout, write_dataset_file

__all__ = ["ParsedInfo", "parse_in_sandbox", "warm"]

log = logging.getLogger("dnnq.sandbox")

_PRELOAD = ["numpy", "h5py", "dnnq.service.uploads", "dnnq.workers.datasets", "dnnq.service.sandbox"]
_RESULT_MAX_BYTES = 16 * 1024 * 1024  # the JSON answer: counts, a digest and up to max_classes names
_CHILD_NOFILE = 32  # the result pipe, the upload, the output, and what h5py and zipfile open meanwhile
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_LIMIT_REASONS = {"memory": "it ran out of memory", "output": "its output grew past the memory limit"}

_lock = threading.Lock()  # one child started at a time (see _start)


@functools.cache
def _ctx() -> multiprocessing.context.ForkServerContext:
    """The forkserver context with our preload list (setting it again is harmless: same list)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


class _Popen(multiprocessing.popen_forkserver.Popen):
    """The standard forkserver launch (Python 3.10-3.13's popen_forkserver.Popen._launch) less one
    thing: the child is not told to re-import the API's main module. The standard child runs it
    (`python -m dnnq.api_process` would be imported again per upload, before the limits are set)."""

    def _launch(self, process_obj):
        prep_data = {
            k: v
            for k, v in multiprocessing.spawn.get_preparation_data(process_obj._name).items()
            if k not in ("init_main_from_path", "init_main_from_name")
        }
        buf = io.BytesIO()
        multiprocessing.context.set_spawning_popen(self)
        try:
            multiprocessing.reduction.dump(prep_data, buf)
            multiprocessing.reduction.dump(process_obj, buf)
        finally:
            multiprocessing.context.set_spawning_popen(None)
        self.sentinel, w = multiprocessing.forkserver.connect_to_new_process(self._fds)
        _parent_w = os.dup(w)  # the child's "parent alive" sentinel, as the standard launch keeps it
        self.finalizer = multiprocessing.util.Finalize(self, multiprocessing.util.close_fds, (_parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = multiprocessing.forkserver.read_signed(self.sentinel)


class _Process(multiprocessing.context.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj: multiprocessing.process.BaseProcess) -> multiprocessing.popen_forkserver.Popen:
        return _Popen(process_obj)


class _ForkServerState(Protocol):
    """The standard library's ForkServer attributes that _forget_forkserver resets."""

    _lock: threading.Lock
    _forkserver_pid: int | None
    _forkserver_alive_fd: int | None
    _forkserver_address: str | bytes | None


# Names of environment variables a parser child must not see: the fork server is exec'd with the API's
# environment (multiprocessing passes none of its own), which holds the API keys and the Redis URL.
_SECRET_ENV = re.compile(r"^DNNQ_|KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|REDIS", re.IGNORECASE)


@contextlib.contextmanager
def _secrets_hidden() -> Iterator[None]:
    """The process environment less its secrets (_SECRET_ENV), for as long as a fork server may be
    exec'd; the API reads its settings once at start, so nothing misses them meanwhile."""
    hidden = {name: os.environ.pop(name) for name in list(os.environ) if _SECRET_ENV.search(name)}
    try:
        yield
    finally:
        os.environ.update(hidden)


def _server_running() -> bool:
    """Whether the fork server is up, asked without reaping it (WNOWAIT): a dead one is left for
    ensure_running to collect and replace, as it expects."""
    pid = cast(_ForkServerState, multiprocessing.forkserver._forkserver)._forkserver_pid
    if pid is None:
        return False
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:  # reaped elsewhere: _start's retry forgets it
        return False


def _ensure_server() -> None:
    """Start the fork server if it is not running (or died), exec'd without the API's secrets: the
    children it forks inherit its environment, so a parser cannot read a key from /proc/self/environ.
    The environment is changed only then, not per upload: another thread's getenv must not race it."""
    if _server_running():
        return
    with _secrets_hidden():
        multiprocessing.forkserver.ensure_running()


def warm() -> None:
    """Start the fork server now (it imports numpy and h5py once), not in the first upload's time;
    say what confinement this kernel cannot give the parsers."""
    _ctx()
    offered = confinement.support()
    if not offered["landlock"]:
        log.warning("upload parsers run without Landlock (kernel < 5.13 or not enabled): they can open any file")
    if not offered["seccomp"]:
        log.warning("upload parsers run without a seccomp filter (not Linux x86_64/aarch64): they can open sockets")
    with _lock:
        _ensure_server()


def _forget_forkserver() -> None:
    """Make the next start launch a new fork server. The standard library does this itself when it
    reaps a dead server (ForkServer.ensure_running); this covers a server that is gone but was not
    reaped by it (a connection refused, or its pid already collected). Private attributes: there is
    no public reset."""
    server = cast(_ForkServerState, multiprocessing.forkserver._forkserver)
    with server._lock:
        pid, server._forkserver_pid = server._forkserver_pid, None
        if server._forkserver_alive_fd is not None:
            os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None
        server._forkserver_address = None
    if pid is None:
        return
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == 0:  # still our child, alive but not serving: end it
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    except ChildProcessError:  # reaped elsewhere: the pid may be another process's now, leave it
        pass


def _start(target: Callable[..., None], args: tuple[Any, ...]) -> _Process:
    _ctx()  # the fork server's preload list
    for attempt in (1, 2):
        proc = _Process(target=target, args=args, name="dnnq-upload-parser", daemon=True)
        try:
            with _lock:
                _ensure_server()  # before start(), which would otherwise start a missing server itself
                proc.start()
                # Each request thread joins its own child; left in multiprocessing's list, another
                # thread's start() would poll it too and could read its exit status first.
                multiprocessing.process._children.discard(proc)  # type: ignore[attr-defined]  # private, no stub
            return proc
        except (OSError, EOFError) as exc:  # the fork server died under us
            if attempt == 2:
                raise
            log.warning("upload parser fork server unavailable (%s); starting a new one", exc)
            _forget_forkserver()
    raise AssertionError("unreachable")


def _reap(proc: _Process, *, kill: bool) -> int | None:
    """Wait for the child (killing it first if asked, or if it outstays its answer) and free its
    descriptors; its exit code."""
    if kill:
        proc.kill()
    proc.join(10.0)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
    exitcode = proc.exitcode
    proc.close()
    return exitcode


def _limits_error(reason: str, memory_bytes: int, cpu_seconds: int, wall_seconds: float) -> UploadError:
    return UploadError(
        422,
        f"This file could not be read within the parser's limits (memory {memory_bytes // 2**20} MiB, "
        f"CPU {cpu_seconds} s, time {wall_seconds:g} s): {reason}. Upload a smaller or simpler file (fewer "
        "examples or features, no compression), or ask the operator to raise DNNQ_PARSE_MEMORY_BYTES, "
        "DNNQ_PARSE_CPU_SECONDS or DNNQ_PARSE_WALL_SECONDS.",
    )


def _death_reason(exitcode: int | None, cpu_seconds: int) -> str:
    if exitcode is None:
        return "it did not finish"
    if exitcode < 0:
        sig = -exitcode
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            return (
                f"it was stopped by {signal.Signals(sig).name} (more than {cpu_seconds} CPU seconds, or out of memory)"
            )
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"it crashed ({name})"
    return f"it exited with status {exitcode}"


def parse_in_sandbox(
    filename: str,
    src_path: Path | str,
    out_path: Path | str,
    limits: UploadLimits,
    *,
    target: str | None = None,
    x_key: str = "X",
    y_key: str = "Y",
    layout: str = "examples_first",
    header: str = "auto",
    memory_bytes: int,
    cpu_seconds: int,
    wall_seconds: float,
    _parse: Callable | None = None,
) -> ParsedInfo:
    """Parse the upload at `src_path` in a confined child that writes the stored file to `out_path`.

    Returns what the file holds; raises UploadError (the parser's own status and detail, or 422 with
    the limits when the child crashed, ran out of memory or time). `out_path` must not exist; on an
    error it may be left behind (the caller removes its staging files). `_parse` replaces
    service.uploads.parse_upload in the child: tests only, a module-level function.
    """
    request = {
        "filename": filename,
        "src": str(src_path),
        "out": str(out_path),
        "limits": limits,
        "target": target,
        "x_key": x_key,
        "y_key": y_key,
        "layout": layout,
        "header": header,
        "memory_bytes": int(memory_bytes),
        "cpu_seconds": int(cpu_seconds),
    }
    reader, writer = _ctx().Pipe(duplex=False)
    try:
        proc = _start(_child_main, (writer, request, _parse))
    finally:
        writer.close()  # the child holds its own copy: EOF here when it dies
    answered, payload = False, None
    try:
        with reader:
            answered = reader.poll(wall_seconds)
            if answered:
                try:
                    payload = reader.recv_bytes(_RESULT_MAX_BYTES)
                except (EOFError, OSError):  # died without answering, or an answer over the size
                    payload = None
    finally:
        exitcode = _reap(proc, kill=not answered)
    if not answered:
        raise _limits_error(f"it took longer than {wall_seconds:g} s", memory_bytes, cpu_seconds, wall_seconds)
    if payload is None:
        raise _limits_error(_death_reason(exitcode, cpu_seconds), memory_bytes, cpu_seconds, wall_seconds)
    return _read_answer(payload, out_path, limits, memory_bytes, cpu_seconds, wall_seconds)


def _read_answer(
    payload: bytes, out_path: Path | str, limits: UploadLimits, memory_bytes: int, cpu_seconds: int, wall_seconds: float
) -> ParsedInfo:
    """The child's JSON answer, checked field by field (the child ran hostile input), and the stored
    file's headers checked against it."""
    malformed = UploadError(
        422,
        "This file could not be read: the parser gave no usable answer. Check that "
        "the file opens with numpy, h5py or a CSV reader, and upload it again.",
    )
    try:
        answer = json.loads(payload, parse_constant=lambda c: None)
    except (ValueError, UnicodeDecodeError):
        raise malformed from None
    if not isinstance(answer, dict):
        raise malformed
    if answer.get("ok") is not True:
        if "unconfined" in answer:
            log.error("upload parser could not confine itself: %s", str(answer["unconfined"])[:500])
            raise UploadError(
                503,
                "The upload could not be read: the server's parser could not confine itself, so it did not "
                "open the file. Try again later; the operator will find the reason in the API's log.",
            )
        if answer.get("limit") in _LIMIT_REASONS:
            raise _limits_error(_LIMIT_REASONS[answer["limit"]], memory_bytes, cpu_seconds, wall_seconds)
        status, detail = answer.get("status"), answer.get("detail")
        if type(status) is not int or not 400 <= status < 500 or not isinstance(detail, str) or not detail:
            raise malformed
        raise UploadError(status, detail[:4000])
    info = answer.get("info")
    if not isinstance(info, dict) or set(info) != {f.name for f in dataclasses.fields(ParsedInfo)}:
        raise malformed
    counts = [info[k] for k in ("n_examples", "n_features", "n_outputs", "n_classes")]
    classes = info["classes"]
    if (
        any(type(c) is not int or c < 0 for c in counts)
        or min(counts[:3]) < 1
        or counts[0] > limits.max_examples
        or counts[1] > limits.max_features
        or info["label_kind"] not in LABEL_KINDS
        or info["dtype"] not in ("float32", "float64")
        or not isinstance(info["content_digest"], str)
        or not _DIGEST_RE.match(info["content_digest"])
        or not (classes is None or (isinstance(classes, list) and all(type(c) in (int, str) for c in classes)))
        or any(type(info[k]) is not float or not 0 <= info[k] < math.inf for k in ("x_abs_max", "y_abs_max"))
    ):
        raise malformed
    result = ParsedInfo(**info)
    try:
        with open(out_path, "rb") as f:
            stored = read_layout(f)
    except (OSError, DatasetError):
        raise malformed from None
    if (
        stored["X"].shape != (result.n_examples, result.n_features)
        or stored["X"].dtype.name != result.dtype
        or stored["Y"].shape != (result.n_examples, result.n_outputs)
    ):
        raise malformed
    return result


# --- the child ---------------------------------------------------------------------------------


def _confine(keep_fd: int, request: dict[str, Any]) -> int:
    """Hard limits on this process, set before any of the upload is read; the output file's descriptor
    (opened first: afterwards this process may open only the upload, read-only: service/confinement.py)."""
    memory_bytes, cpu_seconds = request["memory_bytes"], request["cpu_seconds"]
    os.nice(10)  # the API's requests come first on a busy machine
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (memory_bytes, memory_bytes))
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != keep_fd:
            with contextlib.suppress(OSError):  # the listing's own descriptor, already closed
                os.close(fd)
    out_fd = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open("/proc/self/status") as f:
        vm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    confinement.confine([Path(request["src"])], keep_out=Path(request["out"]).parent)
    resource.setrlimit(resource.RLIMIT_NOFILE, (_CHILD_NOFILE, _CHILD_NOFILE))
    address_space = vm_kb * 1024 + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    return out_fd


def _parse_and_write(request: dict, parse: Callable | None, out_fd: int) -> dict:
    parse = parse or parse_upload
    parsed = parse(
        request["filename"],
        Path(request["src"]),
        request["limits"],
        target=request["target"],
        x_key=request["x_key"],
        y_key=request["y_key"],
        layout=request["layout"],
        header=request["header"],
    )
    with os.fdopen(out_fd, "wb") as out:
        info = write_dataset_file(parsed.X, parsed.Y, parsed.classes, parsed.label_kind, out)
    return {"ok": True, "info": dataclasses.asdict(info)}


def _child_main(conn: multiprocessing.connection.Connection, request: dict[str, Any], parse: Callable | None) -> None:
    """Runs in the forked child: confine, parse, write, answer in JSON, exit without cleanup."""
    code = 0
    try:
        out_fd = _confine(conn.fileno(), request)
        answer = _parse_and_write(request, parse, out_fd)
    except confinement.ConfinementError as exc:
        answer = {"ok": False, "unconfined": str(exc)}
    except MemoryError:
        answer = {"ok": False, "limit": "memory"}
    except UploadError as exc:
        answer = {"ok": False, "status": exc.status, "detail": exc.detail}
    except DatasetError as exc:
        answer = {"ok": False, "status": 422, "detail": str(exc)}
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            answer = {"ok": False, "limit": "output"}
        else:
            answer = {"ok": False, "status": 422, "detail": f"This file could not be read ({exc.strerror})."}
    except BaseException as exc:
        answer = {
            "ok": False,
            "status": 422,
            "detail": f"This file could not be read ({type(exc).__name__}). "
            "Check that it opens with numpy, h5py or a CSV reader, and upload it again.",
        }
    try:
        conn.send_bytes(json.dumps(answer, allow_nan=False).encode())
    except BaseException:
        code = 1
    os._exit(code)  # no atexit handlers or finalizers: descriptors they would touch are closed
