"""Defences at the API's edge that no route should have to remember (ASGI middleware).

- NoSniffMiddleware: every answer says `X-Content-Type-Options: nosniff`, so a browser never runs a
  JSON body (which may echo a caller's text) as a script or a page because it "looks like" one.
- KeylessGuardMiddleware: with API keys off, whoever reaches the port may use the API. On loopback
  that should mean "programs of this machine's user", but a web page in that user's browser reaches
  loopback too:
  - DNS rebinding: a page on attacker.example re-resolves its own name to 127.0.0.1; the browser then
    treats the API as the page's own origin and lets it read every answer. Its requests carry
    `Host: attacker.example:8000`. So the API answers only Host names that cannot be rebound: an IP
    address, `localhost` (and `*.localhost`, which browsers resolve to loopback themselves), or a name
    the operator lists in DNNQ_ALLOWED_HOSTS (`*`: any).
  - Cross-site requests: any page may POST a form (multipart: a dataset upload) or an empty POST (a
    cancel) to the API without a CORS preflight, and the API would act on it. So a POST, PUT, PATCH
    or DELETE whose `Origin` is not the API's own (its Host) nor one in DNNQ_CORS_ORIGINS is a 403.
  With API keys on neither attack works (a page has no key: a rebound page is another origin than
  the dashboard's, whose storage holds it), and neither check runs.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dnnq.service.errors import problem_response
from dnnq.service.settings import ApiSettings

__all__ = ["KeylessGuardMiddleware", "NoSniffMiddleware", "host_name"]

_NOSNIFF = (b"x-content-type-options", b"nosniff")
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class NoSniffMiddleware:
    """Adds `X-Content-Type-Options: nosniff` to every HTTP answer that does not already say it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                if not any(name.lower() == _NOSNIFF[0] for name, _ in headers):
                    message = {**message, "headers": [*headers, _NOSNIFF]}
            await send(message)

        await self.app(scope, receive, send_nosniff)


def host_name(host: str) -> str:
    """The name or address part of a Host header value: 'a.example:80' -> 'a.example', '[::1]:80' -> '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host  # no port, or an IPv6 address without brackets


def _unrebindable(name: str) -> bool:
    """An IP address or localhost: a name no web page can point at the API by changing its DNS."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _shown(header_value: str) -> str:
    """A client's header value as an error detail quotes it: at most 100 characters."""
    return header_value if len(header_value) <= 100 else header_value[:100] + "..."


class KeylessGuardMiddleware:
    """With API keys off: 400 for a Host that may be a rebound DNS name, 403 for a cross-site write."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI, settings: ApiSettings) -> None:
        self.app = app
        self.state = fastapi_app.state
        names = {h.strip().lower() for h in settings.allowed_hosts.split(",") if h.strip()}
        self.any_host = "*" in names
        self.allowed_hosts = frozenset(names - {"*"})
        self.allowed_origins = frozenset(o.rstrip("/").lower() for o in settings.cors_origin_list)

    def _host_allowed(self, host: str) -> bool:
        name = host_name(host)
        return self.any_host or _unrebindable(name) or name in self.allowed_hosts

    def _origin_allowed(self, origin: str, host: str) -> bool:
        origin = origin.strip().lower().rstrip("/")
        if origin in self.allowed_origins:
            return True
        parts = urlsplit(origin)
        # "null" (a sandboxed frame, a file:// page) or anything without a host is not the API's own
        return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc == host.strip().lower()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.state.api_keys:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        if host and not self._host_allowed(host):
            shown = _shown(host)
            response = problem_response(
                400,
                f"This API has no API keys and answers only requests addressed to an IP address or localhost, "
                f"not to {shown!r} (a web page could point such a name at it: DNS rebinding). Use the "
                "address, set API keys (DNNQ_API_KEYS), or list the name in DNNQ_ALLOWED_HOSTS.",
            )
            return await response(scope, receive, send)
        origin = headers.get(b"origin")
        if scope["method"] in _UNSAFE_METHODS and origin is not None:
            origin_text = origin.decode("latin-1")
            if not self._origin_allowed(origin_text, host):
                shown = _shown(origin_text)
                response = problem_response(
                    403,
                    f"Cross-site request refused: this API has no API keys, so it takes {scope['method']} "
                    f"requests from web pages only from its own origin, not from {shown!r}. Set API keys "
                    "(DNNQ_API_KEYS), or list the page's origin in DNNQ_CORS_ORIGINS.",
                )
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)
