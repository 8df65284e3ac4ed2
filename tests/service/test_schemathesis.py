"""Property-based API tests over the app's own OpenAPI schema (schemathesis 4.x), in-process over
ASGI against the real test Redis (tests/conftest.py). For every operation, generated requests
(valid and invalid) must never get a 5xx, and every response must match what the schema declares:
status code, content type, body schema and headers."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from dnnq.workers import datasets, jobs
from dnnq.workers.recovery import register_worker
from dnnq.workers.settings import WorkerSettings


def _exception_groups() -> tuple[type[BaseException], ...]:
    """BaseExceptionGroup, which catches what `except Exception` misses: a builtin from Python 3.11,
    on 3.10 the `exceptiongroup` backport that hypothesis depends on there."""
    group = getattr(builtins, "BaseExceptionGroup", None)
    if group is None:
        try:
            from exceptiongroup import BaseExceptionGroup as group
        except ImportError:
            return ()
    return (group,)


EXCEPTION_GROUPS = _exception_groups()

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture
def api_schema(app, redis_client, store):
    # Something to find: a dataset and a finished job, so lookups can also answer 200 and 409.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 2)).astype(np.float32)
    ds = datasets.save_dataset(
        redis_client,
        store,
        tenant="public",
        name="st",
        source="test",
        X=X,
        Y=(X[:, 0] > 0).astype(np.float32),
        label_kind="binary",
    )
    jobs.create_job(redis_client, tenant="public", spec={"dataset_id": ds["id"]}, queue="default", dataset_id=ds["id"])
    # A worker heartbeat, so /readyz answers 200 (without one its documented 503 is the right answer).
    register_worker(
        redis_client,
        WorkerSettings(worker_name="schemathesis", lease_seconds=3600, heartbeat_seconds=600),
        "2026-01-01T00:00:00Z",
    )
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _run_operation(operation, mode: GenerationMode, examples: int) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
        database=None,
    )
    def run(case):
        case.call_and_validate(checks=CHECKS)

    run()


def test_api_conforms_to_its_schema(api_schema):
    """Every operation, valid (positive) then invalid (negative) inputs; all failures reported together."""
    failures, tested = [], []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        tested.append(operation.label)
        for mode, examples in ((GenerationMode.POSITIVE, 25), (GenerationMode.NEGATIVE, 15)):
            try:
                _run_operation(operation, mode, examples)
            except Unsatisfiable:  # nothing in this operation can be made invalid (e.g. no parameters)
                if mode is GenerationMode.POSITIVE:
                    failures.append(f"--- {operation.label}: no valid request could be generated ---")
            except (Exception, *EXCEPTION_GROUPS) as exc:  # a group of check failures; keep going
                failures.append(f"--- {operation.label} ({mode.value}) ---\n{exc}")
    assert len(tested) >= 10, tested  # the schema really lists the API
    assert not failures, "\n".join(failures)
