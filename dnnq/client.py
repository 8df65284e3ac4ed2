"""A small HTTP client for the dnnq API (httpx): every failure becomes one CliError line."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx

__all__ = ["Client", "CliError", "decode", "iter_sse"]


class CliError(Exception):
    """A failure the user can act on; the CLI prints it as one line and exits non-zero."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _problem_detail(response: httpx.Response) -> str:
    """The problem+json `detail` (with field errors for 422), or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    if not isinstance(body, dict):
        return str(body)[:200]
    detail = body.get("detail") or body.get("title") or response.reason_phrase
    if isinstance(detail, list):  # FastAPI's default validation body, in case
        detail = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        parts = []
        for err in errors:
            if isinstance(err, dict):
                field = err.get("field") or ".".join(str(p) for p in err.get("loc", []))
                msg = err.get("message") or err.get("msg") or ""
                parts.append(f"{field}: {msg}" if field else str(msg))
        if parts and not all(p in str(detail) for p in parts):
            detail = f"{detail}: " + "; ".join(parts) if detail else "; ".join(parts)
    return str(detail)


class Client:
    """The API's endpoints as methods returning decoded JSON; errors raise CliError."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": "dnnq-cli"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------------
    def _unreachable(self, exc: Exception) -> CliError:
        if isinstance(exc, httpx.TimeoutException):
            return CliError(f"{self.url} did not answer in time ({type(exc).__name__}); is the server overloaded?")
        return CliError(f"cannot reach {self.url}: is `dnnq up` running?")

    def _check(self, response: httpx.Response, what: str | None = None) -> httpx.Response:
        if response.status_code < 400:
            return response
        status = response.status_code
        if status == 404 and what:
            raise CliError(f"{what} not found (404)")
        detail = _problem_detail(response)
        if status == 401:
            raise CliError(f"{detail} (401): pass --api-key or set DNNQ_API_KEY")
        raise CliError(f"{detail} ({status})")

    def request(self, method: str, path: str, *, what: str | None = None, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        return self._check(response, what)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise CliError(f"{self.url}{path} answered {response.status_code} with non-JSON content") from None

    # -- datasets -----------------------------------------------------------------------------
    def upload_dataset(self, path: Path, fields: dict[str, Any]) -> dict[str, Any]:
        data = {k: str(v) for k, v in fields.items() if v is not None}
        with open(path, "rb") as fh:
            return self._json("POST", "/v1/datasets", files={"file": (path.name, fh)}, data=data)

    def synthetic_dataset(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/v1/datasets/synthetic", json=body)

    def list_datasets(self, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        return self._json("GET", "/v1/datasets", params={"offset": offset, "limit": limit})

    def get_dataset(self, dataset_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/datasets/{dataset_id}", what=f"dataset '{dataset_id}'")

    # -- jobs ---------------------------------------------------------------------------------
    def submit(self, spec: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json("POST", "/v1/jobs", json=spec, headers=headers)

    def job(self, job_id: str, history: str = "none") -> dict[str, Any]:
        return self._json("GET", f"/v1/jobs/{job_id}", params={"history": history}, what=f"job '{job_id}'")

    def list_jobs(self, status: str | None = None, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        params: dict[str, str | int] = {"offset": offset, "limit": limit}
        if status:
            params["status"] = status
        return self._json("GET", "/v1/jobs", params=params)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/v1/jobs/{job_id}/cancel", what=f"job '{job_id}'")

    def predict(self, job_id: str, inputs: list[list[float]]) -> dict[str, Any]:
        return self._json("POST", f"/v1/jobs/{job_id}/predict", json={"inputs": inputs}, what=f"job '{job_id}'")

    def download(self, job_id: str, fmt: str, out: Path) -> tuple[str, int]:
        """Stream the weights to `out` (via a temporary file) and check sha256 against the ETag.

        Returns (sha256, size). A mismatch removes the partial file and raises CliError.
        """
        self.job(job_id)  # an unknown job is "job 'x' not found (404)"; a 404 below means a missing format
        tmp = out.with_name(f".{out.name}.part")
        sha = hashlib.sha256()
        size = 0
        try:
            with self._http.stream("GET", f"/v1/jobs/{job_id}/weights", params={"format": fmt}) as response:
                if response.status_code >= 400:
                    response.read()
                    self._check(response)
                etag = response.headers.get("etag", "")
                with open(tmp, "wb") as fh:
                    for chunk in response.iter_bytes():
                        sha.update(chunk)
                        size += len(chunk)
                        fh.write(chunk)
        except httpx.TransportError as exc:
            tmp.unlink(missing_ok=True)
            raise self._unreachable(exc) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        expected = etag.removeprefix("W/").strip('"').lower()
        digest = sha.hexdigest()
        if not expected:
            tmp.unlink(missing_ok=True)
            raise CliError("the server sent no ETag for the weights: cannot verify the download")
        if digest != expected:
            tmp.unlink(missing_ok=True)
            raise CliError(f"download corrupted: sha256 {digest} does not match the ETag {expected}; retry")
        os.replace(tmp, out)
        return digest, size

    def events(self, job_id: str, last_event_id: str | None = None) -> Iterator[tuple[str, str, str | None]]:
        """The job's Server-Sent Events as (event, data, id); ends when the server closes the stream."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(10.0, read=120.0)  # keepalive comments arrive well within the read timeout
        try:
            with self._http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    self._check(response, f"job '{job_id}'")
                yield from iter_sse(response.iter_lines())
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None


def iter_sse(lines: Iterable[str]) -> Iterator[tuple[str, str, str | None]]:
    """Parse text/event-stream lines into (event, data, id) tuples (comments are skipped)."""
    event, event_id = "message", None
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield event, "\n".join(data), event_id
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value
    if data:
        yield event, "\n".join(data), event_id


def decode(data: str) -> Any:
    """JSON data of an SSE event, or the raw text."""
    try:
        return json.loads(data)
    except ValueError:
        return data
