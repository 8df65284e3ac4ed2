"""Every error becomes application/problem+json (RFC 9457) here, and only here.

Routes raise `Problem` (or let library errors propagate); the handlers below turn each kind into
{"type", "title", "status", "detail"} (+ "errors" for validation failures).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, TypeVar, cast

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from dnnq.service.schemas import FiniteJSONResponse

__all__ = [
    "PROBLEM_JSON",
    "Problem",
    "ProblemDetails",
    "document_problems",
    "field_error",
    "install_error_handlers",
    "problem_response",
    "problems",
    "redis_unreachable_response",
    "response_for",
]

PROBLEM_JSON = "application/problem+json"
# RFC 9110 names where Python's HTTPStatus still uses the older phrase.
_TITLES = {413: "Content Too Large", 422: "Unprocessable Content"}


def _title(status: int) -> str:
    return _TITLES.get(status) or HTTPStatus(status).phrase


log = logging.getLogger("dnnq.api")


class Problem(Exception):
    """An HTTP error with a human-readable detail; `errors` lists field-level problems."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or _title(status)
        self.errors = errors
        self.headers = headers


class FieldProblem(BaseModel):
    field: str
    message: str
    input: int | float | str | bool | None = None


class ProblemDetails(BaseModel):
    """The body of every error response (application/problem+json, RFC 9457)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldProblem] | None = None


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: the error statuses it may answer (document_problems gives them a body)."""
    return {code: {"description": _title(code)} for code in codes}


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Make the OpenAPI schema say what the handlers below send: every 4xx/5xx response without its
    own content is problem+json (FastAPI's default 422 included); every /v1 operation may also answer
    401 (API keys) and 503 (Redis unreachable); every operation with a body may answer 400 and 413."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (ProblemDetails,):
        defs = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(defs.pop("$defs", {}))
        components[model.__name__] = defs
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    body = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}
    for path, item in schema.get("paths", {}).items():
        for op in item.values():
            responses = op.setdefault("responses", {})
            extra = [401, 503] if path.startswith("/v1/") else []
            if "requestBody" in op:
                extra += [400, 413]  # a body that cannot be parsed at all (bad bytes, broken multipart)
            if op.get("parameters") or "requestBody" in op:
                extra.append(422)
            for code in extra:
                responses.setdefault(str(code), {"description": _title(code)})
            for code, response in responses.items():
                if code[0] in "45" and (code == "422" or "content" not in response):
                    response["content"] = body
    return schema


def field_error(field: str, message: str, status: int = 422) -> Problem:
    """A 422 about one request field, e.g. field_error("training.learning_rate", "must be > 0")."""
    return Problem(status, f"{field}: {message}", errors=[{"field": field, "message": message}])


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    title = title or _title(status)
    body: dict[str, Any] = {
        "type": f"https://dnnq.dev/problems/{title.lower().replace(' ', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    # nosniff here as well as in service/guards.py: the 500 of an unexpected error is sent from outside
    # every middleware of ours
    headers = {"X-Content-Type-Options": "nosniff", **(headers or {})}
    return FiniteJSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _field_path(loc: tuple | list) -> str:
    """('body', 'training', 'learning_rate') -> 'training.learning_rate'; ('query', 'limit') -> 'limit'."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "form", "cookie"):
        parts = parts[1:]
    return ".".join(str(p) for p in parts) or "body"


MAX_FIELD_ERRORS = 20  # a body with a million bad values gets the first ones, not a million-line answer


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    errors = exc.errors()
    for err in errors[:MAX_FIELD_ERRORS]:
        item: dict[str, Any] = {"field": _field_path(err.get("loc", ())), "message": err.get("msg", "")}
        if err.get("type") == "json_invalid":  # loc is ('body', <offset>): name the body, say what to send
            item = {
                "field": "body",
                "message": f"{item['message']} ({(err.get('ctx') or {}).get('error', '')}); "
                "send a JSON object with Content-Type: application/json.",
            }
        elif err.get("type") == "finite_number":  # NaN, Infinity, or a literal past float64 such as 1e999
            item["message"] += " (NaN, Infinity and numbers past about 1.8e308, such as 1e999, are refused)"
        value = err.get("input")
        # echoed only when JSON can hold it: NaN and infinities have no JSON spelling
        if isinstance(value, (int, str, bool)) or (isinstance(value, float) and math.isfinite(value)):
            item["input"] = value
        out.append(item)
    if len(errors) > MAX_FIELD_ERRORS:
        out.append({"field": "body", "message": f"and {len(errors) - MAX_FIELD_ERRORS} more errors like these."})
    return out


def response_for(problem: Problem) -> JSONResponse:
    return problem_response(
        problem.status, problem.detail, title=problem.title, errors=problem.errors, headers=problem.headers
    )


async def _on_problem(request: Request, exc: Problem) -> JSONResponse:
    return response_for(exc)


async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = _validation_errors(exc)
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "Invalid request."
    return problem_response(422, detail, errors=errors)


async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"No route {request.url.path}; see /docs for the API."
    return problem_response(exc.status_code, detail, headers=getattr(exc, "headers", None))


def redis_unreachable_response(exc: Exception) -> JSONResponse:
    """The 503 for a Redis connection error or timeout (also sent by the fast lane, service/fastlane.py)."""
    log.warning("redis unreachable: %s", type(exc).__name__)
    return problem_response(
        503,
        "Redis is unreachable; retry shortly.",
        title="Service Unavailable",
        headers={"Retry-After": "2"},
    )


async def _on_redis_down(request: Request, exc: Exception) -> JSONResponse:
    return redis_unreachable_response(exc)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(500, "Internal error; it has been logged.")


_E = TypeVar("_E", bound=Exception)
_AnyHandler = Callable[[Request, Exception], Awaitable[JSONResponse]]


def _add_handler(app: FastAPI, kind: type[_E], handler: Callable[[Request, _E], Awaitable[JSONResponse]]) -> None:
    # Starlette types every handler as taking any Exception; it calls each with an instance of `kind`.
    app.add_exception_handler(kind, cast(_AnyHandler, handler))


def install_error_handlers(app: FastAPI) -> None:
    _add_handler(app, Problem, _on_problem)
    _add_handler(app, RequestValidationError, _on_validation)
    _add_handler(app, StarletteHTTPException, _on_http)
    _add_handler(app, redis.ConnectionError, _on_redis_down)
    _add_handler(app, redis.TimeoutError, _on_redis_down)
    _add_handler(app, Exception, _on_unexpected)
