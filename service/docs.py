"""/docs (Swagger UI) and /redoc, served offline: their scripts and styles come from the fastapi-offline
wheel's files, served under /docs/assets, so the pages work with no internet (FastAPI's own pages load
them from a CDN). Public, as the schema they render (/openapi.json) is."""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse

__all__ = ["ASSETS", "ASSETS_PATH", "PAGE_CSP", "asset_dir", "router"]

ASSETS_PATH = "/docs/assets"
# The only files served: name -> media type.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
_OAUTH2_REDIRECT = "/docs/oauth2-redirect"
# The bundles change only with the installed package: a browser may keep them a day.
_ASSET_HEADERS = {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}
# The pages may load nothing from another host, even online: ReDoc's bundle links Redocly's logo from
# its CDN (hidden below, and refused here); both pages start from an inline script or style, so this is
# looser than the dashboard's policy (service/routes/dashboard.py). Neither page embeds plugins, sets a
# <base> or belongs in another site's frame.
PAGE_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; font-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_HIDE_REDOCLY_LINK = "a[href^='https://redocly.com'] { display: none; }\n    </style>"

router = APIRouter(include_in_schema=False)


@lru_cache(maxsize=1)
def asset_dir() -> Path:
    """The fastapi-offline wheel's static folder (a dependency in pyproject.toml)."""
    return Path(str(files("fastapi_offline").joinpath("static")))


def _base(request: Request) -> str:
    return request.scope.get("root_path") or ""


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    base = _base(request)
    page = get_swagger_ui_html(
        openapi_url=f"{base}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        oauth2_redirect_url=f"{base}{_OAUTH2_REDIRECT}",
        swagger_js_url=f"{base}{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{base}{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{base}{ASSETS_PATH}/favicon.png",
        # validatorUrl null: Swagger UI would otherwise send the schema to validator.swagger.io for a badge.
        swagger_ui_parameters={"validatorUrl": None, "displayOperationId": True},
    )
    page.headers.update(_PAGE_HEADERS)
    return page


@router.get(_OAUTH2_REDIRECT)
def swagger_ui_redirect() -> HTMLResponse:
    page = get_swagger_ui_oauth2_redirect_html()
    page.headers.update(_PAGE_HEADERS)
    return page


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    base = _base(request)
    page = get_redoc_html(
        openapi_url=f"{base}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{base}{ASSETS_PATH}/redoc.standalone.js",
        redoc_favicon_url=f"{base}{ASSETS_PATH}/favicon.png",
        with_google_fonts=False,  # the page's fonts from the system: no request leaves the machine
    )
    html = bytes(page.body).decode().replace("</style>", _HIDE_REDOCLY_LINK, 1)
    return HTMLResponse(html, headers=_PAGE_HEADERS)


@router.get(ASSETS_PATH + "/{name}")
def asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:  # a fixed list: no path from the request reaches the file system
        raise HTTPException(status_code=404, detail=f"No docs asset {name[:80]!r}.")
    return FileResponse(asset_dir() / name, media_type=media_type, headers=_ASSET_HEADERS)
