"""AsyncClient and AsyncJob: the SDK on asyncio (httpx.AsyncClient), for code that already runs an
event loop. The calls of Client and Job, awaited (datasets are their JSON views here); everything but
the I/O is dnnq/wire.py's.

    async with AsyncClient() as client:
        job = await client.submit(dataset=await client.upload(X=X, Y=Y), epochs=300)  # a dataset's view
        await job.wait(on_epoch=print)
        prediction = await job.predict(X)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from dnnq import wire
from dnnq.errors import ConnectionFailed, RateLimited, WaitTimeout
from dnnq.job import TERMINAL, History, Prediction

if TYPE_CHECKING:
    import numpy as np

__all__ = ["AsyncClient", "AsyncJob", "AsyncSweep"]


class AsyncClient:
    """A dnnq API over asyncio: `async with AsyncClient(url, api_key) as client: ...`."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0) -> None:
        self.url, headers = wire.connection(url, api_key)
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)
        self._limits: dict[str, Any] | None = None

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise wire.unreachable(self.url, exc) from None
        wire.raise_for(response)
        return response

    async def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        return wire.json_of(await self.request(method, path, **kwargs))

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[httpx.Response]:
        try:
            async with self._http.stream(method, path, **kwargs) as response:
                if response.status_code >= 400:
                    await response.aread()
                    wire.raise_for(response)
                yield response
        except httpx.TransportError as exc:
            raise wire.unreachable(self.url, exc) from None

    async def get_elsewhere(self, url: str) -> httpx.Response:
        """GET an absolute URL the API pointed at (wire.redirect_target), without this client's headers
        (the API key), following no further redirects."""
        try:
            async with httpx.AsyncClient(timeout=self._http.timeout) as other:
                response = await other.get(url)
        except httpx.TransportError as exc:
            raise wire.unreachable(url.split("?")[0], exc) from None
        wire.raise_for(response)
        return response

    async def limits(self) -> dict[str, Any]:
        if self._limits is None:
            self._limits = await self.request_json("GET", "/v1/limits")
        return self._limits

    async def upload(
        self, file: str | os.PathLike[str] | None = None, *, X: Any = None, Y: Any = None, **fields: Any
    ) -> dict[str, Any]:
        """A dataset (its JSON view) from a file, or from arrays X and Y sent as an .npz."""
        data = {k: str(v) for k, v in fields.items() if v is not None}
        if file is not None:
            with open(file, "rb") as fh:
                upload = (os.path.basename(file), fh.read())
        elif X is not None and Y is not None:
            data.setdefault("layout", "examples_first")
            upload = (f"{fields.get('name') or 'arrays'}.npz", wire.npz_bytes(X, Y))
        else:
            raise ValueError("pass a file, or both X and Y")
        return await self.request_json("POST", "/v1/datasets", files={"file": upload}, data=data)

    async def dataset(self, dataset_id: str) -> dict[str, Any]:
        return await self.request_json("GET", f"/v1/datasets/{wire.resource_id('dataset', dataset_id)}")

    async def submit(
        self, spec: Mapping[str, Any] | None = None, *, idempotency_key: str | None = None, **fields: Any
    ) -> AsyncJob:
        """As Client.submit; dataset= takes a dataset's id or its JSON view."""
        if isinstance(fields.get("dataset"), Mapping):
            fields["dataset"] = fields["dataset"]["id"]
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = wire.spec_body(spec, fields)
        return AsyncJob(self, await self.request_json("POST", "/v1/jobs", json=body, headers=headers))

    async def job(self, job_id: str) -> AsyncJob:
        path = f"/v1/jobs/{wire.resource_id('job', job_id)}"
        return AsyncJob(self, await self.request_json("GET", path, params={"history": "none"}))

    async def sweep(
        self,
        dataset: Mapping[str, Any] | str | None = None,
        *,
        base: Mapping[str, Any] | None = None,
        grid: Mapping[str, Any] | None = None,
        trials: list[Mapping[str, Any]] | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> AsyncSweep:
        """As Client.sweep; dataset= takes a dataset's id or its JSON view."""
        if dataset is not None:
            fields["dataset"] = dataset if isinstance(dataset, str) else dataset["id"]
        body = wire.sweep_body(base, grid, trials, fields)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return AsyncSweep(self, await self.request_json("POST", "/v1/sweeps", json=body, headers=headers))

    async def get_sweep(self, sweep_id: str) -> AsyncSweep:
        return await AsyncSweep(self, {"id": wire.resource_id("sweep", sweep_id)}).refresh()


class _AsyncView:
    """Attribute access to the server's JSON view (`data`) for the awaitable twins; unknown names raise
    AttributeError."""

    def __init__(self, client: AsyncClient, data: dict[str, Any]) -> None:
        self._client = client
        self.data = data

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "data":
            raise AttributeError(name)
        try:
            return self.data[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}") from None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.data.get('id')} {self.data.get('status')}>"


class AsyncJob(_AsyncView):
    """A job's last JSON view (`data`; status, progress, metrics ... as attributes) and its awaitable calls."""

    @property
    def done(self) -> bool:
        return self.data.get("status") in TERMINAL

    async def refresh(self) -> AsyncJob:
        self.data = await self._client.request_json("GET", f"/v1/jobs/{self.id}", params={"history": "none"})
        return self

    async def history(self) -> History:
        view = await self._client.request_json("GET", f"/v1/jobs/{self.id}", params={"history": "full"})
        return History.of(view.get("history") or [])

    async def wait(
        self, timeout: float | None = None, on_epoch: Callable[[dict[str, Any]], object] | None = None
    ) -> AsyncJob:
        """As Job.wait: the event stream, resumed when it drops (Last-Event-ID), polled when it cannot be."""
        try:
            return await asyncio.wait_for(self._wait(on_epoch), timeout)
        except asyncio.TimeoutError:
            raise WaitTimeout(f"job {self.id} is still {self.data.get('status')} after the timeout") from None

    async def _wait(self, on_epoch: Callable[[dict[str, Any]], object] | None) -> AsyncJob:
        from httpx_sse import EventSource

        if (await self.refresh()).done:
            return self
        progress = self.data.get("progress") or {}
        last_id = str(progress["epoch"]) if progress.get("epoch") else None
        for _attempt in range(3):
            headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_id} if last_id else {})}
            with contextlib.suppress(ConnectionFailed, RateLimited, httpx.HTTPError):
                path, timeout = f"/v1/jobs/{self.id}/events", httpx.Timeout(10.0, read=120.0)
                async with self._client.stream("GET", path, headers=headers, timeout=timeout) as response:
                    async for sse in EventSource(response).aiter_sse():
                        last_id = sse.id or last_id
                        if sse.event == "end":
                            self.data = json.loads(sse.data)
                            return self
                        if sse.event == "epoch" and on_epoch is not None:
                            on_epoch(json.loads(sse.data))
            if (await self.refresh()).done:
                return self
        while not (await self.refresh()).done:
            await asyncio.sleep(1.0)
        return self

    async def weights(self) -> dict[str, np.ndarray]:
        raw = await self._download("npz")
        return wire.load_weights(raw)

    async def download(self, path: str | os.PathLike[str], format: str = "npz") -> str:
        """The weights saved to `path` (sha256-checked; written only once complete)."""
        raw = await self._download(format)
        tmp = f"{os.fspath(path)}.part"
        with open(tmp, "wb") as fh:
            fh.write(raw)
        os.replace(tmp, path)
        return os.fspath(path)

    async def _download(self, format: str) -> bytes:
        response = await self._client.request("GET", f"/v1/jobs/{self.id}/weights", params={"format": format})
        expected = wire.etag(response)  # the API's sha256, also on a redirect (an object store's ETag is not)
        target = wire.redirect_target(response)
        if target is not None:
            response = await self._client.get_elsewhere(target)
        wire.check_digest(hashlib.sha256(response.content).hexdigest(), expected)
        return response.content

    async def predict(self, X: Any) -> Prediction:
        X = wire.rows_matrix(X)
        dataset = await self._client.dataset(self.data["dataset_id"])
        rows = wire.rows_per_request(await self._client.limits(), X, int(dataset.get("n_outputs") or 1))
        path, headers = f"/v1/jobs/{self.id}/predict", {"Content-Type": "application/x-npy"}
        parts = [
            await self._client.request_json("POST", path, content=wire.npy_bytes(part), headers=headers)
            for part in wire.row_chunks(X, rows)
        ]
        return wire.join_predictions(parts)

    async def cancel(self) -> AsyncJob:
        self.data = await self._client.request_json("POST", f"/v1/jobs/{self.id}/cancel")
        return self

    async def delete(self) -> None:
        await self._client.request("DELETE", f"/v1/jobs/{self.id}")


class AsyncSweep(_AsyncView):
    """A sweep's last JSON view (`data`; status, counts, best ... as attributes): Sweep's calls, awaited.
    Its trials are AsyncJobs holding the trial view's fields (refresh() one for its whole view)."""

    @property
    def done(self) -> bool:
        return self.data.get("status") == "finished"

    @property
    def trials(self) -> list[AsyncJob]:
        return [AsyncJob(self._client, wire.trial_job_view(self.data["id"], t)) for t in self.data["trials"]]

    @property
    def best(self) -> AsyncJob | None:
        best = self.data.get("best")
        return None if best is None else self.trials[best["index"]]

    async def refresh(self) -> AsyncSweep:
        self.data = await self._client.request_json("GET", f"/v1/sweeps/{self.data['id']}")
        return self

    async def wait(
        self, timeout: float | None = None, on_update: Callable[[dict[str, Any]], object] | None = None
    ) -> AsyncSweep:
        """As Sweep.wait: the sweep's event stream (reopened when it drops, then polled), then a refresh."""
        try:
            return await asyncio.wait_for(self._wait(on_update), timeout)
        except asyncio.TimeoutError:
            raise WaitTimeout(f"sweep {self.data['id']} is still {self.data.get('status')} after the timeout") from None

    async def _wait(self, on_update: Callable[[dict[str, Any]], object] | None) -> AsyncSweep:
        from httpx_sse import EventSource

        if (await self.refresh()).done:
            return self
        for _attempt in range(3):
            with contextlib.suppress(ConnectionFailed, RateLimited, httpx.HTTPError):
                path, timeout = f"/v1/sweeps/{self.data['id']}/events", httpx.Timeout(10.0, read=120.0)
                async with self._client.stream("GET", path, timeout=timeout) as response:
                    async for sse in EventSource(response).aiter_sse():
                        if sse.event == "end":
                            return await self.refresh()
                        if sse.event == "trial" and on_update is not None:
                            on_update(json.loads(sse.data))
            if (await self.refresh()).done:
                return self
        while not (await self.refresh()).done:
            await asyncio.sleep(1.0)
        return self

    async def cancel(self) -> AsyncSweep:
        self.data = await self._client.request_json("POST", f"/v1/sweeps/{self.data['id']}/cancel")
        return self

    async def delete(self) -> None:
        await self._client.request("DELETE", f"/v1/sweeps/{self.data['id']}")
