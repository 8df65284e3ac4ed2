"""`dnnq up` end to end: a real embedded Redis, real worker processes, the real API over HTTP.

One run: up -> a tiny job succeeds -> a killed worker is restarted -> SIGTERM while a long job
trains leaves no process behind. A second run on the same data dir still has the records (AOF)
and the long job resumes from its checkpoint; killing its Redis makes `dnnq up` stop everything
and exit non-zero.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from dnnq.workers.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux) to find child processes"),
]


def _ppid_map() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        parents[int(entry)] = int(fields[1])
    return parents


def descendants(pid: int) -> set[int]:
    parents = _ppid_map()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


class Up:
    """`python -m dnnq up` as a subprocess in its own session, output in a log file."""

    def __init__(self, tmp_path: Path, data_dir: Path, name: str, workers: int = 1, extra: tuple = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DNNQ_")}
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": "1",
                "OPENBLAS_NUM_THREADS": "1",
                "DNNQ_LEASE_SECONDS": "4",
                "DNNQ_HEARTBEAT_SECONDS": "0.5",
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
                    str(data_dir),
                    "--workers",
                    str(workers),
                    "--grace",
                    "2",
                    *extra,
                ],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"dnnq up exited with {self.proc.returncode}:\n{self.log()[-4000:]}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        pytest.fail(f"/readyz not 200 within {timeout}s:\n{self.log()[-4000:]}")

    def children(self, marker: str) -> list[int]:
        """Direct children of `dnnq up` whose command line contains marker (not Celery's pool processes)."""
        parents = _ppid_map()
        return [p for p, parent in parents.items() if parent == self.proc.pid and marker in cmdline(p) and alive(p)]

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        for pid in descendants(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _wait_for(predicate, timeout: float, what: str, log=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"{what} within {timeout}s\n{log()[-4000:]}")


def _assert_all_gone(pids: set[int], up: Up) -> None:
    _wait_for(lambda: not [p for p in pids if alive(p)], 10, "children still alive after dnnq up exited", up.log)


def test_up_trains_restarts_workers_stops_cleanly_and_keeps_records(tmp_path):
    data_dir = tmp_path / "dnnq-data"
    up = Up(tmp_path, data_dir, "first", extra=("--api-workers", "1"))  # one uvicorn process
    try:
        up.wait_ready()
        # `dnnq up` polls /healthz itself and may print its line a moment after /readyz answers.
        log = _wait_for(lambda: "dnnq is up" in up.log() and up.log(), 10, "no 'dnnq is up' line", up.log)
        assert f"dnnq is up: {up.url} (dashboard), API docs {up.url}/docs" in log
        assert "Redis embedded at redis://127.0.0.1:" in log
        # the embedded Redis has a password: kept in a file of this user's only, never printed
        password = (data_dir / "redis" / "password").read_text().strip()
        assert password not in log and f"password in {data_dir / 'redis' / 'password'}" in log
        assert data_dir.stat().st_mode & 0o777 == 0o700
        assert "listening on 127.0.0.1 only" in log
        assert "dnnq: 1 worker (queues default), 1 API process, data in" in log

        dataset = httpx.post(
            f"{up.url}/v1/datasets/synthetic",
            json={"name": "moons", "n_samples": 200, "noise": 0.1, "seed": 0},
            timeout=30,
        )
        assert dataset.status_code in (200, 201), dataset.text
        job = httpx.post(
            f"{up.url}/v1/jobs",
            timeout=30,
            json={
                "dataset_id": dataset.json()["id"],
                "model": {"hidden_layers": [8]},
                "training": {"epochs": 20, "learning_rate": 0.05},
                "device": "cpu",
            },
        )
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]

        def finished():
            body = httpx.get(f"{up.url}/v1/jobs/{job_id}", params={"history": "none"}, timeout=10).json()
            return body if body["status"] in ("succeeded", "failed", "cancelled") else None

        final = _wait_for(finished, 120, "job did not finish", up.log)
        assert final["status"] == "succeeded", final
        assert final["progress"]["epoch"] == 20

        # A worker that dies is restarted.
        (worker_pid,) = up.children("-m dnnq.workers")
        os.kill(worker_pid, signal.SIGKILL)
        restarted = _wait_for(
            lambda: [p for p in up.children("-m dnnq.workers") if p != worker_pid],
            30,
            "the killed worker was not restarted",
            up.log,
        )
        assert len(restarted) == 1
        assert "worker 1 was killed by SIGKILL (code -9); restarting it now" in up.log()

        # A long job is training when `dnnq up` stops: its worker releases it (checkpoint, queued, the
        # attempt not spent), it does not fail. Far more epochs than any machine trains in the 2 s
        # grace; after the restart it is seen resuming, then cancelled.
        moons = httpx.post(
            f"{up.url}/v1/datasets/synthetic",
            timeout=30,
            json={"name": "moons", "n_samples": 2000, "noise": 0.2, "seed": 1},
        ).json()
        long_job = httpx.post(
            f"{up.url}/v1/jobs",
            timeout=30,
            json={
                "dataset_id": moons["id"],
                "model": {"hidden_layers": [64, 64]},
                "training": {"epochs": 50_000, "batch_size": 32, "checkpoint_every": 2},
                "device": "cpu",
            },
        ).json()
        _wait_for(
            lambda: (
                (
                    httpx.get(f"{up.url}/v1/jobs/{long_job['id']}", params={"history": "none"}).json()["progress"] or {}
                ).get("epoch", 0)
                >= 6
            ),
            60,
            "the long job did not start",
            up.log,
        )

        # SIGTERM stops every process it started: API, workers (with their pool children), Redis.
        children = descendants(up.proc.pid)
        assert any("redis-server" in cmdline(p) for p in children)
        assert any("uvicorn" in cmdline(p) for p in children)
        up.proc.send_signal(signal.SIGTERM)
        assert up.proc.wait(60) == 0, up.log()[-4000:]
        _assert_all_gone(children, up)
        assert "dnnq: stopped (SIGTERM)" in up.log()
        assert '"event": "job.released"' in up.log() and '"level": "critical"' not in up.log()
    finally:
        up.cleanup()

    # Same data dir: the job record is still there (Redis AOF); then Redis dies -> exit non-zero.
    again = Up(tmp_path, data_dir, "second", extra=("--api-workers", "2"))  # two API processes this time
    try:
        again.wait_ready()
        body = httpx.get(f"{again.url}/v1/jobs/{job_id}", timeout=10)
        assert body.status_code == 200
        assert body.json()["status"] == "succeeded"
        assert body.json()["metrics"] == final["metrics"]

        long_url = f"{again.url}/v1/jobs/{long_job['id']}"

        def long_job_training_again():
            body = httpx.get(long_url, params={"history": "none"}).json()
            assert body["status"] in ("queued", "running"), body  # never failed by the stop
            epoch = (body["progress"] or {}).get("epoch", 0)
            return body if body["attempts"] == 1 and epoch > int(body.get("resumed_from_epoch") or 10**9) else None

        resumed = _wait_for(
            long_job_training_again, 120, "the interrupted job did not resume after the restart", again.log
        )
        assert int(resumed["resumed_from_epoch"]) >= 2  # from its checkpoint, not from epoch 0
        assert httpx.post(f"{long_url}/cancel").status_code == 202
        _wait_for(
            lambda: httpx.get(long_url, params={"history": "none"}).json()["status"] == "cancelled",
            60,
            "the resumed job did not stop when cancelled",
            again.log,
        )

        # Two API processes share the port: a scrape reaches either, and each answers for both.
        # 40 requests on fresh connections land on both processes (the kernel hashes each one).
        for _ in range(40):
            assert httpx.get(f"{again.url}/v1/datasets").status_code == 200
        sample = 'dnnq_http_request_duration_seconds_count{method="GET",route="/v1/datasets",status="200"} 40.0'
        for _ in range(6):
            assert sample in httpx.get(f"{again.url}/metrics").text

        assert '"GET /v1/jobs/' not in again.log()  # access log off by default
        children = descendants(again.proc.pid)
        # two API processes, each on its own SO_REUSEPORT socket (dnnq/api_process.py)
        assert sum("dnnq.api_process" in cmd for cmd in map(cmdline, children)) == 2
        (redis_pid,) = again.children("redis-server")
        os.kill(redis_pid, signal.SIGKILL)
        assert again.proc.wait(60) == 1
        assert "the embedded Redis server died" in again.log()
        _assert_all_gone(children, again)
    finally:
        again.cleanup()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing is Linux's")
def test_api_sockets_share_the_port_and_the_kernel_spreads_connections():
    """dnnq up --api-workers N binds N SO_REUSEPORT sockets; a burst of connections reaches all of
    them (one shared socket let asyncio's accept loop take a whole burst into one process)."""
    from dnnq.up import api_children

    port = free_port()
    children, sockets = api_children("127.0.0.1", port, 2, False, {})
    assert [c.name for c in children] == ["api 1", "api 2"]
    assert all(
        c.pass_fds == (s.fileno(),) and "dnnq.api_process" in c.argv for c, s in zip(children, sockets, strict=True)
    )
    clients = []
    try:
        for _ in range(40):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        accepted = []
        for sock in sockets:
            sock.setblocking(False)
            n = 0
            while True:
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                conn.close()
                n += 1
            accepted.append(n)
        assert sum(accepted) == 40 and min(accepted) >= 1, accepted  # all 40 on one: p = 2 * 2**-40
    finally:
        for s in [*clients, *sockets]:
            s.close()


def test_restart_back_off_and_exit_descriptions():
    from dnnq.supervisor import RESTART_BACKOFF_MAX_S, RestartPolicy, describe_exit

    policy = RestartPolicy()
    assert [policy.delay(n) for n in range(5)] == [0.0, 1.0, 2.0, 4.0, 8.0]
    assert policy.delay(40) == RESTART_BACKOFF_MAX_S == 30.0
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(-9) == "was killed by SIGKILL (code -9)"
    assert describe_exit(-200) == "was killed by signal 200 (code -200)"


def test_embedded_redis_has_its_own_session(tmp_path):
    """A terminal's Ctrl-C (SIGINT to its foreground process group) must not reach Redis: the workers
    still need it while they release their jobs, and `dnnq up` stops it last."""
    from dnnq.workers.redis_server import start_redis

    with start_redis(tmp_path) as server:
        assert os.getsid(server.proc.pid) == server.proc.pid != os.getsid(0)
        assert os.getpgid(server.proc.pid) != os.getpgrp()


def test_a_killed_api_process_is_restarted_with_back_off_and_nothing_else_stops(tmp_path):
    """kill -9 of one of two API processes: `dnnq up` says so and starts it again on a fresh socket of
    the same port (a second death soon after waits a back-off), /healthz keeps answering, the workers
    and Redis keep running, and a job submitted before finishes."""
    import re

    up = Up(tmp_path, tmp_path / "data", "api-kill", extra=("--api-workers", "2"))
    try:
        up.wait_ready()
        moons = httpx.post(
            f"{up.url}/v1/datasets/synthetic",
            timeout=30,
            json={"name": "moons", "n_samples": 500, "noise": 0.2, "seed": 0},
        ).json()
        job = httpx.post(
            f"{up.url}/v1/jobs",
            timeout=30,
            json={
                "dataset_id": moons["id"],
                "model": {"hidden_layers": [16]},
                "training": {"epochs": 1500},
                "device": "cpu",
            },
        )
        assert job.status_code == 202, job.text
        job_url = f"{up.url}/v1/jobs/{job.json()['id']}"
        workers, redis_pids = set(up.children("-m dnnq.workers")), set(up.children("redis-server"))
        apis = set(up.children("dnnq.api_process"))
        assert len(apis) == 2 and len(workers) == 1 and len(redis_pids) == 1

        def restarted(gone: set[int]):
            return lambda: (now := set(up.children("dnnq.api_process"))) and len(now) == 2 and not now & gone and now

        victim = sorted(apis)[0]
        for death, expected in ((1, "now"), (2, "in 1s")):  # the same API process twice: the second waits
            os.kill(victim, signal.SIGKILL)
            now = _wait_for(restarted({victim}), 30, f"killed API process {victim} not restarted", up.log)
            (victim,) = now - apis
            apis = now
            line = re.search(
                rf"dnnq: (api \d) was killed by SIGKILL \(code -9\); restarting it {expected} "
                rf"\(restart {death} within 60s\)",
                up.log(),
            )
            assert line, up.log()[-3000:]
            # fresh connections reach both processes (SO_REUSEPORT): all answered
            _wait_for(
                lambda: all(httpx.get(f"{up.url}/healthz", timeout=5).status_code == 200 for _ in range(20)),
                30,
                "/healthz not answered by every API process",
                up.log,
            )
        assert up.proc.poll() is None
        assert set(up.children("-m dnnq.workers")) == workers and set(up.children("redis-server")) == redis_pids
        final = _wait_for(
            lambda: (
                (b := httpx.get(job_url, params={"history": "none"}, timeout=10).json())["status"]
                in ("succeeded", "failed", "cancelled")
                and b
            ),
            120,
            "the job did not finish",
            up.log,
        )
        assert final["status"] == "succeeded" and final["attempts"] == 1, final
        up.proc.send_signal(signal.SIGTERM)
        assert up.proc.wait(60) == 0, up.log()[-4000:]
        assert "Traceback" not in up.log()
    finally:
        up.cleanup()


def test_supervisor_restarts_a_crashing_api_for_ever_but_stops_on_a_worker_crash_loop(capsys):
    """Children that exit at once: the API process keeps being restarted (a request that crashes it
    must not take the service down), with growing back-off; a worker gives up after MAX_RESTARTS."""
    import threading

    from dnnq.supervisor import MAX_RESTARTS, Child, ProcessSet, RestartPolicy

    policy = RestartPolicy(backoff_s=0.01)
    crash = [sys.executable, "-c", "import sys; sys.exit(3)"]
    idle = [sys.executable, "-c", "import time; time.sleep(60)"]

    api, worker = Child("api", crash, dict(os.environ), restart_forever=True), Child("worker 1", idle, dict(os.environ))
    stop = threading.Event()
    try:
        api.start()
        worker.start()
        timer = threading.Timer(MAX_RESTARTS * 0.5 + 3, stop.set)
        timer.start()
        processes = ProcessSet(stop, policy=policy)
        processes.add_apis([api], [])
        processes.add_workers([worker])
        assert processes.watch() == 0  # stopped by the "signal", not given up
    finally:
        for child in (api, worker):
            child.signal_group(signal.SIGKILL)
            child.proc.wait()
    err = capsys.readouterr().err
    assert err.count("dnnq: api exited with code 3; restarting it") > MAX_RESTARTS, err
    assert "restarting it now (restart 1 within 60s)" in err and "restarting it in 0.02s (restart 3 within 60s)" in err
    assert "keeps dying" not in err

    worker = Child("worker 1", crash, dict(os.environ))
    worker.start()
    processes = ProcessSet(threading.Event(), policy=policy)
    processes.add_workers([worker])
    assert processes.watch() == 1
    worker.proc.wait()
    err = capsys.readouterr().err
    assert err.count("dnnq: worker 1 exited with code 3; restarting it") == MAX_RESTARTS
    assert f"dnnq: error: worker 1 keeps dying (it exited with code 3; {MAX_RESTARTS} restarts in 60s)" in err
