"""One API process on a listening socket that `dnnq up` bound and handed over: `python -m dnnq.api_process --fd N`.

Why not `uvicorn --workers N`: its processes share ONE listening socket, and asyncio accepts every
pending connection in one go, so a burst of clients (20 keep-alive connections from bench.load)
often lands on a single process while the other idles (docs/perf.md, "Launcher"). `dnnq up
--api-workers N` instead binds N sockets
with SO_REUSEPORT, one per process, and the kernel spreads new connections across them.

Why not `uvicorn --fd N`: it wraps the descriptor as an AF_UNIX socket whatever it is, and asyncio
then skips TCP_NODELAY on the accepted TCP connections. ``socket.socket(fileno=N)`` reads the real
family from the descriptor.
"""

from __future__ import annotations

import argparse
import socket

import uvicorn


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dnnq.api_process")
    parser.add_argument("--fd", type=int, required=True, help="a listening TCP socket's descriptor")
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_args(argv)
    listening = socket.socket(fileno=args.fd)  # family and type come from the descriptor
    from dnnq.service.http_protocol import HTTP_PROTOCOL  # limits on each request head

    config = uvicorn.Config("dnnq.service.app:create_app", factory=True, access_log=args.access_log, http=HTTP_PROTOCOL)
    uvicorn.Server(config).run(sockets=[listening])


if __name__ == "__main__":
    main()
