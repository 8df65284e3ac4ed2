"""The SDK's errors: one class per kind of failure, each with the HTTP status, the problem+json body
(`problem`) and its `detail`; and CliError, the CLI's one-line error (dnnq/cli.py prints it)."""

from __future__ import annotations

from typing import Any

__all__ = [
    "CliError",
    "Conflict",
    "ConnectionFailed",
    "DnnqError",
    "IntegrityError",
    "InvalidRequest",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ServerError",
    "Unauthorized",
    "WaitTimeout",
    "error_for",
]


class DnnqError(Exception):
    """Any failure of a dnnq call. `status` is the HTTP status (None when no answer came), `detail` the
    server's explanation, `problem` its whole problem+json body ({} when there was none)."""

    def __init__(self, detail: str, status: int | None = None, problem: dict[str, Any] | None = None) -> None:
        super().__init__(f"{detail} ({status})" if status is not None else detail)
        self.detail = detail
        self.status = status
        self.problem = problem or {}


class InvalidRequest(DnnqError):
    """400 or 422: the request was refused as it stands; `problem["errors"]` names the fields."""


class PayloadTooLarge(InvalidRequest):
    """413: too large. A body or upload past the server's limits (send less per request: Client.limits()
    says how much), or past the API key's storage quota for datasets or job artifacts (the message says
    the use: delete datasets or finished jobs)."""


class Unauthorized(DnnqError):
    """401 or 403: pass api_key= (or set DNNQ_API_KEY)."""


class NotFound(DnnqError):
    """404: no such job or dataset for this API key (or no such artifact)."""


class Conflict(DnnqError):
    """409: not in this state (e.g. predicting with a job that has not succeeded, deleting a running one)."""


class RateLimited(DnnqError):
    """429: too many requests or jobs; `retry_after` is the server's Retry-After in seconds, if given."""

    retry_after: float | None = None


class ServerError(DnnqError):
    """5xx: the server failed (503: a dependency such as Redis is unreachable); retrying may help."""


class ConnectionFailed(DnnqError):
    """No answer: the server could not be reached or did not answer in time."""


class IntegrityError(DnnqError):
    """A download did not match the checksum the server announced."""


class WaitTimeout(DnnqError, TimeoutError):
    """Job.wait(timeout=...) ran out before the job ended."""


_BY_STATUS: dict[int, type[DnnqError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidRequest,
    429: RateLimited,
}


def _detail(problem: dict[str, Any], fallback: str) -> str:
    """The problem's `detail`, with its field errors where the detail does not already say them."""
    detail = problem.get("detail") or problem.get("title") or fallback
    if isinstance(detail, list):  # FastAPI's default validation body, in case
        detail = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    detail = str(detail)
    errors = problem.get("errors")
    if isinstance(errors, list) and errors:
        parts, said = [], []
        for err in errors:
            if isinstance(err, dict):
                field = err.get("field") or ".".join(str(p) for p in err.get("loc", []))
                msg = err.get("message") or err.get("msg") or ""
                parts.append(f"{field}: {msg}" if field else str(msg))
                said.append(bool(msg) and str(msg) in detail)  # e.g. "trials[0]: training.epochs: <msg>"
        if parts and not all(p in detail for p in parts) and not all(said):
            detail = f"{detail}: " + "; ".join(parts) if detail else "; ".join(parts)
    return detail


def error_for(status: int, body: Any, text: str, reason: str, headers: dict[str, str] | None = None) -> DnnqError:
    """The error for an HTTP answer `status` whose decoded JSON body is `body` (None if not JSON)."""
    problem = body if isinstance(body, dict) else {}
    if problem:
        detail = _detail(problem, reason)
    elif body is not None:
        detail = str(body)[:200]
    else:
        detail = text.strip()[:200] or reason
    kind = _BY_STATUS.get(status) or (ServerError if status >= 500 else DnnqError)
    error = kind(detail, status, problem)
    if isinstance(error, RateLimited):
        retry = (headers or {}).get("retry-after", "")
        error.retry_after = float(retry) if retry.replace(".", "", 1).isdigit() else None
    return error


class CliError(Exception):
    """A failure the user can act on; the CLI prints it as one line and exits non-zero."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
