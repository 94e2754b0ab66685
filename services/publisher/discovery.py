"""Publishing targets discovered from Kubernetes Secrets.

Each Secret matching TARGET_DISCOVERY_LABEL_SELECTOR in a namespace of
TARGET_DISCOVERY_NAMESPACES defines one target. `secret_definition` maps its
keys onto the definition `targets.parse_target` reads, so Secrets and the
targets file share one schema and one set of checks.

Per namespace, `SecretDiscovery` lists the Secrets, then watches from the
list's resourceVersion. It re-watches from the last resourceVersion it saw
when a watch ends, lists again after 410 Gone and every
TARGET_DISCOVERY_RESYNC_SECONDS, and backs off after other errors. The
official client blocks, so each call runs in a worker thread while the
target set is only changed on the event loop.

`TargetSources` merges the discovered targets with the file's into the
service's `TargetSet`. A file target wins a name clash.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import functools
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import yaml
from kubernetes import client as kube_client
from kubernetes import config as kube_config
from kubernetes import watch as kube_watch
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Counter, Histogram

from libs.config import ConfigError, Settings
from services.publisher.metrics import PublisherMetrics
from services.publisher.targets import (
    Target,
    TargetConfigError,
    TargetSet,
    parse_target,
)

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

SECRET_KEYS = frozenset(
    {
        "target-name",
        "webhook-url",
        "url",
        "format",
        "enabled",
        "auth-header",
        "api-key",
        "token",
        "routing-key",
        "noise-policy",
        "rate-limit-per-second",
        "filter-severity",
        "filter-namespaces",
        "filter-alertname-patterns",
        "exclude-noise",
        "min-confidence",
    }
)
# `header-X-Team: a` sends the header `X-Team: a`.
HEADER_KEY_PREFIX = "header-"
# The header that carries a Secret's `api-key`, whatever the format.
API_KEY_HEADER = "X-API-Key"
_STRING_KEYS = {
    "format": "format",
    "routing-key": "routing_key",
    "noise-policy": "noise_policy",
}
_LIST_KEYS = {
    "filter-severity": "severity",
    "filter-namespaces": "namespaces",
    "filter-alertname-patterns": "alertname_patterns",
}
_BOOLEANS = {"true": True, "false": False}

# Values of the `reason` label of alert_history_target_discovery_errors_total.
ERROR_REASONS = ("invalid_secret", "name_conflict", "api_error")

CONNECT_TIMEOUT_SECONDS = 10.0
LIST_TIMEOUT_SECONDS = 30.0
# Read time allowed beyond timeoutSeconds before a silent watch counts as dead.
WATCH_READ_MARGIN_SECONDS = 30.0
# close() waits this long for calls in worker threads to return.
CLOSE_WAIT_SECONDS = 2.0


class DiscoveryMetrics:
    """Metrics of Secret discovery, registered on the registry passed in."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.refresh_duration = Histogram(
            "alert_history_secret_refresh_duration_seconds",
            "Time one full list of the target Secrets of a namespace took.",
            registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.errors = Counter(
            "alert_history_target_discovery_errors",
            "Errors of target discovery: invalid_secret (a Secret skipped), "
            "name_conflict (a Secret's target name is taken), api_error (a "
            "failed list or watch).",
            ["reason"],
            registry=registry,
        )
        for reason in ERROR_REASONS:
            self.errors.labels(reason)


def secret_definition(secret: Mapping[str, Any]) -> dict[str, Any]:
    """Decode a Secret's `data` into the target definition parse_target reads.

    Raises TargetConfigError naming the key, never its value, when the data
    cannot be decoded, a key is unknown, or two keys set one header.
    """
    metadata = secret.get("metadata") or {}
    values = _decode_data(secret.get("data") or {})
    unknown = sorted(
        key
        for key in values
        if key not in SECRET_KEYS and not key.startswith(HEADER_KEY_PREFIX)
    )
    if unknown:
        raise TargetConfigError(
            f"unknown key {', '.join(map(repr, unknown))}; expected "
            f"{', '.join(sorted(SECRET_KEYS))} or {HEADER_KEY_PREFIX}<name>"
        )

    definition: dict[str, Any] = {
        "name": values.get("target-name") or metadata.get("name"),
    }
    url = _one_of(values, "webhook-url", "url")
    if url is not None:
        definition["url"] = url
    for key, field_name in _STRING_KEYS.items():
        if key in values:
            definition[field_name] = values[key]
    if "rate-limit-per-second" in values:
        definition["rate_limit_per_second"] = _parse_number(
            values["rate-limit-per-second"], "rate-limit-per-second"
        )
    if values.get("enabled"):
        definition["enabled"] = _parse_bool(values["enabled"], "enabled")
    headers = _headers(values)
    if headers:
        definition["headers"] = headers
    target_filter = _filter(values)
    if target_filter:
        definition["filter"] = target_filter
    return definition


def target_from_secret(secret: Mapping[str, Any]) -> Target:
    """Build the Target a Secret defines, with source secret:<namespace>/<name>.

    Raises TargetConfigError when the Secret does not define a valid target.
    """
    definition = secret_definition(secret)
    return parse_target(definition, source=secret_source(secret), position=1)


def secret_source(secret: Mapping[str, Any]) -> str:
    metadata = secret.get("metadata") or {}
    return f"secret:{metadata.get('namespace', '')}/{metadata.get('name', '')}"


def _decode_data(data: Mapping[str, Any]) -> dict[str, str]:
    values: dict[str, str] = {}
    for key, encoded in data.items():
        try:
            raw = base64.b64decode(str(encoded), validate=True)
        except (binascii.Error, ValueError):
            raise TargetConfigError(f"key {key!r} is not valid base64") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise TargetConfigError(f"key {key!r} is not UTF-8 text") from None
        # `echo value | base64` leaves a line break that would end a header.
        stripped = text.strip()
        if stripped:
            values[key] = stripped
    return values


def _one_of(values: Mapping[str, str], first: str, second: str) -> str | None:
    if first in values and second in values:
        raise TargetConfigError(f"both {first!r} and {second!r} are set; keep one")
    return values.get(first, values.get(second))


def _headers(values: Mapping[str, str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in values.items():
        if key.startswith(HEADER_KEY_PREFIX):
            name = key[len(HEADER_KEY_PREFIX) :]
            if not name:
                raise TargetConfigError(f"key {key!r} names no header")
            _add_header(headers, name, value, key)
    if "auth-header" in values:
        _add_header(headers, "Authorization", values["auth-header"], "auth-header")
    if "token" in values:
        _add_header(headers, "Authorization", f"Bearer {values['token']}", "token")
    if "api-key" in values:
        _add_header(headers, API_KEY_HEADER, values["api-key"], "api-key")
    return headers


def _add_header(headers: dict[str, str], name: str, value: str, key: str) -> None:
    if any(existing.lower() == name.lower() for existing in headers):
        raise TargetConfigError(
            f"key {key!r} sets header {name!r}, which another key already sets"
        )
    headers[name] = value


def _filter(values: Mapping[str, str]) -> dict[str, Any]:
    target_filter: dict[str, Any] = {}
    for key, field_name in _LIST_KEYS.items():
        if key in values:
            target_filter[field_name] = _split_list(values[key])
    if "exclude-noise" in values:
        target_filter["exclude_noise"] = _parse_bool(
            values["exclude-noise"], "exclude-noise"
        )
    if "min-confidence" in values:
        target_filter["min_confidence"] = _parse_number(
            values["min-confidence"], "min-confidence"
        )
    return target_filter


def _parse_number(value: str, key: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise TargetConfigError(f"key {key!r} is not a number") from None
    if not math.isfinite(number):
        raise TargetConfigError(f"key {key!r} is not a finite number")
    return number


def _split_list(value: str) -> list[str]:
    """Split at line breaks when there are any, otherwise at commas.

    One item per line lets a regular expression contain a comma.
    """
    separator = "\n" if "\n" in value else ","
    return [item.strip() for item in value.split(separator) if item.strip()]


def _parse_bool(value: str, key: str) -> bool:
    parsed = _BOOLEANS.get(value.lower())
    if parsed is None:
        raise TargetConfigError(f"key {key!r} must be true or false")
    return parsed


class TargetSources:
    """Keeps a TargetSet equal to the file's targets plus the discovered ones.

    A discovered target whose name a file target, or a Secret earlier in
    (namespace, name) order, already uses is left out and logged once.
    """

    def __init__(
        self,
        target_set: TargetSet,
        file_targets: Sequence[Target],
        metrics: PublisherMetrics,
        discovery_metrics: DiscoveryMetrics,
    ) -> None:
        self._target_set = target_set
        self._file_targets = tuple(file_targets)
        self._metrics = metrics
        self._discovery_metrics = discovery_metrics
        self._reported_conflicts: set[str] = set()
        self._discovered: tuple[Target, ...] = ()

    def set_file_targets(self, file_targets: Sequence[Target]) -> None:
        """Replace the file's targets, then update the set and its gauges."""
        self._file_targets = tuple(file_targets)
        self.set_discovered(self._discovered)

    def set_discovered(self, discovered: Sequence[Target]) -> None:
        """Replace the discovered targets, then update the set and its gauges."""
        self._discovered = tuple(discovered)
        was_metrics_only = self._target_set.metrics_only
        merged, skipped = merge_targets(self._file_targets, discovered)
        self._report_conflicts(skipped)
        self._target_set.replace(merged)
        self._metrics.show_targets(merged)

        logger.info(
            "publishing targets updated",
            extra={
                "targets": len(merged),
                "discovered": len(merged) - len(self._file_targets),
            },
        )
        if self._target_set.metrics_only and not was_metrics_only:
            logger.info("no publishing targets left; metrics-only mode")
        elif was_metrics_only and not self._target_set.metrics_only:
            logger.info("publishing targets found; leaving metrics-only mode")

    def _report_conflicts(self, skipped: Sequence[Target]) -> None:
        current = {target.source for target in skipped}
        for target in skipped:
            if target.source not in self._reported_conflicts:
                logger.warning(
                    "discovered publishing target skipped: its name is taken",
                    extra={"target": target.name, "secret": target.source},
                )
                self._discovery_metrics.errors.labels("name_conflict").inc()
        self._reported_conflicts = current


def merge_targets(
    file_targets: Sequence[Target], discovered: Sequence[Target]
) -> tuple[list[Target], list[Target]]:
    """Return (targets in effect, discovered targets left out for their name)."""
    merged = list(file_targets)
    taken = {target.name for target in file_targets}
    skipped = []
    for target in discovered:
        if target.name in taken:
            skipped.append(target)
            continue
        taken.add(target.name)
        merged.append(target)
    return merged, skipped


@dataclass(frozen=True)
class _Entry:
    """A Secret as last seen: its target, or None when it defines none."""

    resource_version: str
    target: Target | None


class _ResourceExpired(Exception):
    """The watch's resourceVersion is older than the server keeps (410 Gone)."""


class SecretDiscovery:
    """Lists and watches the target Secrets of each namespace.

    `on_change` receives every discovered target, sorted by namespace and
    Secret name, whenever that list changes.
    """

    def __init__(
        self,
        api_client: kube_client.ApiClient,
        namespaces: Sequence[str],
        *,
        label_selector: str,
        resync_seconds: float,
        watch_timeout_seconds: int,
        on_change: Callable[[list[Target]], None],
        metrics: DiscoveryMetrics,
        backoff_initial_seconds: float = 1.0,
        backoff_max_seconds: float = 60.0,
    ) -> None:
        # The client's annotations do not cover _preload_content=False.
        self._api: Any = kube_client.CoreV1Api(api_client)
        self._namespaces = list(dict.fromkeys(namespaces))
        self._label_selector = label_selector
        self._resync_seconds = resync_seconds
        self._watch_timeout_seconds = watch_timeout_seconds
        self._on_change = on_change
        self._metrics = metrics
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = backoff_max_seconds
        # Set by start_discovery; `refresh` gives it the reloaded file targets.
        self.sources: TargetSources | None = None
        self._entries: dict[str, dict[str, _Entry]] = {
            namespace: {} for namespace in self._namespaces
        }
        self._published: tuple[Target, ...] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # The Watch and event stream of each namespace's current watch.
        self._streams: dict[str, tuple[Any, Iterator[dict[str, Any]]]] = {}
        self._in_flight: set[concurrent.futures.Future[Any]] = set()
        # One thread per namespace reads its watch; as many again serve the
        # lists of `refresh`, which must not wait for a watch to end.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, 2 * len(self._namespaces)),
            thread_name_prefix="target-discovery",
        )

    @property
    def targets(self) -> list[Target]:
        """Valid discovered targets, sorted by namespace and Secret name."""
        return [
            entry.target
            for namespace in sorted(self._entries)
            for _, entry in sorted(self._entries[namespace].items())
            if entry.target is not None
        ]

    async def start(self) -> None:
        """List every namespace once, then watch each in a background task.

        A namespace whose first list fails is logged, counted and retried in
        its task, so start-up does not wait for the API server to recover.
        """
        versions = await asyncio.gather(
            *(self._first_list(namespace) for namespace in self._namespaces)
        )
        self._publish()
        for namespace, version in zip(self._namespaces, versions, strict=True):
            self._tasks.append(
                asyncio.create_task(
                    self._run(namespace, version),
                    name=f"target-discovery-{namespace}",
                )
            )

    async def refresh(self, file_targets: Sequence[Target]) -> int:
        """Apply reloaded file targets, then list every namespace again.

        Returns the number of namespaces whose list failed; each failure is
        logged and counted, and the namespace keeps its previous Secrets.
        NOTE: the namespace's watch keeps running meanwhile, so an event it
        delivers late, older than the list, is applied after it until the
        next event or resync.
        """
        if self.sources is not None:
            self.sources.set_file_targets(file_targets)
        results = await asyncio.gather(
            *(self._list(namespace) for namespace in self._namespaces),
            return_exceptions=True,
        )
        failed = 0
        for namespace, result in zip(self._namespaces, results, strict=True):
            if isinstance(result, Exception):
                self._count_api_error(namespace, result, "list")
                failed += 1
        return failed

    async def close(self) -> None:
        """Cancel the tasks, then stop the watches their threads still read."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

        deadline = time.monotonic() + CLOSE_WAIT_SECONDS
        while self._in_flight and time.monotonic() < deadline:
            # stop() shuts a watch's socket only once its response has
            # started, so a watch still connecting needs it again later.
            for watch, _ in self._streams.values():
                watch.stop()
            await asyncio.sleep(0.05)
        for _, events in self._streams.values():
            _close_stream(events)
        self._streams.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _first_list(self, namespace: str) -> str | None:
        try:
            return await self._list(namespace)
        except Exception as exc:
            self._count_api_error(namespace, exc, "list")
            return None

    async def _run(self, namespace: str, version: str | None) -> None:
        """List and watch one namespace until cancelled."""
        failures = 0
        resync_at = time.monotonic() + self._resync_seconds
        while True:
            call = "list"
            try:
                if version is None or time.monotonic() >= resync_at:
                    version = await self._list(namespace)
                    resync_at = time.monotonic() + self._resync_seconds
                call = "watch"
                seconds = self._watch_seconds(resync_at)
                version = await self._watch(namespace, version, seconds)
                failures = 0
            except _ResourceExpired:
                logger.info(
                    "watch of target secrets expired; listing again",
                    extra={"namespace": namespace},
                )
                version = None
            except Exception as exc:
                failures += 1
                self._count_api_error(namespace, exc, call)
                await asyncio.sleep(self._backoff_seconds(failures))

    def _watch_seconds(self, resync_at: float) -> int:
        """Return the next watch's timeoutSeconds, which ends it by the resync."""
        until_resync = math.ceil(resync_at - time.monotonic())
        return max(1, min(self._watch_timeout_seconds, until_resync))

    def _backoff_seconds(self, failures: int) -> float:
        ceiling = min(
            self._backoff_max, self._backoff_initial * 2 ** min(failures - 1, 30)
        )
        return random.uniform(ceiling / 2, ceiling)

    async def _list(self, namespace: str) -> str:
        """List the namespace's Secrets, replace its entries and return the
        list's resourceVersion."""
        started = time.monotonic()
        body = await self._in_thread(self._list_blocking, namespace)
        entries: dict[str, _Entry] = {}
        for secret in body.get("items") or []:
            secret.setdefault("metadata", {}).setdefault("namespace", namespace)
            name = secret["metadata"].get("name", "")
            entries[name] = self._entry(secret, self._entries[namespace].get(name))
        self._entries[namespace] = entries
        self._metrics.refresh_duration.observe(time.monotonic() - started)
        self._publish()
        return str(body["metadata"]["resourceVersion"])

    def _list_blocking(self, namespace: str) -> dict[str, Any]:
        response = self._api.list_namespaced_secret(
            namespace,
            label_selector=self._label_selector,
            _preload_content=False,
            _request_timeout=(CONNECT_TIMEOUT_SECONDS, LIST_TIMEOUT_SECONDS),
        )
        body: dict[str, Any] = json.loads(response.data)
        return body

    async def _watch(self, namespace: str, version: str, seconds: int) -> str:
        """Apply a watch's events until the server ends it, then return the last
        resourceVersion seen. Raises _ResourceExpired on 410 Gone.
        """
        watch: Any = kube_watch.Watch()  # type: ignore[no-untyped-call]
        events = watch.stream(
            self._api.list_namespaced_secret,
            namespace,
            label_selector=self._label_selector,
            resource_version=version,
            timeout_seconds=seconds,
            allow_watch_bookmarks=True,
            _request_timeout=(
                CONNECT_TIMEOUT_SECONDS,
                seconds + WATCH_READ_MARGIN_SECONDS,
            ),
        )
        self._streams[namespace] = (watch, events)
        try:
            while True:
                event = await self._in_thread(next, events, None)
                if event is None:
                    return version
                version = self._apply(namespace, event, version)
        except ApiException as exc:
            if exc.status == 410:
                raise _ResourceExpired from None
            raise
        except asyncio.CancelledError:
            # Unblocks the worker thread reading the stream.
            watch.stop()
            raise
        finally:
            if not getattr(events, "gi_running", False):
                # Otherwise close() closes it once its worker thread returns.
                _close_stream(events)
                self._streams.pop(namespace, None)

    def _apply(self, namespace: str, event: Mapping[str, Any], version: str) -> str:
        """Apply one watch event and return the resourceVersion it carries."""
        kind = event.get("type")
        secret = event.get("raw_object") or {}
        metadata = secret.get("metadata") or {}
        version = str(metadata.get("resourceVersion") or version)
        name = metadata.get("name", "")
        if kind in ("ADDED", "MODIFIED"):
            metadata.setdefault("namespace", namespace)
            previous = self._entries[namespace].get(name)
            self._entries[namespace][name] = self._entry(secret, previous)
        elif kind == "DELETED":
            self._entries[namespace].pop(name, None)
        else:
            return version
        self._publish()
        return version

    def _entry(self, secret: Mapping[str, Any], previous: _Entry | None) -> _Entry:
        """Parse a Secret, reusing the previous result for an unchanged version.

        An invalid Secret is logged and counted once per resourceVersion.
        """
        version = str(secret["metadata"].get("resourceVersion", ""))
        if previous is not None and previous.resource_version == version:
            return previous
        try:
            target: Target | None = target_from_secret(secret)
        except TargetConfigError as exc:
            logger.warning(
                "secret skipped: it does not define a valid publishing target",
                extra={"secret": secret_source(secret), "error": str(exc)},
            )
            self._metrics.errors.labels("invalid_secret").inc()
            target = None
        return _Entry(version, target)

    def _publish(self) -> None:
        targets = tuple(self.targets)
        if targets != self._published:
            self._published = targets
            self._on_change(list(targets))

    async def _in_thread(self, func: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking call in a worker thread, tracked for close()."""
        future = self._executor.submit(functools.partial(func, *args))
        self._in_flight.add(future)
        future.add_done_callback(self._in_flight.discard)
        return await asyncio.wrap_future(future)

    def _count_api_error(self, namespace: str, exc: Exception, call: str) -> None:
        self._metrics.errors.labels("api_error").inc()
        logger.warning(
            "kubernetes API call for target secrets failed; retrying",
            extra={"namespace": namespace, "call": call, "error": describe_error(exc)},
        )


def _close_stream(events: Iterator[dict[str, Any]]) -> None:
    """Close a watch stream's response unless a worker thread still reads it."""
    close = getattr(events, "close", None)
    if close is None:
        return
    try:
        close()
    except ValueError:
        # "generator already executing": its thread closes it when it returns.
        pass


def describe_error(exc: BaseException) -> str:
    """Describe an API failure in one line, leaving out the response body."""
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def kube_api_client(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> kube_client.ApiClient:
    """Build an API client from KUBECONFIG, the pod's ServiceAccount, or
    ~/.kube/config, in that order.

    Raises ConfigError when none of them gives usable credentials.
    """
    env = os.environ if environ is None else environ
    configuration = kube_client.Configuration()
    try:
        if settings.kubeconfig:
            kube_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=settings.kubeconfig, client_configuration=configuration
            )
        elif env.get("KUBERNETES_SERVICE_HOST"):
            kube_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        else:
            kube_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file="~/.kube/config", client_configuration=configuration
            )
    except (kube_config.ConfigException, OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(
            "target discovery (TARGET_DISCOVERY_NAMESPACES) cannot load Kubernetes "
            f"credentials from KUBECONFIG, the pod's ServiceAccount or "
            f"~/.kube/config: {type(exc).__name__}: {str(exc)[:200]}"
        ) from None
    # The discovery loop retries with backoff itself.
    configuration.retries = 0
    return kube_client.ApiClient(configuration)


async def start_discovery(
    settings: Settings,
    target_set: TargetSet,
    file_targets: Sequence[Target],
    metrics: PublisherMetrics,
    discovery_metrics: DiscoveryMetrics,
    api_client: kube_client.ApiClient | None = None,
) -> SecretDiscovery | None:
    """Start discovery when TARGET_DISCOVERY_NAMESPACES is set, else return None.

    Returns after the first list of every namespace, so the targets in
    effect include the discovered ones from the start.
    """
    namespaces = settings.discovery_namespaces()
    if not namespaces:
        return None
    sources = TargetSources(target_set, file_targets, metrics, discovery_metrics)
    discovery = SecretDiscovery(
        api_client or kube_api_client(settings),
        namespaces,
        label_selector=settings.target_discovery_label_selector,
        resync_seconds=settings.target_discovery_resync_seconds,
        watch_timeout_seconds=settings.target_discovery_watch_timeout_seconds,
        on_change=sources.set_discovered,
        metrics=discovery_metrics,
    )
    logger.info(
        "discovering publishing targets from secrets",
        extra={
            "namespaces": namespaces,
            "label_selector": settings.target_discovery_label_selector,
        },
    )
    discovery.sources = sources
    await discovery.start()
    return discovery
