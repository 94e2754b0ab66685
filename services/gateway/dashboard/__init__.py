"""The operators' dashboard: static HTML, CSS and JavaScript under `/ui/`.

The files in `static/` are read once when the routes are added and served
from memory, so no request path ever reaches the file system. The pages hold
no data: their scripts call the gateway's JSON API with the visitor's API
token, so the access middleware leaves `/ui` open. Every response carries a
Content-Security-Policy that allows only this origin's files and no inline
script or style, and an ETag so that browsers revalidate instead of reloading.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).parent / "static"
PREFIX = "/ui"
INDEX = "index.html"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# The file names carry no version, so a browser must revalidate each time.
# The ETag turns an unchanged file into a 304 without a body.
CACHE_CONTROL = "no-cache"


@dataclass(frozen=True)
class StaticFile:
    """One dashboard file held in memory."""

    body: bytes
    content_type: str
    etag: str


def load_files(folder: Path = STATIC_DIR) -> dict[str, StaticFile]:
    """Read every servable file of `folder`, keyed by its name."""
    files: dict[str, StaticFile] = {}
    for path in sorted(folder.iterdir()):
        content_type = CONTENT_TYPES.get(path.suffix)
        if content_type is None or not path.is_file():
            continue
        body = path.read_bytes()
        digest = hashlib.sha256(body).hexdigest()[:32]
        files[path.name] = StaticFile(body, content_type, f'"{digest}"')
    return files


def _headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**SECURITY_HEADERS, **(extra or {})}


def _not_found(name: str) -> web.Response:
    return web.json_response(
        {"status": "error", "error": f"no dashboard file named {name[:80]!r}"},
        status=404,
        headers=_headers({"Cache-Control": "no-store"}),
    )


def _serve(
    request: web.Request, files: dict[str, StaticFile], name: str
) -> web.Response:
    found = files.get(name)
    if found is None:
        return _not_found(name)
    headers = _headers({"Cache-Control": CACHE_CONTROL, "ETag": found.etag})
    if found.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(
        body=found.body, headers={**headers, "Content-Type": found.content_type}
    )


def add_routes(app: web.Application) -> None:
    """Register `/ui`, `/ui/` and `/ui/{name}` on the gateway application."""
    files = load_files()

    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPPermanentRedirect(f"{PREFIX}/", headers=_headers())

    async def index(request: web.Request) -> web.Response:
        return _serve(request, files, INDEX)

    async def static_file(request: web.Request) -> web.Response:
        return _serve(request, files, request.match_info["name"])

    app.router.add_get(PREFIX, redirect)
    app.router.add_get(f"{PREFIX}/", index)
    app.router.add_get(PREFIX + "/{name}", static_file)
