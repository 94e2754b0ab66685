"""A fake Kubernetes API server serving Secrets with list and watch.

It speaks the protocol of `/api/v1/namespaces/{namespace}/secrets` as the
real API server does, so the official Python client can run against it:

- LIST returns a `SecretList` whose `metadata.resourceVersion` is the
  latest resourceVersion. Items carry no kind or apiVersion, as in a real
  list.
- WATCH (`watch=true` or `watch=1`) streams newline-delimited JSON events
  `{"type": ..., "object": ...}` in chunks. The stream starts after the
  given `resourceVersion`. Without one, or with "0", it starts with a
  synthetic ADDED event per matching Secret. It ends after
  `timeoutSeconds`, and with `allowWatchBookmarks` it sends BOOKMARK
  events. A resourceVersion older than the last compaction gets an ERROR
  event with a `Status` of code 410 and reason "Expired".
- `labelSelector` is applied by the server: `k=v`, `k==v`, `k!=v`, `k`,
  `!k`, `k in (a,b)` and `k notin (a,b)`, joined by commas. An invalid
  selector gets a 400 `Status`.
- A Secret whose labels change so that it starts or stops matching a
  watch's selector reaches that watch as ADDED or DELETED, as it does on a
  real server.

resourceVersions are one counter across every object. Tests drive the
server with `create_secret`, `update_secret`, `delete_secret`, `compact`,
`close_watches` and `fail_next`, and read `calls` to see what the client
sent.

    async with FakeKubeApi() as api:
        api.create_secret("team-a", "hook", {"url": "http://..."},
                          labels={"publishing-target": "true"})
        configuration = kubernetes.client.Configuration(host=api.url)
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from aiohttp import web

SECRETS_PATH = "/api/v1/namespaces/{namespace}/secrets"
# A watch without timeoutSeconds ends after this many seconds. The real
# server picks 30 to 60 minutes by default; tests keep it short.
DEFAULT_WATCH_SECONDS = 30.0

# Status reasons the real server gives with these codes.
_REASONS = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}
_SELECTOR_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_SELECTOR_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_EQUALITY = re.compile(
    rf"^\s*(?P<key>{_SELECTOR_KEY})\s*(?P<op>==|!=|=)\s*(?P<value>{_SELECTOR_VALUE})\s*$"
)
_SET = re.compile(
    rf"^\s*(?P<key>{_SELECTOR_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)\s*$"
)
_EXISTS = re.compile(rf"^\s*(?P<not>!?)\s*(?P<key>{_SELECTOR_KEY})\s*$")


class SelectorError(ValueError):
    """A label selector the real API server would reject."""


@dataclass(frozen=True)
class Requirement:
    """One requirement of a label selector, such as `tier in (a,b)`."""

    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        if self.operator == "exists":
            return value is not None
        if self.operator == "!exists":
            return value is None
        if self.operator in ("=", "==", "in"):
            return value is not None and value in self.values
        # "!=" and "notin" also match objects without the label.
        return value is None or value not in self.values


def parse_selector(text: str) -> list[Requirement]:
    """Parse a label selector, raising SelectorError when it is invalid."""
    requirements = []
    for part in _split_requirements(text):
        requirements.append(_parse_requirement(part))
    return requirements


def selector_matches(
    requirements: list[Requirement], labels: Mapping[str, str]
) -> bool:
    return all(requirement.matches(labels) for requirement in requirements)


def _split_requirements(text: str) -> list[str]:
    """Split at commas outside parentheses; an empty selector has no parts."""
    if not text.strip():
        return []
    parts = []
    depth = 0
    current = ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def _parse_requirement(part: str) -> Requirement:
    equality = _EQUALITY.match(part)
    if equality:
        return Requirement(
            equality["key"], equality["op"], frozenset({equality["value"]})
        )
    in_set = _SET.match(part)
    if in_set:
        values = frozenset(v.strip() for v in in_set["values"].split(","))
        if "" in values:
            raise SelectorError(f"empty value in set requirement {part.strip()!r}")
        return Requirement(in_set["key"], in_set["op"], values)
    exists = _EXISTS.match(part)
    if exists:
        operator = "!exists" if exists["not"] else "exists"
        return Requirement(exists["key"], operator)
    raise SelectorError(f"unable to parse requirement {part.strip()!r}")


@dataclass(frozen=True)
class RecordedCall:
    """One request to the secrets endpoint, with its query parameters."""

    namespace: str
    query: dict[str, str]
    watch: bool


@dataclass(frozen=True)
class _Change:
    """One stored change; `before` is None for a creation."""

    resource_version: int
    namespace: str
    kind: str
    before: dict[str, Any] | None
    after: dict[str, Any]


@dataclass(eq=False)
class _Watcher:
    namespace: str
    requirements: list[Requirement]
    changes: asyncio.Queue[_Change] = field(default_factory=asyncio.Queue)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    abort: bool = False


@dataclass
class _Failure:
    status: int
    remaining: int
    watch: bool | None


class FakeKubeApi:
    """An aiohttp server on 127.0.0.1 speaking the Secrets list/watch protocol."""

    def __init__(self, *, bookmark_interval_seconds: float = 1.0) -> None:
        self.bookmark_interval_seconds = bookmark_interval_seconds
        self.calls: list[RecordedCall] = []
        # (namespace, name) of every Secret sent in a list or a watch event.
        self.sent: list[tuple[str, str]] = []
        self.port = 0
        self._objects: dict[tuple[str, str], dict[str, Any]] = {}
        self._history: list[_Change] = []
        self._resource_version = 100
        # Watches from a resourceVersion older than this get 410 Gone.
        self._compacted = 0
        self._watchers: set[_Watcher] = set()
        self._failures: list[_Failure] = []
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Condition()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def resource_version(self) -> str:
        """The latest resourceVersion handed out."""
        return str(self._resource_version)

    @property
    def active_watches(self) -> int:
        return len(self._watchers)

    def list_calls(self, namespace: str | None = None) -> list[RecordedCall]:
        return [
            call
            for call in self.calls
            if not call.watch and namespace in (None, call.namespace)
        ]

    def watch_calls(self, namespace: str | None = None) -> list[RecordedCall]:
        return [
            call
            for call in self.calls
            if call.watch and namespace in (None, call.namespace)
        ]

    def create_secret(
        self,
        namespace: str,
        name: str,
        data: Mapping[str, str] | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        encoded_data: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Store a new Secret and return it.

        `data` values are text the server base64-encodes; `encoded_data`
        values are stored as given, so a test can store invalid base64.
        """
        if (namespace, name) in self._objects:
            raise ValueError(f"secret {namespace}/{name} already exists")
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "labels": dict(labels or {}),
                "creationTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
            "type": "Opaque",
            "data": _encode(data, encoded_data),
        }
        return self._store(namespace, name, secret, "ADDED")

    def update_secret(
        self,
        namespace: str,
        name: str,
        data: Mapping[str, str] | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        encoded_data: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Replace a Secret's data, and its labels when `labels` is given."""
        secret = copy.deepcopy(self._existing(namespace, name))
        secret["data"] = _encode(data, encoded_data)
        if labels is not None:
            secret["metadata"]["labels"] = dict(labels)
        return self._store(namespace, name, secret, "MODIFIED")

    def delete_secret(self, namespace: str, name: str) -> None:
        secret = copy.deepcopy(self._existing(namespace, name))
        self._store(namespace, name, secret, "DELETED")

    def compact(self) -> None:
        """Forget every change so far: older resourceVersions now get 410."""
        self._compacted = self._resource_version
        self._history.clear()

    def close_watches(self, *, abort: bool = False) -> None:
        """End every open watch: cleanly, or by dropping the connection."""
        for watcher in self._watchers:
            watcher.abort = abort
            watcher.closed.set()

    def fail_next(
        self, status: int, count: int = 1, *, watch: bool | None = None
    ) -> None:
        """Fail the next `count` requests with an error `Status` of `status`.

        With `watch` given, only watches (True) or only lists (False) fail.
        """
        self._failures.append(_Failure(status, count, watch))

    async def wait_until(
        self, condition: Callable[[], bool], wait_seconds: float = 10.0
    ) -> None:
        """Wait until `condition()` holds; it is checked on every request
        and whenever a watch opens or closes."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(condition), wait_seconds)

    async def wait_for_watches(self, count: int, wait_seconds: float = 10.0) -> None:
        """Wait until at least `count` watches are open."""
        await self.wait_until(lambda: self.active_watches >= count, wait_seconds)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/{namespace}/secrets", self._secrets)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.close_watches(abort=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeKubeApi:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def _existing(self, namespace: str, name: str) -> dict[str, Any]:
        secret = self._objects.get((namespace, name))
        if secret is None:
            raise KeyError(f"secret {namespace}/{name} not found")
        return secret

    def _store(
        self, namespace: str, name: str, secret: dict[str, Any], kind: str
    ) -> dict[str, Any]:
        self._resource_version += 1
        secret["metadata"]["resourceVersion"] = str(self._resource_version)
        before = self._objects.get((namespace, name))
        if kind == "DELETED":
            self._objects.pop((namespace, name), None)
        else:
            self._objects[(namespace, name)] = secret
        change = _Change(self._resource_version, namespace, kind, before, secret)
        self._history.append(change)
        for watcher in self._watchers:
            if watcher.namespace == namespace:
                watcher.changes.put_nowait(change)
        return copy.deepcopy(secret)

    async def _secrets(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info["namespace"]
        query = dict(request.query)
        watch = query.get("watch", "").lower() in ("true", "1")
        self.calls.append(RecordedCall(namespace, query, watch))
        await self._notify()

        failure = self._take_failure(watch)
        if failure is not None:
            reason = _REASONS.get(failure, "InternalError")
            return _status_response(failure, reason, "injected failure")
        try:
            requirements = parse_selector(query.get("labelSelector", ""))
        except SelectorError as exc:
            return _status_response(400, "BadRequest", str(exc))
        start = query.get("resourceVersion", "")
        if start and not start.isdigit():
            return _status_response(400, "BadRequest", "invalid resourceVersion")
        if watch:
            return await self._watch(request, namespace, requirements, query)
        return self._list(namespace, requirements)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _take_failure(self, watch: bool) -> int | None:
        for failure in self._failures:
            if failure.remaining > 0 and failure.watch in (None, watch):
                failure.remaining -= 1
                return failure.status
        return None

    def _list(self, namespace: str, requirements: list[Requirement]) -> web.Response:
        items = []
        for (item_namespace, _), secret in sorted(self._objects.items()):
            if item_namespace == namespace and _matches(requirements, secret):
                item = copy.deepcopy(secret)
                del item["apiVersion"], item["kind"]
                items.append(item)
                self.sent.append((namespace, secret["metadata"]["name"]))
        body = {
            "kind": "SecretList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": self.resource_version},
            "items": items,
        }
        return web.json_response(body)

    async def _watch(
        self,
        request: web.Request,
        namespace: str,
        requirements: list[Requirement],
        query: dict[str, str],
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)

        start = query.get("resourceVersion", "")
        watcher = _Watcher(namespace, requirements)
        expired = start not in ("", "0") and int(start) < self._compacted
        # Registered and read with no await in between, so every later change
        # reaches the queue and none is sent twice.
        self._watchers.add(watcher)
        backlog = [] if expired else self._backlog(watcher, start)
        try:
            await self._notify()
            if expired:
                await _send(response, "ERROR", _expired_status(start, self._compacted))
                return response
            for kind, secret in backlog:
                await self._send(response, kind, secret)
            await self._stream(response, watcher, query)
        except ConnectionResetError:
            return response
        finally:
            self._watchers.discard(watcher)
            await self._notify()
        if watcher.abort and request.transport is not None:
            request.transport.close()
        return response

    def _backlog(
        self, watcher: _Watcher, start: str
    ) -> list[tuple[str, dict[str, Any]]]:
        """Events after `start`, or the current state as ADDED without one."""
        if start in ("", "0"):
            return [
                ("ADDED", copy.deepcopy(secret))
                for (namespace, _), secret in sorted(self._objects.items())
                if namespace == watcher.namespace
                and _matches(watcher.requirements, secret)
            ]
        events = []
        for change in self._history:
            if change.resource_version > int(start):
                event = _event_for(watcher, change)
                if event is not None:
                    events.append(event)
        return events

    async def _stream(
        self, response: web.StreamResponse, watcher: _Watcher, query: dict[str, str]
    ) -> None:
        loop = asyncio.get_running_loop()
        seconds = float(query.get("timeoutSeconds") or DEFAULT_WATCH_SECONDS)
        deadline = loop.time() + seconds
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        while not watcher.closed.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            wait = (
                min(remaining, self.bookmark_interval_seconds)
                if bookmarks
                else remaining
            )
            change = await _next_change(watcher, wait)
            if watcher.closed.is_set():
                # A closed watch sends nothing more, even changes already queued.
                return
            event = _event_for(watcher, change) if change is not None else None
            if event is not None:
                await self._send(response, *event)
            elif change is None and bookmarks and loop.time() < deadline:
                await _send(response, "BOOKMARK", self._bookmark())

    async def _send(
        self, response: web.StreamResponse, kind: str, secret: dict[str, Any]
    ) -> None:
        metadata = secret["metadata"]
        self.sent.append((metadata["namespace"], metadata["name"]))
        await _send(response, kind, secret)

    def _bookmark(self) -> dict[str, Any]:
        return {
            "kind": "Secret",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": self.resource_version},
        }


async def _next_change(watcher: _Watcher, wait_seconds: float) -> _Change | None:
    """The next change, or None when `wait_seconds` pass or the watch closes."""
    getter = asyncio.ensure_future(watcher.changes.get())
    closer = asyncio.ensure_future(watcher.closed.wait())
    done, pending = await asyncio.wait(
        {getter, closer}, timeout=wait_seconds, return_when=asyncio.FIRST_COMPLETED
    )
    for task in pending:
        task.cancel()
    if getter in done:
        return getter.result()
    return None


def _event_for(watcher: _Watcher, change: _Change) -> tuple[str, dict[str, Any]] | None:
    """The event a watch sees for `change`, judged by the watch's selector."""
    if change.namespace != watcher.namespace:
        return None
    was = change.before is not None and _matches(watcher.requirements, change.before)
    now = _matches(watcher.requirements, change.after)
    if change.kind == "DELETED":
        kind = "DELETED" if was else None
    elif was and now:
        kind = "MODIFIED"
    elif now:
        kind = "ADDED"
    elif was:
        kind = "DELETED"
    else:
        kind = None
    return (kind, change.after) if kind is not None else None


async def _send(response: web.StreamResponse, kind: str, obj: dict[str, Any]) -> None:
    line = json.dumps({"type": kind, "object": obj}) + "\n"
    await response.write(line.encode())


def _matches(requirements: list[Requirement], secret: Mapping[str, Any]) -> bool:
    return selector_matches(requirements, secret["metadata"].get("labels") or {})


def _encode(
    data: Mapping[str, str] | None, encoded_data: Mapping[str, str] | None
) -> dict[str, str]:
    encoded = {
        key: base64.b64encode(value.encode()).decode()
        for key, value in (data or {}).items()
    }
    encoded.update(encoded_data or {})
    return encoded


def _expired_status(start: str, oldest: int) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"too old resource version: {start} ({oldest})",
        "reason": "Expired",
        "code": 410,
    }


def _status_response(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)
