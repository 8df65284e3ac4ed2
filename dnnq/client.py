"""The Python SDK: `Client` talks to a dnnq API over HTTP (httpx) and hands back `Dataset` and `Job`
objects (dnnq/job.py); every failure is a typed DnnqError (dnnq/errors.py).

    from dnnq import Client
    client = Client("http://127.0.0.1:8000")          # or $DNNQ_URL, and api_key= or $DNNQ_API_KEY
    data = client.upload("train.npz")                  # or client.upload(X=X, Y=Y, name="moons")
    job = client.submit(dataset=data, hidden_layers=[7], epochs=2500, learning_rate=0.0075)
    job.wait(on_epoch=print)
    job.predict(X_test).labels
    sweep = client.sweep(data, base={"training": {"epochs": 300}}, grid={"lr": [0.01, 0.1]})
    sweep.wait().best

NumPy is imported by the calls that need it, so that `dnnq --help` and the CLI's parser stay quick.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from dnnq import wire
from dnnq.errors import CliError
from dnnq.job import Dataset, Job, Page
from dnnq.sweep import Sweep
from dnnq.wire import DEFAULT_URL

if TYPE_CHECKING:
    import numpy as np

__all__ = ["DEFAULT_URL", "CliError", "Client", "Dataset", "Job", "Sweep"]


class Client:
    """A dnnq API. Use it as a context manager, or call close(), to release its connections."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0) -> None:
        self.url, headers = wire.connection(url, api_key)
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._limits: dict[str, Any] | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # -- plumbing (Job and Dataset call these too) ---------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One HTTP request; a 4xx/5xx answer raises its DnnqError, no answer ConnectionFailed."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise wire.unreachable(self.url, exc) from None
        wire.raise_for(response)
        return response

    def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        return wire.json_of(self.request(method, path, **kwargs))

    @contextlib.contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A streamed response whose status was checked (the body of an error is read for its detail)."""
        try:
            with self._http.stream(method, path, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    wire.raise_for(response)
                yield response
        except httpx.TransportError as exc:
            raise wire.unreachable(self.url, exc) from None

    @contextlib.contextmanager
    def stream_elsewhere(self, url: str) -> Iterator[httpx.Response]:
        """A streamed GET of an absolute URL the API pointed at (wire.redirect_target), sent without this
        client's headers (the API key) and following no further redirects."""
        try:
            with httpx.Client(timeout=self._http.timeout) as other, other.stream("GET", url) as response:
                if response.status_code >= 400:
                    response.read()
                    wire.raise_for(response)
                yield response
        except httpx.TransportError as exc:
            raise wire.unreachable(url.split("?")[0], exc) from None

    def limits(self) -> dict[str, Any]:
        """The server's request limits (GET /v1/limits), read once per Client."""
        if self._limits is None:
            self._limits = self.request_json("GET", "/v1/limits")
        return self._limits

    # -- datasets ------------------------------------------------------------------------------------
    def upload(
        self,
        file: str | os.PathLike[str] | None = None,
        *,
        X: np.ndarray | None = None,
        Y: np.ndarray | None = None,
        name: str | None = None,
        target: str | None = None,
        x_key: str | None = None,
        y_key: str | None = None,
        layout: str | None = None,
        header: str | None = None,
    ) -> Dataset:
        """A dataset from a file (.npz with X and Y, .csv, .h5) or from arrays X (examples x features)
        and Y (examples, or examples x outputs), sent as an .npz. A CSV's `header`: "yes" (line 1 names
        the columns), "no" (line 1 is an example) or "auto" (the server's default: data when all numbers)."""
        fields = {"name": name, "target": target, "x_key": x_key, "y_key": y_key, "layout": layout, "header": header}
        if file is not None:
            if X is not None or Y is not None:
                raise ValueError("pass a file or arrays X and Y, not both")
            path = Path(file)
            if not path.is_file():
                raise FileNotFoundError(f"no such file: {path}")
            with open(path, "rb") as fh:
                return self._upload((path.name, fh), fields)
        if X is None or Y is None:
            raise ValueError("pass a file, or both X and Y")
        fields["layout"] = layout or "examples_first"
        return self._upload((f"{name or 'arrays'}.npz", wire.npz_bytes(X, Y)), fields)

    def _upload(self, file: tuple[str, Any], fields: Mapping[str, Any]) -> Dataset:
        data = {k: str(v) for k, v in fields.items() if v is not None}
        return Dataset(self, self.request_json("POST", "/v1/datasets", files={"file": file}, data=data))

    def synthetic(self, name: str, **params: Any) -> Dataset:
        """A generated dataset: moons, circles, spiral or blobs (n_samples=, noise=, seed=, ...)."""
        body = {"name": name, **{k: v for k, v in params.items() if v is not None}}
        return Dataset(self, self.request_json("POST", "/v1/datasets/synthetic", json=body))

    def dataset(self, dataset_id: str) -> Dataset:
        return Dataset(self, self.request_json("GET", f"/v1/datasets/{wire.resource_id('dataset', dataset_id)}"))

    def datasets(self, offset: int = 0, limit: int = 50) -> Page[Dataset]:
        page = self.request_json("GET", "/v1/datasets", params={"offset": offset, "limit": limit})
        return Page.of(page, lambda d: Dataset(self, d))

    # -- jobs ----------------------------------------------------------------------------------------
    def submit(
        self, spec: Mapping[str, Any] | None = None, *, idempotency_key: str | None = None, **fields: Any
    ) -> Job:
        """Submit a training job: a spec dict (as POST /v1/jobs takes) and/or keywords, flat or by
        section: dataset=, validation_dataset=, hidden_layers=, epochs=, learning_rate=, scale=, device=,
        model={...}, training={...}. Keywords override the spec."""
        body = wire.spec_body(spec, fields)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        accepted = self.request_json("POST", "/v1/jobs", json=body, headers=headers)
        return Job(self, accepted)

    def job(self, job_id: str) -> Job:
        path = f"/v1/jobs/{wire.resource_id('job', job_id)}"
        return Job(self, self.request_json("GET", path, params={"history": "none"}))

    def jobs(self, status: str | None = None, offset: int = 0, limit: int = 50) -> Page[Job]:
        """This API key's jobs, newest first."""
        params: dict[str, str | int] = {"offset": offset, "limit": limit}
        if status:
            params["status"] = status
        return Page.of(self.request_json("GET", "/v1/jobs", params=params), lambda j: Job(self, j))

    # -- sweeps --------------------------------------------------------------------------------------
    def sweep(
        self,
        dataset: Dataset | str | None = None,
        *,
        base: Mapping[str, Any] | None = None,
        grid: Mapping[str, Any] | None = None,
        trials: list[Mapping[str, Any]] | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> Sweep:
        """Submit a sweep: one job per trial of the `base` spec (a dict as POST /v1/jobs takes, plus
        keywords as for submit()), from a `grid` (field -> list of values: every combination) or a list
        of `trials` (each field -> value). Fields by path (`training.learning_rate`), by name
        (`learning_rate`, `l2`, `seed`, `hidden_layers`, ...) or `lr`."""
        if dataset is not None:
            fields["dataset"] = dataset
        body = wire.sweep_body(base, grid, trials, fields)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return Sweep(self, self.request_json("POST", "/v1/sweeps", json=body, headers=headers))

    def get_sweep(self, sweep_id: str, metric: str | None = None) -> Sweep:
        """A sweep by id; `metric` ranks its trials (val_loss, loss, val_accuracy, accuracy)."""
        return Sweep(self, {"id": wire.resource_id("sweep", sweep_id)}, metric).refresh()

    def sweeps(self, offset: int = 0, limit: int = 20) -> Page[Sweep]:
        """This API key's sweeps, newest first (summaries: `trials` and `best` read the whole sweep)."""
        page = self.request_json("GET", "/v1/sweeps", params={"offset": offset, "limit": limit})
        return Page.of(page, lambda s: Sweep(self, s))
