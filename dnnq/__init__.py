"""dnnq's console script: `dnnq up | api | worker` and the HTTP client commands (dnnq/cli.py)."""

__all__ = ["main"]


def main(argv=None) -> int:
    from dnnq.cli import main as _main

    return _main(argv)
