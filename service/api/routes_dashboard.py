"""The dashboard: one static page (plain JS, no build step) at `/` and at `/jobs/{id}/report.html`.

The page holds no data: it fetches everything from the JSON API with the user's key, so serving it needs
no authentication and leaks nothing. A strict Content-Security-Policy allows only this server's own
script, styles and API (no inline script, nothing from the internet).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.errors import NotFound

__all__ = ["STATIC_DIR", "router"]

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# The only files served: a fixed list, so no path from a URL ever reaches the filesystem.
_ASSETS = {"app.js": "text/javascript; charset=utf-8", "sweeps.js": "text/javascript; charset=utf-8",
           "style.css": "text/css; charset=utf-8"}
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
# no-cache: browsers revalidate (cheap, ETag) so a new release's script is picked up at once.
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

router = APIRouter(include_in_schema=False)


def _page() -> FileResponse:
    """The dashboard's HTML shell."""
    headers = {**_HEADERS, "Content-Security-Policy": _CSP, "Referrer-Policy": "no-referrer"}
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=headers)


@router.get("/")
def dashboard() -> FileResponse:
    """Serves the dashboard: job list, submit form, and (under #/jobs/ID) a live job page."""
    return _page()


@router.get("/jobs/{job_id}/report.html")
def report_page(job_id: str) -> FileResponse:
    """Serves the dashboard showing one job's report (the script reads the id from the path)."""
    return _page()


@router.get("/static/{name}")
def asset(name: str) -> FileResponse:
    """Serves the dashboard's script or stylesheet."""
    if name not in _ASSETS:
        raise NotFound(f"no static file {name!r}")
    return FileResponse(STATIC_DIR / name, media_type=_ASSETS[name], headers=_HEADERS)
