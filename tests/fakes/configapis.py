"""Fake Prometheus rules and Alertmanager status APIs for tests.

    async with FakePrometheus(groups=[rule_group("node", [alerting_rule(...)])]) as p:
        ... PROMETHEUS_URL=p.url ...
    async with FakeAlertmanager(config_yaml) as am:
        ... ALERTMANAGER_URL=am.url ...

Each serves on 127.0.0.1 on a free port and records the requested paths in
`requests`. It replies with `status` (200 by default) and the body its
fields describe.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from aiohttp import web


def alerting_rule(
    name: str,
    *,
    expr: str = "up == 0",
    duration: float = 0,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One alerting rule as /api/v1/rules lists it; `duration` is `for` in seconds."""
    return {
        "state": "inactive",
        "name": name,
        "query": expr,
        "duration": duration,
        "labels": labels or {},
        "annotations": {},
        "alerts": [],
        "health": "ok",
        "type": "alerting",
    }


def rule_group(
    name: str, rules: list[dict[str, Any]], *, interval: float = 60, file: str = ""
) -> dict[str, Any]:
    return {
        "name": name,
        "file": file or f"/etc/prometheus/rules/{name}.yml",
        "rules": rules,
        "interval": interval,
    }


class _FakeServer:
    """An aiohttp server on 127.0.0.1 with one GET route."""

    path = "/"

    def __init__(self) -> None:
        self.port = 0
        self.status = 200
        self.requests: list[str] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def body(self) -> Any:
        raise NotImplementedError

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(request.path_qs)
        if self.status != 200:
            return web.Response(status=self.status, text="fake failure")
        return web.json_response(self.body())

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(self.path, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server: Any = site._server
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Any:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


class FakePrometheus(_FakeServer):
    """Serves GET /api/v1/rules with `groups`."""

    path = "/api/v1/rules"

    def __init__(self, groups: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.groups = groups or []

    def body(self) -> Any:
        return {"status": "success", "data": {"groups": self.groups}}


class FakeAlertmanager(_FakeServer):
    """Serves GET /api/v2/status with `config_yaml` as config.original."""

    path = "/api/v2/status"

    def __init__(self, config_yaml: str = "") -> None:
        super().__init__()
        self.config_yaml = config_yaml

    def body(self) -> Any:
        return {
            "cluster": {"name": "fake", "peers": [], "status": "ready"},
            "config": {"original": self.config_yaml},
            "uptime": "2024-05-01T00:00:00.000Z",
            "versionInfo": {"version": "0.27.0"},
        }
