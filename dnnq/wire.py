"""What the SDK's sync and async clients share, without I/O: the connection's settings, the job spec
from keywords, the errors of an answer, the checks of a download, and predict's inputs, split and
answers joined."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from dnnq.errors import ConnectionFailed, DnnqError, IntegrityError, InvalidRequest, error_for

if TYPE_CHECKING:
    import numpy as np

    from dnnq.job import Prediction

__all__ = [
    "DEFAULT_URL",
    "SPEC_SECTIONS",
    "connection",
    "unreachable",
    "check_digest",
    "etag",
    "join_predictions",
    "npy_bytes",
    "npz_bytes",
    "raise_for",
    "redirect_target",
    "resource_id",
    "row_chunks",
    "rows_matrix",
    "rows_per_request",
    "spec_body",
    "sweep_body",
    "trial_job_view",
]

# what the API's ids look like (hex today); anything else would become another path ("", "../datasets/x")
_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def resource_id(kind: str, value: Any) -> str:
    """``value`` as a job's, dataset's or sweep's id in a URL path, or InvalidRequest saying what is wrong
    before any request: an empty id would ask for the collection, one with '/' for another route."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidRequest(
            f"{kind} id {value!r} is not an id: use the id the API returned (letters, digits, '-' or '_')"
        )
    return value


NPY_HEADER_BYTES = 4096  # room left in a predict body for the .npy header (numpy pads it to 64 bytes)

# submit(**fields): which section of the job spec each flat keyword belongs to (workers/spec.py declares
# them; copied so that the SDK does not import the server's modules: tests/sdk checks the copy).
SPEC_SECTIONS: dict[str, tuple[str, ...]] = {
    "model": ("hidden_layers", "hidden_activation", "output"),
    "training": (
        "optimizer",
        "learning_rate",
        "beta",
        "beta1",
        "beta2",
        "epsilon",
        "lr_decay",
        "decay_rate",
        "decay_every",
        "epochs",
        "batch_size",
        "init",
        "seed",
        "dtype",
        "l2",
        "dropout_keep_prob",
        "shuffle",
        "checkpoint_every",
    ),
    "preprocess": ("scale",),
}


def spec_body(spec: Mapping[str, Any] | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The POST /v1/jobs body: `spec`, then each keyword at its place (dataset= and validation_dataset=
    take a Dataset or an id; flat names go to their section; model={...} etc. merge)."""
    body: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in (spec or {}).items()}
    for key, value in fields.items():
        if key in ("dataset", "validation_dataset"):
            body[f"{key}_id"] = value if isinstance(value, str) else value.id
            continue
        section = next((s for s, names in SPEC_SECTIONS.items() if key in names), None)
        if section is not None:
            body.setdefault(section, {})[key] = value
        elif key in SPEC_SECTIONS and isinstance(value, Mapping):
            body.setdefault(key, {}).update(value)
        else:
            body[key] = value
    return body


def sweep_body(
    base: Mapping[str, Any] | None,
    grid: Mapping[str, Any] | None,
    trials: list[Mapping[str, Any]] | None,
    fields: Mapping[str, Any],
) -> dict[str, Any]:
    """The POST /v1/sweeps body: the base spec (as spec_body builds it) and a grid or a trials list."""
    if (grid is None) == (trials is None):
        raise ValueError("pass grid= (field -> list of values) or trials= (a list of overrides), not both")
    body: dict[str, Any] = {"base": spec_body(base, fields)}
    if grid is not None:
        body["grid"] = dict(grid)
    else:
        body["trials"] = [dict(t) for t in trials or []]
    return body


def trial_job_view(sweep_id: str, trial: Mapping[str, Any]) -> dict[str, Any]:
    """A sweep view's trial in the job view's names (the part of a job view it holds)."""
    view = {k: trial.get(k) for k in ("status", "progress", "metrics", "error")}
    view.update(
        id=trial["job_id"],
        sweep_id=sweep_id,
        sweep_trial=trial["index"],
        sweep_overrides=trial.get("overrides"),
        sweep_pack=trial.get("pack"),
    )
    return view


DEFAULT_URL = "http://127.0.0.1:8000"


def connection(url: str | None, api_key: str | None) -> tuple[str, dict[str, str]]:
    """(base URL, headers) from the arguments, else $DNNQ_URL and $DNNQ_API_KEY (api_key="": no key)."""
    base = (url or os.environ.get("DNNQ_URL") or DEFAULT_URL).rstrip("/")
    key = api_key if api_key is not None else os.environ.get("DNNQ_API_KEY")
    headers = {"Accept": "application/json", "User-Agent": "dnnq-python"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return base, headers


def unreachable(url: str, exc: Exception) -> ConnectionFailed:
    if isinstance(exc, httpx.TimeoutException):
        return ConnectionFailed(f"{url} did not answer in time ({type(exc).__name__}); is the server overloaded?")
    return ConnectionFailed(f"cannot reach {url}: is `dnnq up` running?")


def raise_for(response: httpx.Response) -> None:
    """The DnnqError of a 4xx/5xx answer (its body read already)."""
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    raise error_for(response.status_code, body, response.text, response.reason_phrase, dict(response.headers))


def json_of(response: httpx.Response) -> Any:
    if response.status_code == 204:
        return None
    try:
        return response.json()
    except ValueError:
        raise DnnqError(f"{response.request.url} answered {response.status_code} with non-JSON content") from None


_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def redirect_target(response: httpx.Response) -> str | None:
    """Where a weights answer sends the download (the API's DNNQ_ARTIFACTS_REDIRECT_SECONDS: a 307 to a
    presigned URL of its object store), or None when the answer is the file itself. The caller fetches
    it with none of the client's headers: the URL carries its own signature, and the API key must not
    reach another host (nor, on a compromised API, a host of its choosing)."""
    if response.status_code not in _REDIRECTS:
        return None
    location = response.headers.get("location", "")
    url = response.url.join(location) if location else None
    if url is None or url.scheme not in ("http", "https"):
        raise DnnqError(f"{response.request.url} answered {response.status_code} without an http(s) Location")
    return str(url)


def etag(response: httpx.Response) -> str:
    return response.headers.get("etag", "").removeprefix("W/").strip('"').lower()


def check_digest(digest: str, expected: str) -> None:
    if not expected:
        raise IntegrityError("the server sent no ETag for the weights: cannot verify the download")
    if digest != expected:
        raise IntegrityError(f"download corrupted: sha256 {digest} does not match the ETag {expected}; retry")


def load_weights(raw: bytes) -> dict[str, np.ndarray]:
    import numpy as np

    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def npz_bytes(X: Any, Y: Any) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, X=np.asarray(X), Y=np.asarray(Y))
    return buffer.getvalue()


def npy_bytes(X: np.ndarray) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(X), allow_pickle=False)
    return buffer.getvalue()


def rows_matrix(X: Any) -> np.ndarray:
    """Predict's inputs as a 2-D numeric array: one row for a 1-D X, more dimensions flattened per row."""
    import numpy as np

    X = np.asarray(X)
    if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_):
        raise TypeError(f"inputs must be numeric, got dtype {X.dtype}")
    return X.reshape(1, -1) if X.ndim == 1 else X.reshape(X.shape[0], -1) if X.ndim > 2 else X


def rows_per_request(limits: Mapping[str, int], X: np.ndarray, n_outputs: int) -> int:
    """The most rows of X one predict request may carry under the server's limits (GET /v1/limits)."""
    n_features = max(1, X.shape[1])
    rows = min(
        limits["max_predict_examples"],
        (limits["max_predict_body_bytes"] - NPY_HEADER_BYTES) // max(1, n_features * X.itemsize),
        limits["max_predict_input_values"] // n_features,
        limits["max_predict_values"] // max(1, n_outputs),
    )
    if rows < 1:
        raise DnnqError(f"one row of {X.shape[1]} features is over the server's predict limits {dict(limits)}")
    return rows


def row_chunks(X: np.ndarray, rows: int) -> Iterator[np.ndarray]:
    for start in range(0, max(len(X), 1), rows):
        yield X[start : start + rows]


def join_predictions(parts: list[dict[str, Any]]) -> Prediction:
    import numpy as np

    from dnnq.job import Prediction

    predictions = np.concatenate([np.asarray(p["predictions"]) for p in parts])
    probabilities = None
    if parts[0].get("probabilities") is not None:
        probabilities = np.concatenate([np.asarray(p["probabilities"], dtype=np.float64) for p in parts])
    labels = None if parts[0].get("labels") is None else [x for p in parts for x in p["labels"]]
    return Prediction(predictions, probabilities, labels)
