"""What the SDK's Client hands back: Dataset, Job (wait, history, weights, download, predict, cancel,
delete), Page, History and Prediction. A Job holds the job's last JSON view; refresh() reads it again."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import httpx

from dnnq import wire
from dnnq.errors import ConnectionFailed, RateLimited, WaitTimeout

if TYPE_CHECKING:
    import numpy as np

    from dnnq.client import Client

__all__ = ["TERMINAL", "Dataset", "History", "Job", "Page", "Prediction"]

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})  # job statuses that do not change any more
STREAM_RETRIES = 3  # a dropped event stream is resumed (Last-Event-ID) this often before wait() polls

T = TypeVar("T")


class Page(list[T], Generic[T]):
    """One page of a listing: the items, with `total`, `offset` and `limit`."""

    total: int = 0
    offset: int = 0
    limit: int = 0

    @classmethod
    def of(cls, body: Mapping[str, Any], make: Callable[[dict[str, Any]], T]) -> Page[T]:
        page: Page[T] = cls(make(item) for item in body.get("items") or [])
        page.total, page.offset, page.limit = body.get("total", len(page)), body.get("offset", 0), body.get("limit", 0)
        return page


class _View:
    """Attribute access to the server's JSON view (`data`); unknown names raise AttributeError."""

    def __init__(self, client: Client, data: dict[str, Any]) -> None:
        self._client = client
        self.data = data

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "data":
            raise AttributeError(name)
        try:
            return self.data[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}") from None

    @property
    def id(self) -> str:
        return str(self.data["id"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _View) and type(other) is type(self) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)


class Dataset(_View):
    """An uploaded or generated dataset: id, name, n_examples, n_features, n_outputs, classes, ..."""

    def __repr__(self) -> str:
        d = self.data
        return f"<Dataset {self.id} {d.get('name')!r}: {d.get('n_examples')} x {d.get('n_features')}>"

    def delete(self) -> None:
        """DELETE /v1/datasets/{id} (409 while a queued or running job uses it)."""
        self._client.request("DELETE", f"/v1/datasets/{self.id}")


class History(dict[str, "np.ndarray"]):
    """A job's per-epoch history as arrays by name (epoch, loss, accuracy, ...), also as attributes;
    an epoch without a value (e.g. no validation that epoch) holds NaN."""

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"the history has no {name!r} (it has {', '.join(self)})") from None

    @classmethod
    def of(cls, entries: list[dict[str, Any]]) -> History:
        import numpy as np

        names = list(dict.fromkeys(k for e in entries for k, v in e.items() if isinstance(v, (int, float, type(None)))))
        out = cls()
        for name in names:
            values = [e.get(name) for e in entries]
            out[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        if "epoch" in out:
            out["epoch"] = out["epoch"].astype(np.int64)
        return out


@dataclass
class Prediction:
    """Per input row: `predictions` (class index, or the outputs for linear), `probabilities`
    (rows x outputs; None for linear) and `labels` (the training set's class labels; None for linear)."""

    predictions: np.ndarray
    probabilities: np.ndarray | None
    labels: list[Any] | None

    def __len__(self) -> int:
        return len(self.predictions)


class Job(_View):
    """A training job: status, progress, metrics, spec, error, ... as attributes of its last view; a
    sweep's trial also has sweep_id, sweep_trial, sweep_overrides and sweep_pack."""

    def __init__(self, client: Client, data: dict[str, Any], *, partial: bool = False) -> None:
        super().__init__(client, data)
        self._partial = partial  # `data` is part of the view (a sweep's trial): other fields need a refresh

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or not self.__dict__.get("_partial"):
                raise
        self.refresh()
        return super().__getattr__(name)

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.data.get('status')}>"

    @property
    def done(self) -> bool:
        return self.data.get("status") in TERMINAL

    def refresh(self) -> Job:
        self.data = self._client.request_json("GET", f"/v1/jobs/{self.id}", params={"history": "none"})
        self._partial = False
        return self

    @property
    def history(self) -> History:
        """Every epoch (GET ?history=full), as arrays."""
        view = self._client.request_json("GET", f"/v1/jobs/{self.id}", params={"history": "full"})
        return History.of(view.get("history") or [])

    # -- following a job -----------------------------------------------------------------------------
    def wait(
        self,
        timeout: float | None = None,
        on_epoch: Callable[[dict[str, Any]], object] | None = None,
        poll_interval: float = 1.0,
    ) -> Job:
        """Block until the job ends (succeeded, failed or cancelled) and return it, refreshed.

        `on_epoch(entry)` is called for each epoch completed from now on (entry: epoch, epochs, loss,
        accuracy, ...), read from the job's event stream; a dropped stream is resumed where it stopped,
        and polled when it cannot be. Raises WaitTimeout after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.refresh()
        if self.done:
            return self
        progress = self.data.get("progress") or {}
        last_id = str(progress["epoch"]) if progress.get("epoch") else None
        for _attempt in range(STREAM_RETRIES):
            try:
                ended, last_id = self._follow_stream(last_id, deadline, on_epoch)
            except (ConnectionFailed, RateLimited, httpx.HTTPError):  # 429: the key's streams are all open
                ended = False
            if ended:
                return self
            if self.refresh().done:
                return self
            _check_deadline(deadline, self)
        return self._poll(deadline, poll_interval, on_epoch)

    def _follow_stream(
        self, last_id: str | None, deadline: float | None, on_epoch: Callable[[dict[str, Any]], object] | None
    ) -> tuple[bool, str | None]:
        """(whether the `end` event came, the last event id seen)."""
        from httpx_sse import EventSource

        headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        # keepalive comments come every 15 s by default: a read waits at most this long for one
        read = 120.0 if deadline is None else max(0.1, min(120.0, deadline - time.monotonic()))
        timeout = httpx.Timeout(10.0, read=read)
        try:
            with self._client.stream("GET", f"/v1/jobs/{self.id}/events", headers=headers, timeout=timeout) as resp:
                for sse in EventSource(resp).iter_sse():
                    last_id = sse.id or last_id
                    if sse.event == "end":
                        self.data = json.loads(sse.data)
                        return True, last_id
                    if sse.event == "epoch" and on_epoch is not None:
                        on_epoch(json.loads(sse.data))
                    _check_deadline(deadline, self)
        except ConnectionFailed as exc:
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {self.id} is still {self.data.get('status')} after the timeout") from exc
            raise
        return False, last_id

    def _poll(
        self, deadline: float | None, interval: float, on_epoch: Callable[[dict[str, Any]], object] | None
    ) -> Job:
        seen = (self.data.get("progress") or {}).get("epoch") or 0
        while not self.refresh().done:
            progress = self.data.get("progress") or {}
            if on_epoch is not None and (progress.get("epoch") or 0) > seen:
                seen = progress["epoch"]
                on_epoch(dict(progress))
            _check_deadline(deadline, self)
            time.sleep(interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic())))
        return self

    # -- results -------------------------------------------------------------------------------------
    def model(self) -> dict[str, Any]:
        """The trained model's description: layer sizes, activations, preprocessing, classes, metrics."""
        return self._client.request_json("GET", f"/v1/jobs/{self.id}/model")

    def _weights_stream(self, format: str, sink: Callable[[bytes], object]) -> None:
        """Stream the weights into `sink`, sha256-checked against the server's ETag."""
        sha = hashlib.sha256()
        with self._client.stream("GET", f"/v1/jobs/{self.id}/weights", params={"format": format}) as response:
            expected = wire.etag(response)  # the API's sha256, also on a redirect (an object store's ETag is not)
            target = wire.redirect_target(response)
            if target is None:
                for chunk in response.iter_bytes():
                    sha.update(chunk)
                    sink(chunk)
        if target is not None:
            with self._client.stream_elsewhere(target) as response:
                for chunk in response.iter_bytes():
                    sha.update(chunk)
                    sink(chunk)
        wire.check_digest(sha.hexdigest(), expected)

    def download(self, path: str | os.PathLike[str], format: str = "npz") -> Path:
        """Save the weights (npz, safetensors or onnx) to `path`, sha256-checked against the ETag; a
        failed download leaves no file."""
        out = Path(path)
        tmp = out.with_name(f".{out.name}.part")
        try:
            with open(tmp, "wb") as fh:
                self._weights_stream(format, fh.write)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        return out

    def weights(self) -> dict[str, np.ndarray]:
        """The trained parameters W1, b1, ... as NumPy arrays (from the npz, sha256-checked)."""
        buffer = io.BytesIO()
        self._weights_stream("npz", buffer.write)
        return wire.load_weights(buffer.getvalue())

    def predict(self, X: Any) -> Prediction:
        """Predict rows X (examples x features, raw: the job's preprocess.scale is applied by the server;
        more dimensions are flattened per row). Sent as .npy bodies split by bytes under the server's
        limits (GET /v1/limits), in order."""
        X = wire.rows_matrix(X)
        dataset_id = self.data.get("dataset_id") or self.refresh().data["dataset_id"]
        n_outputs = int(self._client.dataset(dataset_id).data.get("n_outputs") or 1)
        rows = wire.rows_per_request(self._client.limits(), X, n_outputs)
        path, headers = f"/v1/jobs/{self.id}/predict", {"Content-Type": "application/x-npy"}
        parts = [
            self._client.request_json("POST", path, content=wire.npy_bytes(part), headers=headers)
            for part in wire.row_chunks(X, rows)
        ]
        return wire.join_predictions(parts)

    # -- ending --------------------------------------------------------------------------------------
    def cancel(self) -> Job:
        """queued: cancelled at once; running: cancelling, stopped at the next epoch (Conflict if ended)."""
        self.data = self._client.request_json("POST", f"/v1/jobs/{self.id}/cancel")
        return self

    def delete(self) -> None:
        """Delete the job: its record, history and weights (Conflict while it runs: cancel it first)."""
        self._client.request("DELETE", f"/v1/jobs/{self.id}")


def _check_deadline(deadline: float | None, job: Job) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise WaitTimeout(f"job {job.id} is still {job.data.get('status')} after the timeout")
