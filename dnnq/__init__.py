"""dnnq: an HTTP training service for L-layer neural networks.

One import name for the whole project: dnnq.models (the numerical engine), dnnq.workers (training
jobs fed through Redis), dnnq.service (the HTTP front end; folders models/, workers/ and service/
in the repository), the console script (dnnq.cli: `dnnq up | api | worker` and the client
commands) and the Python SDK (`from dnnq import Client`: dnnq/client.py; AsyncClient: dnnq/aio.py).
Importing this package imports none of them: the SDK's names load on first use (module
__getattr__), so the server processes do not pay for the client's imports.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

# A checkout used without installing it (PYTHONPATH=<checkout>, as scripts/gpu-check runs on a GPU machine
# with no package index): dnnq.models, dnnq.workers and dnnq.service are the folders beside this one, as
# pyproject.toml's package-dir maps them. An installed dnnq has them inside and is left as it is.
_CHECKOUT = Path(__file__).resolve().parent.parent
if not (Path(__file__).parent / "models").is_dir() and (_CHECKOUT / "models" / "__init__.py").is_file():
    __path__.append(str(_CHECKOUT))

if TYPE_CHECKING:
    from dnnq.aio import AsyncClient, AsyncJob, AsyncSweep
    from dnnq.client import Client
    from dnnq.errors import (
        Conflict,
        ConnectionFailed,
        DnnqError,
        InvalidRequest,
        NotFound,
        RateLimited,
        ServerError,
        Unauthorized,
        WaitTimeout,
    )
    from dnnq.job import Dataset, Job, Prediction
    from dnnq.sweep import Sweep

__all__ = [
    "AsyncClient",
    "AsyncJob",
    "AsyncSweep",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Dataset",
    "DnnqError",
    "InvalidRequest",
    "Job",
    "NotFound",
    "Prediction",
    "RateLimited",
    "ServerError",
    "Sweep",
    "Unauthorized",
    "WaitTimeout",
    "main",
]

_LAZY = {
    "AsyncClient": "dnnq.aio",
    "AsyncJob": "dnnq.aio",
    "AsyncSweep": "dnnq.aio",
    "Client": "dnnq.client",
    "Dataset": "dnnq.job",
    "Job": "dnnq.job",
    "Prediction": "dnnq.job",
    "Sweep": "dnnq.sweep",
}


def __getattr__(name: str) -> Any:
    if name in __all__ and name != "main":
        import importlib

        module = importlib.import_module(_LAZY.get(name, "dnnq.errors"))
        return getattr(module, name)
    raise AttributeError(f"module 'dnnq' has no attribute {name!r}")


def main(argv: list[str] | None = None) -> int:
    from dnnq.cli import main as _main

    return _main(argv)
