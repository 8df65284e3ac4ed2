"""The SDK's Sweep: many trials of one spec (POST /v1/sweeps), each trial an ordinary Job.

    sweep = client.sweep(data, base={"training": {"epochs": 300}}, grid={"lr": [0.01, 0.05, 0.1]})
    sweep.wait(on_update=print)          # each trial's status and progress as it changes
    sweep.best.predict(X_test)           # the best trial, a Job (validation loss, else training loss)

A Sweep holds the sweep's last JSON view (GET /v1/sweeps/{id}); refresh() reads it again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx

from dnnq import wire
from dnnq.errors import ConnectionFailed, RateLimited, WaitTimeout
from dnnq.job import STREAM_RETRIES, Job, _View

if TYPE_CHECKING:
    from dnnq.client import Client

__all__ = ["Sweep", "trial_job"]


def trial_job(client: Client, sweep_id: str, trial: dict[str, Any]) -> Job:
    """A Job from a sweep view's trial; any field the trial view lacks (spec, timings, ...) is read from
    the server on first use."""
    return Job(client, wire.trial_job_view(sweep_id, trial), partial=True)


class Sweep(_View):
    """A sweep: status ('queued', 'running', 'finished'), n_trials, counts, metric, base, grid, ... as
    attributes of its last view; `trials` and `best` as Jobs."""

    def __init__(self, client: Client, data: dict[str, Any], metric: str | None = None) -> None:
        super().__init__(client, data)
        self._metric = metric

    def __repr__(self) -> str:
        d = self.data
        return f"<Sweep {self.id} {d.get('status')}: {d.get('n_trials')} trials>"

    @property
    def done(self) -> bool:
        """Every trial has ended (succeeded, failed, cancelled or deleted)."""
        return self.data.get("status") == "finished"

    def refresh(self, metric: str | None = None) -> Sweep:
        """Read the sweep again; `metric` (val_loss, loss, val_accuracy, accuracy) ranks the trials
        from now on (default: the sweep's own, validation loss when it has a validation set)."""
        self._metric = metric or self._metric
        params = {"metric": self._metric} if self._metric else {}
        self.data = self._client.request_json("GET", f"/v1/sweeps/{self.id}", params=params)
        return self

    def _full(self) -> dict[str, Any]:
        if "trials" not in self.data:  # a listing's summary
            self.refresh()
        return self.data

    @property
    def trials(self) -> list[Job]:
        """Every trial as a Job, in trial order (as of the last refresh)."""
        data = self._full()
        return [trial_job(self._client, self.id, t) for t in data["trials"]]

    @property
    def best(self) -> Job | None:
        """The best succeeded trial by the sweep's metric (lowest loss, highest accuracy); None until
        one has a value. Its value: `sweep.data["best"]["value"]`."""
        best = self._full().get("best")
        return None if best is None else self.trials[best["index"]]

    # -- following a sweep ---------------------------------------------------------------------------
    def wait(
        self,
        timeout: float | None = None,
        on_update: Callable[[dict[str, Any]], object] | None = None,
        poll_interval: float = 1.0,
    ) -> Sweep:
        """Block until every trial has ended and return the sweep, refreshed.

        `on_update(trial)` is called with a trial's index, job_id, status, progress, metrics and error,
        for every trial when the wait starts and whenever one's status or progress changes (the sweep's
        event stream; a dropped stream is reopened, and polled when it cannot be). Raises WaitTimeout
        after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.refresh().done:
            return self
        for _attempt in range(STREAM_RETRIES):
            try:
                if self._follow_stream(deadline, on_update):
                    return self.refresh()
            except (ConnectionFailed, RateLimited, httpx.HTTPError):  # 429: the key's streams are all open
                pass
            if self.refresh().done:
                return self
            self._check_deadline(deadline)
        return self._poll(deadline, poll_interval, on_update)

    def _follow_stream(self, deadline: float | None, on_update: Callable[[dict[str, Any]], object] | None) -> bool:
        """Whether the `end` event came."""
        from httpx_sse import EventSource

        # keepalive comments come every 15 s by default: a read waits at most this long for one
        read = 120.0 if deadline is None else max(0.1, min(120.0, deadline - time.monotonic()))
        timeout = httpx.Timeout(10.0, read=read)
        headers = {"Accept": "text/event-stream"}
        try:
            with self._client.stream("GET", f"/v1/sweeps/{self.id}/events", headers=headers, timeout=timeout) as resp:
                for sse in EventSource(resp).iter_sse():
                    if sse.event == "end":
                        return True
                    if sse.event == "trial" and on_update is not None:
                        on_update(json.loads(sse.data))
                    self._check_deadline(deadline)
        except ConnectionFailed as exc:
            if deadline is not None and time.monotonic() >= deadline:
                raise self._timeout() from exc
            raise
        return False

    def _poll(
        self, deadline: float | None, interval: float, on_update: Callable[[dict[str, Any]], object] | None
    ) -> Sweep:
        seen: dict[int, Any] = {}
        while not self.refresh().done:
            for t in self.data["trials"]:
                key = (t["status"], json.dumps(t.get("progress"), sort_keys=True))
                if on_update is not None and seen.get(t["index"]) != key:
                    seen[t["index"]] = key
                    on_update({k: t.get(k) for k in ("index", "job_id", "status", "progress", "metrics", "error")})
            self._check_deadline(deadline)
            time.sleep(interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic())))
        return self

    def _timeout(self) -> WaitTimeout:
        counts = ", ".join(f"{n} {s}" for s, n in sorted((self.data.get("counts") or {}).items()))
        return WaitTimeout(f"sweep {self.id} is still {self.data.get('status')} ({counts}) after the timeout")

    def _check_deadline(self, deadline: float | None) -> None:
        if deadline is not None and time.monotonic() >= deadline:
            raise self._timeout()

    # -- ending --------------------------------------------------------------------------------------
    def cancel(self) -> Sweep:
        """Cancel every unfinished trial: queued ones at once, running ones at their next epoch's end."""
        self.data = self._client.request_json("POST", f"/v1/sweeps/{self.id}/cancel")
        return self

    def delete(self) -> None:
        """Delete the sweep, its trials' records, histories and files (204). Conflict while a trial is
        queued or running (cancel first); NotFound for an unknown or another tenant's sweep."""
        self._client.request("DELETE", f"/v1/sweeps/{self.id}")
