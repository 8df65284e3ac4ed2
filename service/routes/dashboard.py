"""The dashboard: one HTML page, one script, one stylesheet, served from service/static.

The page is public (it holds no data; every call it makes goes to /v1 with the
user's API key), so it has no tenant dependency. Everything is vendored: no CDN.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

__all__ = ["CSP", "router", "STATIC_DIR"]

STATIC_DIR = (Path(__file__).resolve().parent.parent / "static").resolve()

# Defence in depth behind the pages' own rule (data reaches the DOM only as text, never as HTML): the
# pages hold the user's API key in sessionStorage, so a string that did run as script could read it. The
# pages need nothing inline (scripts, styles and handlers all live in static/), and nothing from another
# host; Trusted Types makes any HTML-string sink (innerHTML and kin) throw instead of parsing data.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
    "require-trusted-types-for 'script'; trusted-types 'none'"
)
# The files change with each release and are tiny: revalidate rather than cache stale code.
_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_HEADERS)


@router.get("/static/{path:path}")
def static_file(path: str) -> FileResponse:
    try:
        target = (STATIC_DIR / path).resolve()
        # resolve() folds "..": anything that lands outside static/ is simply not there.
        found = target.is_relative_to(STATIC_DIR) and target.is_file()
    except (OSError, ValueError):  # a NUL byte, a name too long for the file system: not there either
        found = False
    if not found:
        shown = path if len(path) <= 80 else path[:80] + "..."
        raise HTTPException(status_code=404, detail=f"No static file {shown!r}.", headers=_HEADERS)
    return FileResponse(target, headers=_HEADERS)
