"""A local HTTP receiver that records every request and replies from a script.

In process:

    async with Receiver() as receiver:
        receiver.script("/hook", [Reply(500), Reply(200)])
        receiver.respond("/pd", lambda request: Reply(202, ...))
        ... POST to receiver.url("/hook") ...
        receiver.requests  # every RecordedRequest, in arrival order

As a process, for end-to-end tests:

    python -m tests.fakes.receiver --host 127.0.0.1 --port 0

prints the bound port on one line once listening. `GET /_control/requests`
returns what it recorded, `POST /_control/script` with
{"path": "/hook", "replies": [{"status": 500}], "repeat_last": false}
sets a path's script, and `POST /_control/reset` clears requests and scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

CONTROL_PREFIX = "/_control/"


@dataclass(frozen=True)
class Reply:
    """One scripted response; `delay` is in seconds before it is sent."""

    status: int = 200
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    """One request as it arrived: `body` is the parsed JSON, None if not JSON."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any
    text: str
    # time.time() and time.monotonic() on arrival, before any scripted delay.
    received_at: float
    monotonic: float


@dataclass
class _Script:
    replies: list[Reply]
    repeat_last: bool


class Receiver:
    """An aiohttp server on 127.0.0.1 that records requests and replies."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.requests: list[RecordedRequest] = []
        self._scripts: dict[str, _Script] = {}
        self._responders: dict[str, Callable[[RecordedRequest], Reply]] = {}
        self._runner: web.AppRunner | None = None
        self._arrived = asyncio.Condition()

    def script(
        self, path: str, replies: list[Reply], *, repeat_last: bool = False
    ) -> None:
        """Reply to the next requests to `path` with `replies` in order.

        After the last reply, `repeat_last` repeats it. Otherwise the
        receiver returns 200 with an empty body.
        """
        self._scripts[path] = _Script(list(replies), repeat_last)

    def respond(self, path: str, responder: Callable[[RecordedRequest], Reply]) -> None:
        """Build the reply to requests to `path` from each request, once the
        path's script has no reply left."""
        self._responders[path] = responder

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [request for request in self.requests if request.path == path]

    async def wait_for_requests(
        self, count: int, path: str | None = None, wait_seconds: float = 10.0
    ) -> list[RecordedRequest]:
        """Wait until `count` requests (to `path`, if given) have arrived."""

        def seen() -> list[RecordedRequest]:
            return self.requests if path is None else self.requests_to(path)

        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: len(seen()) >= count), wait_seconds
            )
        return seen()

    def reset(self) -> None:
        self.requests.clear()
        self._scripts.clear()
        self._responders.clear()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(CONTROL_PREFIX + "requests", self._list_requests)
        app.router.add_post(CONTROL_PREFIX + "script", self._set_script)
        app.router.add_post(CONTROL_PREFIX + "reset", self._reset)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Receiver:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.Response:
        text = await request.text()
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = None
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            query=request.query_string,
            headers=dict(request.headers),
            body=parsed,
            text=text,
            received_at=time.time(),
            monotonic=time.monotonic(),
        )
        async with self._arrived:
            self.requests.append(recorded)
            self._arrived.notify_all()

        reply = self._next_reply(recorded)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return web.Response(status=reply.status, text=reply.body, headers=reply.headers)

    def _next_reply(self, request: RecordedRequest) -> Reply:
        script = self._scripts.get(request.path)
        if script is None or not script.replies:
            responder = self._responders.get(request.path)
            return Reply() if responder is None else responder(request)
        if len(script.replies) == 1 and script.repeat_last:
            return script.replies[0]
        return script.replies.pop(0)

    async def _list_requests(self, _: web.Request) -> web.Response:
        return web.json_response([asdict(request) for request in self.requests])

    async def _set_script(self, request: web.Request) -> web.Response:
        payload = await request.json()
        replies = [Reply(**reply) for reply in payload.get("replies", [])]
        self.script(
            payload["path"], replies, repeat_last=bool(payload.get("repeat_last"))
        )
        return web.json_response({"path": payload["path"], "replies": len(replies)})

    async def _reset(self, _: web.Request) -> web.Response:
        self.reset()
        return web.json_response({})


async def _serve(host: str, port: int) -> None:
    receiver = Receiver(host, port)
    await receiver.start()
    print(receiver.port, flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await receiver.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="Address to bind.")
    parser.add_argument(
        "--port", type=int, default=0, help="Port to bind; 0 picks a free one."
    )
    args = parser.parse_args()
    asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
