"""The whole mesh in one event loop: every service on port 0, for fast tests.

`InProcessMesh` starts history, classifier, publisher and recommender with
the shared server skeleton and the gateway with its HTTP server, each on a
free 127.0.0.1 port, with a fake model server and a local receiver as the
publishing targets' endpoint. Tests talk to the gateway over real HTTP and
the gateway to the services over real gRPC.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from libs.config import Settings, load_settings
from libs.grpcserver import RunningService, start_service
from services.classifier.service import create_service as create_classifier
from services.gateway.server import RunningGateway, start_gateway
from services.history.service import create_service as create_history
from services.publisher.service import create_service as create_publisher
from services.recommender.service import create_service as create_recommender
from tests.fakes.llm import FakeLLM
from tests.fakes.receiver import Receiver

DEFAULT_TARGETS = [
    {"name": "local-webhook", "format": "webhook", "path": "/hook"},
    {"name": "local-alertmanager", "format": "alertmanager", "path": "/am"},
]


class InProcessMesh:
    """Services, fakes and an HTTP client, started and stopped together."""

    def __init__(
        self,
        folder: Path,
        env: dict[str, str] | None = None,
        *,
        targets: list[dict[str, Any]] | None = None,
        with_model: bool = True,
    ) -> None:
        self.folder = folder
        self.extra_env = env or {}
        self.targets = DEFAULT_TARGETS if targets is None else targets
        self.with_model = with_model
        self.llm = FakeLLM()
        self.receiver = Receiver()
        self.services: dict[str, RunningService] = {}
        self.registries: dict[str, CollectorRegistry] = {}
        self.gateway: RunningGateway | None = None
        self.http: aiohttp.ClientSession | None = None
        self.settings: Settings | None = None

    async def __aenter__(self) -> InProcessMesh:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def start(self) -> None:
        await self.llm.start()
        await self.receiver.start()
        env = self._environment()
        factories: dict[str, Callable[[Settings, CollectorRegistry], Any]] = {
            "history": create_history,
            "classifier": create_classifier,
            "publisher": create_publisher,
            "recommender": create_recommender,
        }
        addresses: dict[str, str] = {}
        for name, factory in factories.items():
            # Each service gets the addresses of those started before it, so
            # the classifier reads alert history from this mesh's history.
            base = load_settings({**env, **addresses})
            registry = CollectorRegistry()
            running = await start_service(
                factory(base, registry), base, registry, port=0, host="127.0.0.1"
            )
            self.services[name] = running
            self.registries[name] = registry
            addresses[f"{name.upper()}_ADDR"] = f"127.0.0.1:{running.port}"
        self.settings = load_settings({**env, **addresses})
        self.registries["gateway"] = CollectorRegistry()
        self.gateway = await start_gateway(
            self.settings, self.registries["gateway"], port=0, host="127.0.0.1"
        )
        self.http = aiohttp.ClientSession()

    def _environment(self) -> dict[str, str]:
        targets_file = self.folder / "targets.yaml"
        targets = [
            {
                "name": t["name"],
                "format": t["format"],
                "url": self.receiver.url(t["path"]),
                **{k: v for k, v in t.items() if k not in ("name", "format", "path")},
            }
            for t in self.targets
        ]
        targets_file.write_text(json.dumps(targets))
        env = {
            "DATA_DIR": str(self.folder / "data"),
            "PUBLISHING_TARGETS_FILE": str(targets_file),
            "PIPELINE_POLL_SECONDS": "0.2",
            "DELIVERY_INITIAL_BACKOFF_SECONDS": "0.2",
            "SHUTDOWN_DELAY_SECONDS": "0",
            "SHUTDOWN_GRACE_SECONDS": "2",
        }
        if self.with_model:
            env["LLM_PROXY_URL"] = self.llm.url
            env["LLM_API_KEY"] = "test-key"
        return {**env, **self.extra_env}

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return f"http://127.0.0.1:{self.gateway.port}"

    async def post(self, path: str, body: Any, **kwargs: Any) -> tuple[int, Any]:
        """POST a JSON body (or raw bytes) and return status and decoded body."""
        assert self.http is not None
        if isinstance(body, bytes):
            kwargs.setdefault("headers", {})["Content-Type"] = "application/json"
            kwargs["data"] = body
        else:
            kwargs["json"] = body
        async with self.http.post(self.url + path, **kwargs) as reply:
            return reply.status, await _decode(reply)

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        assert self.http is not None
        async with self.http.get(self.url + path, **kwargs) as reply:
            return reply.status, await _decode(reply)

    async def wait_until(
        self, condition: Callable[[], Any], wait_seconds: float = 10.0
    ) -> Any:
        """Poll a (possibly async) condition until it is true; raise on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            value = condition()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            if loop.time() > deadline:
                raise TimeoutError(f"condition not met within {wait_seconds} s")
            await asyncio.sleep(0.05)

    async def history(self, **query: str) -> list[dict[str, Any]]:
        status, body = await self.get("/history", params=query)
        assert status == 200, body
        return list(body["occurrences"])

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()
        if self.gateway is not None:
            await self.gateway.stop(0, 2)
        for running in reversed(list(self.services.values())):
            await running.stop(0, 2)
        await self.receiver.stop()
        await self.llm.stop()


async def _decode(reply: aiohttp.ClientResponse) -> Any:
    text = await reply.text()
    try:
        return json.loads(text)
    except ValueError:
        return text
