"""The HTTP/1.1 protocol the API processes serve with: uvicorn's httptools protocol, with limits on the
request head that it lacks.

uvicorn's h11 protocol refuses a request head over 16 KiB (h11_max_incomplete_event_size); its faster
httptools protocol, which uvicorn picks whenever httptools is installed (uvicorn[standard]), keeps
every byte of the request line and headers as they come, with no limit and no deadline. One
connection sending an endless header made an API process grow by the bytes sent (docs/perf.md, "Hostile
requests: the third pass") until the kernel killed it, before any auth or middleware ran; a client that sent half a
head and waited held its connection for ever. BoundedHttpToolsProtocol answers a head over
DNNQ_MAX_HEAD_BYTES (64 KiB; nginx's default buffers hold 32 KiB) with a 431 and closes, and closes a
connection whose head is not complete within DNNQ_HEAD_TIMEOUT_SECONDS (30; nginx's
client_header_timeout is 60) of its first byte (or of the connection, for a first request).

`dnnq up` and `dnnq api` serve with it (HTTP_PROTOCOL; `uvicorn --http
dnnq.service.http_protocol:BoundedHttpToolsProtocol` elsewhere).
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from dnnq.service.settings import get_api_settings

__all__ = ["HTTP_PROTOCOL", "BoundedHttpToolsProtocol"]


def _answer_431(limit: int) -> bytes:
    body = json.dumps(
        {
            "type": "https://dnnq.dev/problems/request-header-fields-too-large",
            "title": "Request Header Fields Too Large",
            "status": 431,
            "detail": f"The request line and headers are larger than {limit} bytes (DNNQ_MAX_HEAD_BYTES); send "
            "fewer or shorter headers.",
        }
    ).encode()
    return (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
        b"content-type: application/problem+json\r\n"
        b"x-content-type-options: nosniff\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n\r\n" + body
    )


class _HeadTooLarge(Exception):
    pass


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a size limit and a deadline on each request head."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        settings = get_api_settings()  # the process's, read once
        self._max_head_bytes, self._head_timeout = settings.max_head_bytes, settings.head_timeout_seconds
        self._head_bytes = 0
        self._head_refused = False
        self._in_head = True  # until the first request's headers are complete
        self._head_deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Still in a head after the parser took this chunk: every byte of it was head (the chunk may
        # also end the previous request: counted too). A head that completes within one read is
        # measured exactly in on_headers_complete.
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head_bytes:
                self._refuse_head()

    def _refuse_head(self) -> None:
        self._disarm_head_deadline()
        self.transport.write(_answer_431(self._max_head_bytes))
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0
        if self._head_deadline is None:
            self._arm_head_deadline()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm_head_deadline()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self._max_head_bytes:
            # before any request cycle starts: httptools turns the exception into a parser error, which
            # uvicorn answers with send_400_response (below: our 431 instead)
            self._head_refused = True
            raise _HeadTooLarge
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._head_refused:
            return self._refuse_head()
        super().send_400_response(msg)

    def _arm_head_deadline(self) -> None:
        self._head_deadline = self.loop.call_later(self._head_timeout, self._head_timed_out)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        # A connection idle after a complete request is uvicorn's keep-alive timeout's, not this one's.
        if self._in_head and not self.transport.is_closing():
            self.transport.close()


# uvicorn's `http` setting: an import string works for uvicorn.Config and `uvicorn --http` alike
HTTP_PROTOCOL = "dnnq.service.http_protocol:BoundedHttpToolsProtocol"
