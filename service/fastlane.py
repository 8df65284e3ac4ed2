"""The fast lane: the two hot requests, a status poll and a valid submit, answered below FastAPI.

Why: clients poll job status far more than anything else, and on a small machine FastAPI's per-request
machinery (routing over every route, a Request object, solving each dependency, validating the query,
the exit stack, the endpoint wrapper) cost about as much as the work; docs/perf.md has the figures.

This ASGI layer answers the requests it can answer exactly as the routes would, by calling the same
JobDesk (service/jobdesk.py: submit and view) and the same problem responses, and hands everything else
to FastAPI unchanged (a submit's body replayed as it came):
- GET /v1/jobs/{id} with a well-formed id and no query or a single valid `history=`;
- POST /v1/jobs with Content-Type application/json, no Idempotency-Key, and a body that parses and
  validates as a JobSpec exactly as FastAPI would parse it (json.loads, then the model in Python mode);
- in both, API keys off or a key that matches; without one FastAPI answers the 401.
So every validation error, 401 and unusual request is FastAPI's, formatted in one place; the lane
itself answers only 202, 200, the Problems the desk raises (404, 413 on the artifact quota, 422 on limits,
429) and 503 when Redis is unreachable. The routes stay what the OpenAPI schema documents.
tests/service/test_fastlane.py checks both paths give byte-identical responses.

It sits inside the metrics, CORS and body-limit middlewares (they see its answers as any other, and a
body over the limit is cut short before it gets here) and outside FastAPI's exception middleware; an
unexpected error still reaches Starlette's ServerErrorMiddleware and its problem+json 500.
DNNQ_FAST_LANE=false sends every request through FastAPI.
"""

from __future__ import annotations

import json
import re

import redis
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dnnq.service.deps import PUBLIC_TENANT, tenant_for
from dnnq.service.errors import Problem, redis_unreachable_response, response_for
from dnnq.service.jobdesk import HistoryChoice, JobDesk, job_not_found
from dnnq.service.routes.jobs import router as jobs_router
from dnnq.service.schemas import FiniteJSONResponse
from dnnq.workers.keys import ID_RE
from dnnq.workers.spec import JobSpec

__all__ = ["FastLane"]

_SUBMIT_PATH = "/v1/jobs"
_POLL_TEMPLATE = "/v1/jobs/{job_id}"
_JOB_PATH = re.compile(r"/v1/jobs/([^/]+)")  # with an id workers.keys accepts (ID_RE); others go to the route
# The query strings a poll may have here, and the `history` each means (the route's default is thin).
_HISTORY_BY_QUERY: dict[bytes, HistoryChoice] = {
    b"": "thin",
    b"history=thin": "thin",
    b"history=full": "full",
    b"history=none": "none",
}


def _route(method: str, path: str) -> APIRoute:
    """The jobs router's route for `method` and path template `path`: the request metrics label a lane
    answer with it."""
    routes = (r for r in jobs_router.routes if isinstance(r, APIRoute) and r.path == path)
    return next(r for r in routes if method in (r.methods or ()))


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


class FastLane:
    """ASGI middleware; `answered` counts the requests it answered itself (tests read it)."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self.state = fastapi_app.state
        self.poll_route = _route("GET", _POLL_TEMPLATE)
        self.submit_route = _route("POST", _SUBMIT_PATH)
        self.answered = 0
        fastapi_app.state.fast_lane = self

    @property
    def desk(self) -> JobDesk:
        return self.state.job_desk

    def _tenant(self, scope: Scope) -> str | None:
        keys = self.state.api_keys
        if not keys:
            return PUBLIC_TENANT
        authorization = _header(scope, b"authorization")
        return None if authorization is None else tenant_for(keys, authorization.decode("latin-1"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            if scope["method"] == "GET":
                return await self._poll(scope, receive, send)
            if scope["method"] == "POST" and scope["path"] == _SUBMIT_PATH:
                return await self._submit(scope, receive, send)
        return await self.app(scope, receive, send)

    async def _poll(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _JOB_PATH.fullmatch(scope["path"])
        job_id = match.group(1) if match is not None else ""
        history = _HISTORY_BY_QUERY.get(scope["query_string"])
        tenant = self._tenant(scope) if ID_RE.match(job_id) and history is not None else None
        if tenant is None or history is None:
            return await self.app(scope, receive, send)
        scope["route"], scope["path_params"] = (
            self.poll_route,
            {"job_id": job_id},
        )  # set first: an error is labelled too
        response: Response
        try:
            view = await self.desk.view(job_id, tenant, history)
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # as the app's handlers answer them
            response = redis_unreachable_response(exc)
        else:
            response = FiniteJSONResponse(view) if view is not None else response_for(job_not_found(job_id))
        await self._answer(response, scope, receive, send)

    async def _submit(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = _header(scope, b"content-type") or b""
        tenant = None
        if (
            content_type.split(b";", 1)[0].strip().lower() == b"application/json"
            and _header(scope, b"idempotency-key") is None
        ):
            tenant = self._tenant(scope)
        if tenant is None:
            return await self.app(scope, receive, send)
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left, or the body limit cut it (413 follows)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        # As FastAPI parses a JSON body: json.loads of the bytes (NaN, Infinity and 1e999 become floats),
        # then the model in Python mode, whose allow_inf_nan=False refuses them as the route does.
        try:
            spec = JobSpec.model_validate(json.loads(body))
        except (ValueError, ValidationError, RecursionError):  # (JSONDecodeError, UnicodeDecodeError: ValueErrors)
            # FastAPI parses it again and answers what it always does (a 422 or 400 that says what is wrong).
            return await self.app(scope, _replay(body, receive), send)
        scope["route"] = self.submit_route
        response: Response
        try:
            response = await self.desk.submit(spec, tenant, None)
        except Problem as problem:
            response = response_for(problem)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            response = redis_unreachable_response(exc)
        await self._answer(response, scope, receive, send)

    async def _answer(self, response: Response, scope: Scope, receive: Receive, send: Send) -> None:
        self.answered += 1
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the body already read, then whatever the client sends next."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
