"""service.sandbox: an upload is parsed in a confined child; its crash, kill or timeout is a 422.

Several tests run the sandbox with an injected, test-only parser (`_parse=`): a module-level
function below that misbehaves on purpose (allocates without end, sleeps, spins, segfaults,
reports its own limits). The child really runs it under the real limits; only the parser differs.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import io
import json
import multiprocessing.forkserver
import os
import resource
import signal
import threading
import time
import zipfile

import numpy as np
import pytest

from dnnq.service import sandbox
from dnnq.service.uploads import UploadError, UploadLimits
from dnnq.workers import datasets

LIMITS = UploadLimits(max_examples=10_000_000, max_features=1_000_000, max_array_bytes=2 * 1024**3)
MiB = 1024 * 1024


def npz_file(path, **arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    return path


def run(tmp_path, src, *, memory=512 * MiB, cpu=20, wall=30.0, out_name="out.npz", **kw):
    return sandbox.parse_in_sandbox(
        src.name,
        src,
        tmp_path / out_name,
        kw.pop("limits", LIMITS),
        memory_bytes=memory,
        cpu_seconds=cpu,
        wall_seconds=wall,
        **kw,
    )


def expect_limits(exc_info, *fragments):
    assert exc_info.value.status == 422
    assert "could not be read within the parser's limits" in exc_info.value.detail
    for fragment in fragments:
        assert fragment in exc_info.value.detail, exc_info.value.detail


# --- injected parsers (run in the child) --------------------------------------------------------


def _allocate_forever(filename, source, limits, **kw):
    hoard = []
    while True:
        hoard.append(np.ones(16 * MiB, dtype=np.uint8))


def _sleep(filename, source, limits, **kw):
    time.sleep(60)


def _spin(filename, source, limits, **kw):
    while True:
        pass


def _segfault(filename, source, limits, **kw):
    ctypes.string_at(0)


def _report(filename, source, limits, **kw):
    """Raise the child's view of itself as the parser's 'error': rlimits and open descriptors."""
    fds = {}
    for fd in range(resource.getrlimit(resource.RLIMIT_NOFILE)[0]):  # no listing: the child may not open /proc
        with contextlib.suppress(OSError):
            os.fstat(fd)
            fds[str(fd)] = os.readlink(f"/proc/self/fd/{fd}")
    limits_now = {
        n: resource.getrlimit(getattr(resource, n))
        for n in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_CORE", "RLIMIT_FSIZE", "RLIMIT_NOFILE")
    }
    raise UploadError(418, json.dumps({"fds": fds, "limits": limits_now, "nice": os.nice(0)}))


# --- the tests ---------------------------------------------------------------------------------


def test_parses_in_the_child_and_writes_the_stored_file(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 7))
    src = npz_file(tmp_path / "d.npz", X=X, Y=(X[:, 0] > 0).astype(int))
    info = run(tmp_path, src)
    assert (info.n_examples, info.n_features, info.n_outputs, info.n_classes) == (300, 7, 1, 2)
    assert info.label_kind == "binary" and info.classes == [0, 1] and info.dtype == "float64"
    with np.load(tmp_path / "out.npz", allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["X"], X)
        assert info.content_digest == datasets._canonical(npz["X"], npz["Y"], [0, 1], "binary").hex()
    with zipfile.ZipFile(tmp_path / "out.npz") as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())


def test_the_childs_value_range_is_kept_and_checked(tmp_path):
    X = np.array([[1.0, -7.5], [2.0, 3.0]])
    info = run(tmp_path, npz_file(tmp_path / "d.npz", X=X, Y=np.array([0, 1])))
    assert (info.x_abs_max, info.y_abs_max) == (7.5, 1.0)
    answer = {"ok": True, "info": dataclasses.asdict(info)}
    assert sandbox._read_answer(json.dumps(answer).encode(), tmp_path / "out.npz", LIMITS, MiB, 1, 1.0) == info
    for lie in ("NaN", "Infinity", "-1.0", '"7.5"', "7"):  # 7: an int, where the child sends a float
        payload = json.dumps(answer).replace('"x_abs_max": 7.5', f'"x_abs_max": {lie}').encode()
        assert lie.encode() in payload
        with pytest.raises(UploadError) as exc_info:
            sandbox._read_answer(payload, tmp_path / "out.npz", LIMITS, MiB, 1, 1.0)
        assert exc_info.value.status == 422 and "no usable answer" in exc_info.value.detail


def test_the_parsers_own_refusal_keeps_its_status_and_detail(tmp_path):
    src = tmp_path / "d.exe"
    src.write_bytes(b"MZ")
    with pytest.raises(UploadError) as exc_info:
        run(tmp_path, src)
    assert exc_info.value.status == 422 and "Unsupported file type" in exc_info.value.detail
    src = npz_file(tmp_path / "bad.npz", X=np.ones((5, 2)), Y=np.ones(4))
    with pytest.raises(UploadError) as exc_info:
        run(tmp_path, src, out_name="bad-out.npz")
    assert exc_info.value.status == 422 and "X has 5 examples but Y has 4" in exc_info.value.detail


def test_an_input_bigger_than_the_memory_limit_is_a_422_and_the_parent_is_untouched(tmp_path):
    src = npz_file(tmp_path / "big.npz", X=np.zeros((6 * MiB // 8, 1)), Y=np.zeros(6 * MiB // 8))  # 6 MiB each
    parent_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UploadError) as exc_info:
        run(tmp_path, src, memory=4 * MiB)
    # the MemoryError surfaces either here (the sandbox names the figures) or in the parser's own net
    assert exc_info.value.status == 422
    assert "could not be read within the parser's" in exc_info.value.detail and "memory" in exc_info.value.detail
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - parent_peak < 4 * 1024  # KiB
    assert run(tmp_path, src, out_name="ok.npz").n_examples == 6 * MiB // 8  # the same file with room


def test_a_child_allocating_without_end_stops_at_the_limit(tmp_path):
    src = npz_file(tmp_path / "d.npz", X=np.ones((2, 2)), Y=np.ones(2))
    with pytest.raises(UploadError) as exc_info:
        run(tmp_path, src, memory=128 * MiB, _parse=_allocate_forever)
    expect_limits(exc_info, "memory 128 MiB", "ran out of memory")


def test_a_child_past_its_wall_time_is_killed(tmp_path):
    src = npz_file(tmp_path / "d.npz", X=np.ones((2, 2)), Y=np.ones(2))
    sandbox.warm()
    server = multiprocessing.forkserver._forkserver._forkserver_pid
    start = time.monotonic()
    with pytest.raises(UploadError) as exc_info:
        run(tmp_path, src, wall=1.0, _parse=_sleep)
    assert time.monotonic() - start < 5
    expect_limits(exc_info, "time 1 s", "took longer than 1 s")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _children_of(server):
        time.sleep(0.05)
    assert not _children_of(server), "the timed-out child is still alive"


def _children_of(pid):
    """The live (not zombie) children of `pid`, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry}/stat") as f:
                    state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
                if int(ppid) == pid and state != "Z":
                    found.append(int(entry))
    return found


def test_a_child_past_its_cpu_seconds_is_stopped(tmp_path):
    src = npz_file(tmp_path / "d.npz", X=np.ones((2, 2)), Y=np.ones(2))
    with pytest.raises(UploadError) as exc_info:
        run(tmp_path, src, cpu=1, wall=20.0, _parse=_spin)
    expect_limits(exc_info, "CPU 1 s", "SIGXCPU")


def test_a_child_that_segfaults_is_a_422(tmp_path):
    src = npz_file(tmp_path / "d.npz", X=np.ones((2, 2)), Y=np.ones(2))
    with pytest.raises(UploadError) as exc_info:
        run(tmp_path, src, _parse=_segfault)
    expect_limits(exc_info, "crashed (SIGSEGV)")
    assert run(tmp_path, src, out_name="next.npz").n_examples == 2  # and the next upload is parsed as usual


def test_the_child_sets_its_limits_and_holds_no_inherited_descriptors(tmp_path):
    listening = __import__("socket").create_server(("127.0.0.1", 0))  # a socket the API would hold
    try:
        src = npz_file(tmp_path / "d.npz", X=np.ones((2, 2)), Y=np.ones(2))
        with pytest.raises(UploadError) as exc_info:
            run(tmp_path, src, memory=256 * MiB, cpu=7, _parse=_report)
    finally:
        listening.close()
    assert exc_info.value.status == 418
    seen = json.loads(exc_info.value.detail)
    limits = seen["limits"]
    assert limits["RLIMIT_CPU"] == [7, 8] and limits["RLIMIT_CORE"] == [0, 0]
    assert limits["RLIMIT_FSIZE"] == [256 * MiB, 256 * MiB] and limits["RLIMIT_NOFILE"][1] <= 64
    assert 256 * MiB < limits["RLIMIT_AS"][0] < 64 * 1024 * MiB and limits["RLIMIT_AS"][0] == limits["RLIMIT_AS"][1]
    extra = {fd: target for fd, target in seen["fds"].items() if int(fd) > 2}
    # the result pipe and the output file; no socket, no file of the API's
    assert len(extra) <= 2, extra
    assert not any(t.startswith("socket:") for t in seen["fds"].values()), seen["fds"]
    assert seen["nice"] >= 10


def test_a_dead_fork_server_is_replaced(tmp_path):
    src = npz_file(tmp_path / "d.npz", X=np.ones((3, 2)), Y=np.ones(3))
    assert run(tmp_path, src, out_name="a.npz").n_examples == 3
    server = multiprocessing.forkserver._forkserver
    os.kill(server._forkserver_pid, signal.SIGKILL)
    assert run(tmp_path, src, out_name="b.npz").n_examples == 3
    # gone and already reaped by someone else: the standard library's own check cannot see it
    pid = server._forkserver_pid
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert run(tmp_path, src, out_name="c.npz").n_examples == 3
    assert server._forkserver_pid != pid


def test_concurrent_uploads_each_get_their_own_child(tmp_path):
    results, errors = {}, []

    def one(i):
        try:
            src = npz_file(tmp_path / f"d{i}.npz", X=np.full((10 + i, 2), float(i)), Y=np.ones(10 + i))
            results[i] = run(tmp_path, src, out_name=f"o{i}.npz")
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert {i: r.n_examples for i, r in results.items()} == {i: 10 + i for i in range(6)}
    assert len({r.content_digest for r in results.values()}) == 6


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        b'{"ok": false, "status": 200, "detail": "fine"}',
        b'{"ok": false, "status": 422}',
        b'{"ok": true, "info": {"n_examples": -1}}',
        b'{"ok": true, "info": {"n_examples": NaN, "n_features": 1, "n_outputs": 1, "n_classes": 0, "classes": null, '
        b'"label_kind": "continuous", "dtype": "float64", "content_digest": "' + b"0" * 64 + b'"}}',
    ],
)
def test_a_malformed_answer_from_the_child_is_a_422(tmp_path, payload):
    with pytest.raises(UploadError) as exc_info:
        sandbox._read_answer(payload, tmp_path / "absent.npz", LIMITS, MiB, 1, 1.0)
    assert exc_info.value.status == 422 and "no usable answer" in exc_info.value.detail


def _report_environment(filename, source, limits, **kw):
    """Raise the child's os.environ (the block it inherited is its fork server's: the test reads that
    one from outside, since the child may not open /proc)."""
    raise UploadError(418, json.dumps({"environ": dict(os.environ)}))


def test_the_child_sees_none_of_the_apis_secrets(tmp_path, monkeypatch):
    """The fork server is exec'd with the API's environment less its secrets (API keys, the metrics key,
    the Redis URL): a parser that could run code still finds none of them."""
    canary = "canary-secret-8d2f"
    for name in ("DNNQ_API_KEYS", "DNNQ_METRICS_KEY", "DNNQ_REDIS_URL", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, f"{name}={canary}")
    monkeypatch.setenv("DNNQ_TEST_HARMLESS_LOOKING", canary)
    server = multiprocessing.forkserver._forkserver
    if server._forkserver_pid is not None:  # a server started before the secrets were set: start anew
        os.kill(server._forkserver_pid, signal.SIGKILL)
    src = npz_file(tmp_path / "d.npz", X=np.ones((2, 2)), Y=np.ones(2))
    with pytest.raises(UploadError) as exc_info:
        run(tmp_path, src, _parse=_report_environment)
    assert exc_info.value.status == 418
    seen = json.loads(exc_info.value.detail)
    with open(f"/proc/{server._forkserver_pid}/environ", "rb") as f:  # the block every child inherits
        block = f.read().decode(errors="replace")
    assert canary not in json.dumps(seen["environ"]) and canary not in block
    assert "PATH" in seen["environ"]  # the rest of the environment is there
    assert os.environ["DNNQ_API_KEYS"].endswith(canary)  # and the API's own is as it was
    assert run(tmp_path, src, out_name="next.npz").n_examples == 2  # the next upload is parsed as usual


# --- kernel confinement (service/confinement.py) ---------------------------------------------------


def _try_escapes(filename, source, limits, **kw):
    """What a parser running an attacker's code could do: each attempt's outcome, raised as the 'error'."""
    import fcntl
    import socket
    import termios

    def attempt(action):
        try:
            action()
            return "allowed"
        except PermissionError:
            return "denied"
        except OSError as exc:
            return f"failed: {exc.strerror}"

    secret = source.parent / "secret.txt"
    outcomes = {
        "read the upload": attempt(lambda: source.read_bytes()),
        "read a file beside it": attempt(lambda: secret.read_bytes()),
        "read /etc/passwd": attempt(lambda: open("/etc/passwd", "rb").close()),
        "list the upload's folder": attempt(lambda: os.listdir(source.parent)),
        "create a file": attempt(lambda: (source.parent / "planted").write_bytes(b"x")),
        "open a TCP socket": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()),
        "open a Unix socket": attempt(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()),
        "signal the parent": attempt(lambda: os.kill(os.getppid(), 0)),
        "signal itself": attempt(lambda: os.kill(os.getpid(), 0)),
        "exec a program": attempt(lambda: os.execv("/bin/true", ["true"])),
        "push a keystroke into a terminal": attempt(lambda: fcntl.ioctl(2, termios.TIOCSTI, b"x")),
    }
    raise UploadError(418, json.dumps(outcomes))


def _escapes(tmp_path):
    from dnnq.service import confinement

    (tmp_path / "secret.txt").write_text("another tenant's data")
    src = npz_file(tmp_path / "d.npz", X=np.ones((2, 2)), Y=np.ones(2))
    with pytest.raises(UploadError) as exc_info:
        run(tmp_path, src, _parse=_try_escapes)
    assert exc_info.value.status == 418, exc_info.value.detail
    assert not (tmp_path / "planted").exists()
    return json.loads(exc_info.value.detail), confinement.support()


def test_a_parser_opens_nothing_but_its_upload(tmp_path):
    """Landlock: an exploited parser cannot read another file (another tenant's dataset, the keys file,
    Redis's AOF), list a folder or plant a file; it still reads the upload and writes its output."""
    outcomes, offered = _escapes(tmp_path)
    if not offered["landlock"]:
        pytest.skip("this kernel has no Landlock (Linux >= 5.13 with it enabled): files are not confined here")
    assert outcomes["read the upload"] == "allowed"
    for name in ("read a file beside it", "read /etc/passwd", "list the upload's folder", "create a file"):
        assert outcomes[name] == "denied", (name, outcomes)
    assert run(tmp_path, npz_file(tmp_path / "e.npz", X=np.ones((3, 2)), Y=np.ones(3)), out_name="e-out.npz")


def test_a_parser_cannot_open_sockets_exec_or_signal_other_processes(tmp_path):
    """seccomp: no socket (Redis holds every job), no exec, no signal to the API or the fork server."""
    outcomes, offered = _escapes(tmp_path)
    if not offered["seccomp"]:
        pytest.skip("no seccomp filter on this platform (Linux x86_64 or aarch64 only): system calls are not filtered")
    for name in (
        "open a TCP socket",
        "open a Unix socket",
        "signal the parent",
        "exec a program",
        "push a keystroke into a terminal",  # without the filter: ENOTTY here, the keystroke in a real one
    ):
        assert outcomes[name] == "denied", (name, outcomes)
    assert outcomes["signal itself"] == "allowed"


def _run_filter(program, arch_id, nr, arg0=0, arg1=0):
    """Classic BPF, the four instructions the filter uses, on one system call: the filter's verdict."""
    import struct

    code = [struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    data = struct.pack("=iIQ6Q", nr, arch_id, 0, arg0, arg1, 0, 0, 0, 0)
    acc, pc = 0, 0
    while True:
        op, jt, jf, k = code[pc]
        if op == 0x20:  # ld [k]
            acc, pc = struct.unpack_from("=I", data, k)[0], pc + 1
        elif op in (0x15, 0x35):  # jeq / jge #k
            taken = acc == k if op == 0x15 else acc >= k
            pc = pc + 1 + (jt if taken else jf)
        elif op == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected instruction {op:#x}")


def test_the_seccomp_program_allows_denies_and_kills_as_listed():
    from dnnq.service import confinement

    allow, eperm, kill = 0x7FFF0000, 0x00050000 | 1, 0x80000000
    for arch, (arch_id, denied, signals, ioctl) in confinement._ARCHES.items():
        program = confinement._filter_program(arch, 4242)
        for name, nr in denied.items():
            assert _run_filter(program, arch_id, nr) == eperm, (arch, name)
        for nr in signals.values():
            assert _run_filter(program, arch_id, nr, arg0=4242) == allow
            assert _run_filter(program, arch_id, nr, arg0=1) == eperm
            assert _run_filter(program, arch_id, nr, arg0=0) == eperm  # kill(0, ...): the whole process group
        for nr in (0, 1, 3, 9, 60, 231):  # read, write, close, mmap, exit, exit_group (x86_64 numbering)
            if nr not in denied.values() and nr not in signals.values() and nr != ioctl:
                assert _run_filter(program, arch_id, nr) == allow
        assert _run_filter(program, arch_id, ioctl, arg1=0x5412) == eperm  # TIOCSTI: keystrokes into a terminal
        assert _run_filter(program, arch_id, ioctl, arg1=0x541C) == eperm  # TIOCLINUX
        assert _run_filter(program, arch_id, ioctl, arg1=0x5401) == allow  # TCGETS (isatty)
        assert _run_filter(program, 0x40000003, 1) == kill  # i386's int 0x80 / another ABI
    x86 = confinement._filter_program("x86_64", 4242)
    assert _run_filter(x86, 0xC000003E, 0x40000000 | 41) == eperm  # x32's socket
