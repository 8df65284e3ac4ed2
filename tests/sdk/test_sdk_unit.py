"""The SDK without a server: the error classes per status, the spec keywords' sections, lazy imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dnnq.errors import (
    Conflict,
    DnnqError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    Unauthorized,
    error_for,
)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, InvalidRequest),
        (401, Unauthorized),
        (403, Unauthorized),
        (404, NotFound),
        (409, Conflict),
        (413, PayloadTooLarge),
        (422, InvalidRequest),
        (429, RateLimited),
        (500, ServerError),
        (503, ServerError),
        (418, DnnqError),
    ],
)
def test_each_status_has_its_error_class(status, kind):
    problem = {"title": "t", "status": status, "detail": "what went wrong"}
    error = error_for(status, problem, "", "Reason", {"retry-after": "7"})
    assert type(error) is kind
    assert (error.status, error.detail, error.problem) == (status, "what went wrong", problem)
    assert str(error) == f"what went wrong ({status})"
    if kind is RateLimited:
        assert error.retry_after == 7.0


def test_field_errors_join_the_detail_and_non_json_bodies_are_kept_short():
    problem = {"detail": "invalid job spec", "errors": [{"field": "training.epochs", "message": "must be >= 1"}]}
    error = error_for(422, problem, "", "Unprocessable")
    assert error.detail == "invalid job spec: training.epochs: must be >= 1"
    error = error_for(502, None, "<html>" + "x" * 500, "Bad Gateway")
    assert isinstance(error, ServerError) and error.detail == ("<html>" + "x" * 500)[:200] and error.problem == {}


def test_the_spec_sections_are_the_specs_own_fields():
    """dnnq/client.py copies which section each submit keyword goes to (importing workers.spec would
    import the job store); the copy must be the declaration."""
    from dnnq.wire import SPEC_SECTIONS
    from dnnq.workers.spec import ModelSpec, PreprocessSpec, TrainingSpec

    assert {
        "model": tuple(ModelSpec.model_fields),
        "training": tuple(TrainingSpec.model_fields),
        "preprocess": tuple(PreprocessSpec.model_fields),
    } == SPEC_SECTIONS


def test_importing_dnnq_does_not_import_the_client():
    code = (
        "import sys, dnnq, dnnq.workers.status; assert 'dnnq.client' not in sys.modules and 'httpx' not in sys.modules;"
        "from dnnq import Client, NotFound; assert 'dnnq.client' in sys.modules and 'numpy' not in sys.modules;"
        "print(Client.__module__, NotFound.__module__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["dnnq.client", "dnnq.errors"]
