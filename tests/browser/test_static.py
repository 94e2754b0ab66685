"""The dashboard's static files over HTTP: headers, caching and what they hold.

These tests need no browser; they run the gateway application alone, since
serving the files calls no other service.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from libs.clients import ServiceClients
from libs.config import load_settings
from services.gateway.app import create_app
from services.gateway.dashboard import STATIC_DIR, load_files
from services.gateway.mode import ModeStore

TOKENS = "operator:operator-token-4f9a2c"


async def gateway_client(
    tmp_path: Path, env: dict[str, str]
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    settings = load_settings({"DATA_DIR": str(tmp_path), **env})
    clients = ServiceClients(settings)
    app = create_app(
        settings, clients, CollectorRegistry(), ModeStore(settings.enrichment_mode)
    )
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        await clients.close()


@pytest.fixture
async def client(
    tmp_path: Path,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async for running in gateway_client(tmp_path, {}):
        yield running


@pytest.fixture
async def protected(
    tmp_path: Path,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    env = {"API_TOKENS": TOKENS, "API_READ_PROTECTED": "true"}
    async for running in gateway_client(tmp_path, env):
        yield running


async def test_index_security_headers(client):
    reply = await client.get("/ui/")
    policy = reply.headers["Content-Security-Policy"]

    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in policy
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert reply.headers["Referrer-Policy"] == "no-referrer"
    assert reply.headers["X-Frame-Options"] == "DENY"
    assert reply.headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("main.js", "text/javascript; charset=utf-8"),
        ("dashboard.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ],
)
async def test_static_content_types(client, name, content_type):
    reply = await client.get(f"/ui/{name}")

    assert reply.status == 200
    assert reply.headers["Content-Type"] == content_type
    assert reply.headers["X-Content-Type-Options"] == "nosniff"


async def test_ui_redirects_to_slash(client):
    reply = await client.get("/ui", allow_redirects=False)

    assert reply.status == 308
    assert reply.headers["Location"] == "/ui/"


async def test_unknown_file_not_found(client):
    reply = await client.get("/ui/missing.js")

    assert reply.status == 404
    assert reply.headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize(
    "path", ["/ui/..%2Fapp.py", "/ui/%2e%2e/app.py", "/ui/__init__.py"]
)
async def test_traversal_not_found(client, path):
    reply = await client.get(path)

    assert reply.status == 404


async def test_etag_revalidates(client):
    first = await client.get("/ui/main.js")
    again = await client.get(
        "/ui/main.js", headers={"If-None-Match": first.headers["ETag"]}
    )

    assert again.status == 304
    assert await again.read() == b""


async def test_ui_open_when_reads_protected(protected):
    page = await protected.get("/ui/")
    script = await protected.get("/ui/api.js")
    data = await protected.get("/enrichment/mode")

    assert page.status == 200
    assert script.status == 200
    assert data.status == 401


class TagCollector(HTMLParser):
    """Every start tag of a document with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def index_tags() -> list[tuple[str, dict[str, str | None]]]:
    collector = TagCollector()
    collector.feed((STATIC_DIR / "index.html").read_text())
    return collector.tags


def test_index_scripts_external_only():
    scripts = [attrs for tag, attrs in index_tags() if tag == "script"]

    assert scripts == [{"type": "module", "src": "main.js"}]


def test_index_no_inline_style_or_handlers():
    attributes = {name for _, attrs in index_tags() for name in attrs}

    assert "style" not in attributes
    assert not [name for name in attributes if name.startswith("on")]


def test_index_inputs_labelled():
    tags = index_tags()
    labelled = {attrs.get("for") for tag, attrs in tags if tag == "label"}
    inputs = [
        attrs["id"]
        for tag, attrs in tags
        if tag in ("input", "select") and attrs.get("id")
    ]

    assert inputs
    assert [name for name in inputs if name not in labelled] == []


def test_index_references_served_files():
    served = set(load_files())
    referenced = {
        attrs.get("src") or attrs.get("href")
        for tag, attrs in index_tags()
        if tag in ("script", "link")
    }

    assert referenced <= served


@pytest.mark.parametrize("name", sorted(p.name for p in STATIC_DIR.glob("*.js")))
def test_scripts_never_assign_html(name):
    source = (STATIC_DIR / name).read_text()

    assert not re.search(r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML", source)
    assert "localStorage" not in source
    assert "eval(" not in source


@pytest.mark.parametrize("name", sorted(p.name for p in STATIC_DIR.glob("*.js")))
def test_scripts_import_local_modules(name):
    source = (STATIC_DIR / name).read_text()
    imports = re.findall(r"from\s+\"([^\"]+)\"", source)

    assert all(path.startswith("./") for path in imports), imports
    assert all((STATIC_DIR / path[2:]).is_file() for path in imports), imports


@pytest.mark.parametrize(
    "name",
    sorted(
        p.name for p in STATIC_DIR.iterdir() if p.suffix in (".html", ".css", ".js")
    ),
)
def test_static_files_no_remote_urls(name):
    source = (STATIC_DIR / name).read_text()

    assert "://" not in source
    assert "@import" not in source
