"""The hostile-input suite's server and tally (issue 13).

- `hostile_server`: one real `python -m dnnq up` for the whole package, with API keys for alice and
  bob, an operator metrics key, DNNQ_MAX_UPLOAD_BYTES of 64 MiB (so the memory bound means something),
  one API process (its memory is read from /proc/<pid>/status) and one worker.
- A canary file with a random secret, made at import (the corpus's HDF5 cases point at its path).
- Every response any suite client receives is inspected: 5xx answers are counted, and a body or header
  holding the canary secret, an API key or /etc/passwd's first line is a disclosure.
- `hostile_summary` (session, autouse): prints one line with the tally (5xx answers, API restarts or
  crashes, peak API RSS, slowest /healthz while an upload was parsed) and asserts the issue's goals.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from dnnq.workers.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
RSS_BOUND = 2 * MAX_UPLOAD_BYTES + 200 * 1024 * 1024  # the goal: 2 x the upload limit + 200 MB
HEALTHZ_GOAL_S = 0.100

# Made at import: the corpus is built at collection time and its HDF5 cases name this path.
CANARY_DIR = Path(tempfile.mkdtemp(prefix="dnnq-canary-"))
CANARY_SECRET = "CANARY-" + secrets.token_hex(16)
CANARY_PATH = CANARY_DIR / "canary.txt"
CANARY_PATH.write_text(CANARY_SECRET + "\n")
atexit.register(shutil.rmtree, CANARY_DIR, ignore_errors=True)  # also when no test of the suite ran


@dataclass
class Tally:
    """What the whole suite saw; the summary line and the goals read it."""

    responses: int = 0
    five_xx: list[str] = field(default_factory=list)
    server_five_xx: int | None = None  # from /metrics (the server's own count), read at teardown
    server_five_xx_lines: list[str] = field(default_factory=list)
    disclosures: list[str] = field(default_factory=list)
    api_pids: list[int] = field(default_factory=list)
    up_exit: int | None = None
    peak_rss: dict[str, int] = field(default_factory=dict)  # case -> API VmHWM (bytes) while it ran
    healthz_s: dict[str, float] = field(default_factory=dict)  # case -> slowest /healthz meanwhile
    summary: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def restarts(self) -> int:
        return max(0, len(self.api_pids) - 1) + (1 if self.up_exit is not None else 0)


TALLY = Tally()


def _ppid_map() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    return parents


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _descendants(pid: int) -> set[int]:
    parents, found, frontier = _ppid_map(), set(), {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - found
        found |= frontier
    return found


def status_bytes(pid: int, name: str) -> int:
    """A /proc/<pid>/status memory figure (VmHWM, VmRSS) in bytes."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{name}:\s+(\d+) kB", text, re.M)
    assert match, f"no {name} in /proc/{pid}/status"
    return int(match.group(1)) * 1024


def reset_peak(pid: int) -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0); False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# The /healthz probe runs in a process of its own: in the test process it would share the GIL with the
# thread sending the upload, and measure the test's own pauses, not the server's.
_PROBE_SRC = """
import json, select, sys, time
import httpx
client = httpx.Client(base_url=sys.argv[1], timeout=30.0)
client.get("/healthz")
print("ready", flush=True)
active, worst, worst_at, count, bad, began = False, 0.0, 0.0, 0, [], 0.0
while True:
    if select.select([sys.stdin], [], [], 0.01)[0]:
        command = sys.stdin.readline().strip()
        if command == "start":
            active, worst, worst_at, count, bad, began = True, 0.0, 0.0, 0, [], time.perf_counter()
        elif command == "stop":
            active = False
            print(json.dumps({"max_s": worst, "at_s": worst_at, "count": count, "bad": bad[:5]}), flush=True)
        else:
            break
    elif active:
        start = time.perf_counter()
        try:
            status = client.get("/healthz").status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        took, count = time.perf_counter() - start, count + 1
        if took > worst:
            worst, worst_at = took, start - began
        if status != 200:
            bad.append(status)
"""


class HealthzProbe:
    """A child process polling /healthz (every ~10 ms, one keep-alive connection) between start() and
    stop(); stop() returns the slowest answer (max_s) and when it was asked (at_s, from start()), how many
    answers (count), and any that were not 200 (bad)."""

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PROBE_SRC, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout.readline().strip() == "ready", "the /healthz probe did not start"

    def _send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def start(self) -> None:
        self._send("start")

    def stop(self) -> dict:
        self._send("stop")
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send("exit")
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class HostileServer:
    """`python -m dnnq up` in its own session on a free loopback port; output in a log file."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = tmp / "data"
        self.keys = {"alice": secrets.token_hex(16), "bob": secrets.token_hex(16)}
        self.metrics_key = secrets.token_hex(16)
        self.forbidden = {
            "canary secret": CANARY_SECRET,
            "alice's key": self.keys["alice"],
            "bob's key": self.keys["bob"],
            "the metrics key": self.metrics_key,
            "/etc/passwd": "root:x:0:0",
        }
        self.log_path = tmp / "dnnq-up.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DNNQ_")}
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": "1",
                "OPENBLAS_NUM_THREADS": "1",
                "DNNQ_API_KEYS": ",".join(f"{who}:{key}" for who, key in self.keys.items()),
                "DNNQ_METRICS_KEY": self.metrics_key,
                "DNNQ_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
            }
        )
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dnnq",
                    "up",
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.data_dir),
                    "--workers",
                    "1",
                    "--api-workers",
                    "1",
                    "--grace",
                    "3",
                ],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        self.probe: HealthzProbe | None = None  # set by the fixture once the server is up

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"dnnq up exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    self.note_api()
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        pytest.fail(f"/readyz not 200 within {timeout}s:\n{self.log()[-4000:]}")

    # --- the API process ---------------------------------------------------------------------

    def api_pid(self, wait: float = 15.0) -> int:
        """The API process: the child of `dnnq up` that serves service.app (a parser child forked from it
        has the same command line but another parent). Waits a while for one being restarted."""
        deadline = time.monotonic() + wait
        while True:
            if self.proc.poll() is not None:
                TALLY.up_exit = self.proc.returncode
                pytest.fail(f"dnnq up exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            parents = _ppid_map()
            pids = [
                p
                for p, parent in parents.items()
                if parent == self.proc.pid
                and _alive(p)
                and ("dnnq.service.app:create_app" in _cmdline(p) or "dnnq.api_process" in _cmdline(p))
            ]
            if len(pids) == 1:
                return pids[0]
            if time.monotonic() > deadline:
                pytest.fail(f"expected one API process under dnnq up, found {pids}:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def note_api(self) -> int:
        """The API's pid, recorded in the tally: a new pid is a restart (the old one crashed)."""
        pid = self.api_pid()
        with TALLY.lock:
            if pid not in TALLY.api_pids:
                TALLY.api_pids.append(pid)
        return pid

    # --- clients ---------------------------------------------------------------------------------

    def client(self, who: str | None = "alice", *, scan: bool = True, **kwargs) -> httpx.Client:
        """A keep-alive client with `who`'s key (None: no key; "operator": the metrics key). With scan, each
        response body is read in an event hook and checked for forbidden strings; without (streams), only
        the status is counted."""
        headers = dict(kwargs.pop("headers", {}))
        if who == "operator":
            headers["Authorization"] = f"Bearer {self.metrics_key}"
        elif who is not None:
            headers["Authorization"] = f"Bearer {self.keys[who]}"
        kwargs.setdefault("timeout", 120.0)
        hook = self._inspect if scan else self._count
        return httpx.Client(base_url=self.url, headers=headers, event_hooks={"response": [hook]}, **kwargs)

    def _count(self, response: httpx.Response) -> None:
        with TALLY.lock:
            TALLY.responses += 1
            if response.status_code >= 500:
                TALLY.five_xx.append(f"{response.request.method} {response.request.url.path} -> {response.status_code}")

    def _inspect(self, response: httpx.Response) -> None:
        response.read()
        self._count(response)
        if response.status_code >= 500:
            with TALLY.lock:
                TALLY.five_xx[-1] += f" {response.content[:300]!r}"
        self.scan(response, f"{response.request.method} {response.request.url.path}")

    def scan(self, response: httpx.Response, where: str) -> None:
        raw = response.content + repr(list(response.headers.raw)).encode()
        for what, secret in self.forbidden.items():
            if secret.encode() in raw:
                with TALLY.lock:
                    TALLY.disclosures.append(f"{where} ({response.status_code}) disclosed {what}")

    def disclosures_since(self, start: int) -> list[str]:
        with TALLY.lock:
            return TALLY.disclosures[start:]

    # --- what is stored --------------------------------------------------------------------------

    @property
    def artifacts(self) -> Path:
        return self.data_dir / "artifacts"

    def stored_files(self) -> set[str]:
        """Files under the artifact store, but the workers' job artifacts (written by jobs, not uploads)."""
        if not self.artifacts.exists():
            return set()
        return {
            str(p.relative_to(self.artifacts))
            for p in self.artifacts.rglob("*")
            if p.is_file() and p.relative_to(self.artifacts).parts[0] != "jobs"
        }

    # --- the server's own count of 5xx answers -----------------------------------------------------

    def server_five_xx(self) -> dict[str, int] | None:
        """The server's own 5xx counts by route (its request histogram), read with the operator's key."""
        try:
            with self.client("operator", scan=False) as op:
                resp = op.get("/metrics")
        except httpx.TransportError:
            return None
        if resp.status_code != 200:
            return None
        counts = {}
        for line in resp.text.splitlines():
            if line.startswith("dnnq_http_request_duration_seconds_count{") and re.search(r'status="5\d\d"', line):
                labels, value = line.rsplit(" ", 1)
                counts[labels] = int(float(value))
        return counts

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        else:
            TALLY.up_exit = self.proc.returncode
        leftovers = _descendants(self.proc.pid) if self.proc.poll() is None else set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture(scope="package")
def hostile_server(tmp_path_factory):
    server = HostileServer(tmp_path_factory.mktemp("hostile"))
    try:
        server.wait_ready()
        at_start = server.server_five_xx() or {}  # the 503s of /readyz while dnnq up was starting
        server.probe = HealthzProbe(server.url)
        yield server
        server.probe.close()
        if server.proc.poll() is not None:
            TALLY.up_exit = server.proc.returncode
        else:
            server.note_api()
            at_end = server.server_five_xx()
            if at_end is not None:
                grown = {k: n - at_start.get(k, 0) for k, n in at_end.items() if n > at_start.get(k, 0)}
                TALLY.server_five_xx = sum(grown.values())
                TALLY.server_five_xx_lines = [f"{k} +{n}" for k, n in grown.items()]
    finally:
        server.stop()
        if TALLY.restarts or TALLY.five_xx:
            sys.stderr.write(f"\n--- dnnq up log (tail) ---\n{server.log()[-6000:]}\n")


@pytest.fixture(scope="session", autouse=True)
def hostile_summary():
    """One line for the whole suite, then the issue's goals as assertions."""
    yield
    if not TALLY.responses:
        return  # nothing of the suite ran (deselected or skipped)
    peak_case, peak = max(TALLY.peak_rss.items(), key=lambda kv: kv[1], default=("-", 0))
    slow_case, slow = max(TALLY.healthz_s.items(), key=lambda kv: kv[1], default=("-", 0.0))
    line = (
        f"hostile summary: {TALLY.responses} responses, {len(TALLY.five_xx)} 5xx seen by clients "
        f"(server counted {TALLY.server_five_xx}), {TALLY.restarts} API restarts/crashes "
        f"(pids {TALLY.api_pids}, dnnq up exit {TALLY.up_exit}), max API peak RSS {peak / 2**20:.0f} MiB "
        f"({peak_case}; bound {RSS_BOUND / 2**20:.0f} MiB), max /healthz during parsing {slow * 1000:.0f} ms "
        f"({slow_case}), {len(TALLY.disclosures)} disclosures"
    )
    TALLY.summary = line  # printed by pytest_terminal_summary below: output here is captured
    failures = []
    if TALLY.five_xx or TALLY.server_five_xx:
        failures.append("5xx answers: " + "; ".join(TALLY.five_xx[:10] + TALLY.server_five_xx_lines))
    if TALLY.restarts:
        failures.append(f"the API restarted or crashed: pids {TALLY.api_pids}, dnnq up exit {TALLY.up_exit}")
    if peak > RSS_BOUND:
        failures.append(f"API peak RSS {peak / 2**20:.0f} MiB > {RSS_BOUND / 2**20:.0f} MiB ({peak_case})")
    if slow > HEALTHZ_GOAL_S:
        failures.append(f"/healthz took {slow * 1000:.0f} ms while {slow_case} was parsed (goal < 100 ms)")
    if TALLY.disclosures:
        failures.append("disclosures: " + "; ".join(TALLY.disclosures[:10]))
    assert not failures, line + "\n" + "\n".join(failures)


def pytest_terminal_summary(terminalreporter):
    if TALLY.summary:
        terminalreporter.write_sep("-", "hostile-input suite")
        terminalreporter.write_line(TALLY.summary)
