"""A scripted OpenAI-compatible chat completions server for tests.

In-process::

    async with FakeLLM() as llm:
        llm.enqueue(completion(content={"severity": "noise", ...}))
        llm.enqueue(status=500, body="upstream failed")
        llm.enqueue(delay=5)  # then the default verdict
        ... point the client at llm.url, then read llm.requests

As a process (prints its port on stdout once listening)::

    python -m tests.fakes.llm --host 127.0.0.1 --port 0 [--delay S]
        [--response-file F]

A test scripts the process with `POST /_control/responses` (one object or a
list, each with the fields of `ScriptedResponse`), reads what it received with
`GET /_control/requests`, and clears both with `POST /_control/reset`.
Each request takes the first queued response whose `match` is empty or occurs
in the request body; with none queued it gets the default verdict, or the
status `default_status` when a test set one to play a failing model.

Besides `/v1/chat/completions` the server answers Azure OpenAI's
`/openai/deployments/{deployment}/chat/completions`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

DEFAULT_VERDICT = {
    "severity": "warning",
    "confidence": 0.8,
    "reasoning": "Fake model verdict.",
    "recommendations": ["Check the service."],
}


def completion(
    content: str | dict[str, Any] | None = None,
    *,
    finish_reason: str = "stop",
    refusal: str | None = None,
    model: str = "fake-model",
    total_tokens: int = 100,
) -> dict[str, Any]:
    """Build a chat.completion body; a dict `content` is JSON-encoded."""
    if content is None and refusal is None:
        content = DEFAULT_VERDICT
    text = json.dumps(content) if isinstance(content, dict) else content
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if refusal is not None:
        message["refusal"] = refusal
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1714557600,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": total_tokens - 10,
            "completion_tokens": 10,
            "total_tokens": total_tokens,
        },
    }


@dataclass
class ScriptedResponse:
    """One scripted reply: a completion body, or an HTTP status with a body.

    `delay` is seconds to wait before replying. Without `completion` or
    `body`, a 200 reply carries the server's default completion. `headers`
    are added to the reply, such as Retry-After.
    """

    completion: dict[str, Any] | None = None
    status: int = 200
    body: str | dict[str, Any] | None = None
    delay: float = 0.0
    match: str | None = None
    headers: dict[str, str] | None = None

    @classmethod
    def from_json(cls, data: Any) -> ScriptedResponse:
        if not isinstance(data, dict):
            raise ValueError("each scripted response must be a JSON object")
        fields = {"completion", "status", "body", "delay", "match", "headers"}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"unknown fields in scripted response: {sorted(unknown)}")
        return cls(
            completion=data.get("completion"),
            status=int(data.get("status", 200)),
            body=data.get("body"),
            delay=float(data.get("delay", 0.0)),
            match=data.get("match"),
            headers=data.get("headers"),
        )


@dataclass
class RecordedRequest:
    """A request the fake received; `body` is decoded JSON when it parses."""

    path: str
    headers: dict[str, str]
    body: Any
    text: str = field(repr=False, default="")
    query: dict[str, str] = field(default_factory=dict)

    @property
    def messages(self) -> list[dict[str, Any]]:
        if isinstance(self.body, dict):
            return list(self.body.get("messages", []))
        return []


class FakeLLM:
    """An aiohttp server on 127.0.0.1 that replies to chat completions from a script."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        delay: float = 0.0,
        default: dict[str, Any] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.default_delay = delay
        self.default = default if default is not None else completion()
        # When set, unscripted requests get this status instead of `default`.
        self.default_status: int | None = None
        self.requests: list[RecordedRequest] = []
        self._queue: list[ScriptedResponse] = []
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()

    @property
    def url(self) -> str:
        """Base URL without /v1, as LLM_PROXY_URL accepts it."""
        return f"http://{self.host}:{self.port}"

    def enqueue(
        self,
        completion: dict[str, Any] | None = None,
        *,
        status: int = 200,
        body: str | dict[str, Any] | None = None,
        delay: float = 0.0,
        match: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Queue one reply; see `ScriptedResponse` for the fields."""
        self._queue.append(
            ScriptedResponse(completion, status, body, delay, match, headers)
        )

    def reset(self) -> None:
        self._queue.clear()
        self.requests.clear()

    @property
    def completion_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    async def start(self) -> None:
        self._stopping.clear()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_post(
            "/openai/deployments/{deployment}/chat/completions",
            self._chat_completions,
        )
        app.router.add_post("/_control/responses", self._control_enqueue)
        app.router.add_get("/_control/requests", self._control_requests)
        app.router.add_post("/_control/reset", self._control_reset)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if server is not None and server.sockets:  # type: ignore[attr-defined]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeLLM:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _chat_completions(self, request: web.Request) -> web.Response:
        text = await request.text()
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        self.requests.append(
            RecordedRequest(
                request.path, dict(request.headers), body, text, dict(request.query)
            )
        )

        scripted = self._take(text)
        delay = scripted.delay if scripted else self.default_delay
        if delay > 0 and await self._stopped_during(delay):
            return web.Response(status=503, text="fake model server is stopping")
        if scripted is None:
            if self.default_status is not None:
                return _raw_response(self.default_status, "fake model failure")
            return web.json_response(self.default)
        if scripted.status != 200 or scripted.body is not None:
            response = _raw_response(scripted.status, scripted.body)
        else:
            response = web.json_response(scripted.completion or self.default)
        response.headers.update(scripted.headers or {})
        return response

    def _take(self, text: str) -> ScriptedResponse | None:
        for index, scripted in enumerate(self._queue):
            if not scripted.match or scripted.match in text:
                return self._queue.pop(index)
        return None

    async def _stopped_during(self, delay: float) -> bool:
        try:
            await asyncio.wait_for(self._stopping.wait(), delay)
        except TimeoutError:
            return False
        return True

    async def _control_enqueue(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
            items = data if isinstance(data, list) else [data]
            responses = [ScriptedResponse.from_json(item) for item in items]
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self._queue.extend(responses)
        return web.json_response({"queued": len(self._queue)})

    async def _control_requests(self, _: web.Request) -> web.Response:
        recorded = [
            {"path": r.path, "headers": r.headers, "body": r.body, "query": r.query}
            for r in self.requests
        ]
        return web.json_response(recorded)

    async def _control_reset(self, _: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"queued": 0})


def _raw_response(status: int, body: str | dict[str, Any] | None) -> web.Response:
    if isinstance(body, dict):
        return web.json_response(body, status=status)
    return web.Response(status=status, text=body or "")


async def _serve(args: argparse.Namespace, default: dict[str, Any] | None) -> None:
    llm = FakeLLM(host=args.host, port=args.port, delay=args.delay, default=default)
    await llm.start()
    print(llm.port, flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await llm.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="Address to bind.")
    parser.add_argument("--port", type=int, default=0, help="Port; 0 picks one.")
    parser.add_argument(
        "--delay", type=float, default=0.0, help="Seconds before each default reply."
    )
    parser.add_argument(
        "--response-file",
        help="chat.completion JSON file used as the default reply.",
    )
    args = parser.parse_args(argv)
    default = None
    if args.response_file is not None:
        default = json.loads(Path(args.response_file).read_text())
    asyncio.run(_serve(args, default))
    sys.exit(0)


if __name__ == "__main__":
    main()
