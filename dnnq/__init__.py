"""dnnq: an HTTP training service for L-layer neural networks.

One import name for the whole project: dnnq.models (the numerical engine), dnnq.workers (training
jobs fed through Redis), dnnq.service (the HTTP front end; folders models/, workers/ and service/
in the repository) and the console script here (dnnq.cli: `dnnq up | api | worker` and the client
commands). Importing this package imports none of them.
"""

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from dnnq.cli import main as _main

    return _main(argv)
