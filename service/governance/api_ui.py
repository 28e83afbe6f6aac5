"""GET /ui: the dashboard page and its assets, shipped in the package (service/ui/), no CDN.

The page and its script hold no data; the script asks /admin/dashboard for it with the
master key, which the user types in (or passes in the URL fragment, never sent to the
server) and which is kept only in the tab's sessionStorage.
"""
from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from service.errors import ApiError

router = APIRouter()

_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
_HEADERS = {
    "cache-control": "no-store",
    # Everything comes from this origin; nothing inline may run, nothing may frame the page.
    "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def _asset(name: str) -> Response:
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    folder = resources.files("service") / "ui"
    if suffix not in _TYPES or "/" in name or name.startswith("."):
        raise ApiError(404, f"no dashboard asset {name!r}", code="not_found")
    entry = folder / name
    if not entry.is_file():
        raise ApiError(404, f"no dashboard asset {name!r}", code="not_found")
    return Response(entry.read_bytes(), media_type=_TYPES[suffix], headers=_HEADERS)


@router.get("/ui", include_in_schema=False)
async def ui_root() -> Response:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui/", include_in_schema=False)
async def ui_index() -> Response:
    return _asset("index.html")


@router.get("/ui/{name}", include_in_schema=False)
async def ui_asset(name: str) -> Response:
    return _asset(name)
