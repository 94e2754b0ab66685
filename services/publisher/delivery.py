"""The background delivery worker and its retry policy.

The worker leases due deliveries from the store, POSTs each body to its
target and stores every attempt. Each target has its own limit of requests
in flight, its own rate limit and its own pause after a 429, so a slow,
failing or rate-limited target never holds up another. A worker that
stops without releasing its leases (a crash, SIGKILL) delays its in-flight
deliveries until the leases expire. Then any replica sends them again with
the same Idempotency-Key, so a receiver gets at most that one request twice.

Logs name the target, never its URL or headers: both may carry credentials.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from hashlib import sha256
from urllib.parse import urlsplit

import aiohttp
import asyncpg
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from libs import telemetry
from libs.coalesce import Coalescer
from libs.config import Settings
from libs.errors import UnavailableError
from services.publisher.metrics import PublisherMetrics
from services.publisher.ratelimit import TokenBucket
from services.publisher.store import (
    AttemptResult,
    ClaimedDelivery,
    DeliveryStore,
    FinishedAttempt,
    Outcome,
)
from services.publisher.targets import Target, TargetSet

logger = logging.getLogger(__name__)

# Response bytes kept per attempt.
MAX_RESPONSE_BODY_BYTES = 2048
# Maximum length of the error text kept per attempt.
MAX_ERROR_LENGTH = 500
# Seconds between polls of the store when nothing wakes the worker.
POLL_SECONDS = 1.0
# Seconds a lease outlives the request timeout, to cover storing the outcome.
LEASE_MARGIN_SECONDS = 30.0
USER_AGENT = "alert-history-publisher"
# Maximum attempt outcomes stored in one statement.
OUTCOMES_PER_WRITE = 256
# Outcome statements running at once.
OUTCOME_WRITES = 2
# Seconds shutdown waits for outcome writes, even when the drain time is spent.
OUTCOME_CLOSE_SECONDS = 1.0
# Shorter credential values are not searched for in response bodies: a value
# such as "1" would blank out unrelated text.
MIN_REDACTED_LENGTH = 4


def idempotency_key(batch_id: str, target: str, part: int) -> str:
    """Return the Idempotency-Key of a delivery: the same on every attempt."""
    digest = sha256(f"{batch_id}\n{target}\n{part}".encode()).hexdigest()
    return digest[:32]


def backoff_seconds(
    failures: int, initial: float, maximum: float, jitter: float
) -> float:
    """Return the wait after the `failures`-th failed attempt (counting from 1).

    The cap doubles from `initial` up to `maximum`, and the wait is drawn
    from the upper half of the cap: `jitter` in [0, 1) picks the point. Full
    jitter (anywhere from 0 to the cap) could shrink every wait to nearly
    nothing and give up within seconds, so half the cap is always waited.
    With 12 attempts, 5 s initial and 300 s maximum the 11 waits add up to at
    least 907.5 s.
    """
    exponent = min(max(failures - 1, 0), 62)
    cap = min(maximum, initial * 2.0**exponent)
    return cap / 2 + cap / 2 * jitter


def minimum_retry_span(attempts: int, initial: float, maximum: float) -> float:
    """Return the shortest time from the first to the last of `attempts`."""
    return sum(
        backoff_seconds(failures, initial, maximum, 0.0)
        for failures in range(1, attempts)
    )


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Return the wait in seconds a Retry-After header requests, or None if invalid.

    The header contains either whole seconds or an HTTP date, and a date in
    the past means 0.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max((moment - now).total_seconds(), 0.0)


def is_retryable_status(status_code: int | None) -> bool:
    """True for no response, 408, 429 and 5xx: a later attempt may succeed."""
    if status_code is None:
        return True
    return status_code in (408, 429) or 500 <= status_code <= 599


def decide_outcome(
    settings: Settings,
    *,
    attempt: int,
    status_code: int | None,
    error: str | None,
    retry_after: float | None,
    now: datetime,
    jitter: float,
) -> Outcome:
    """Decide what follows attempt number `attempt`, counting from 1 since the
    delivery was recorded or last retried by hand.

    2xx succeeds. A retryable failure waits the backoff or the Retry-After,
    whichever is longer, never more than DELIVERY_MAX_BACKOFF_SECONDS, and
    is dead after DELIVERY_MAX_ATTEMPTS. Any other status is dead at once:
    the target rejected the request (4xx) or redirected it, and redirects
    are not followed because they would resend the target's headers.
    """
    if status_code is not None and 200 <= status_code <= 299:
        return Outcome("succeeded", now)

    failure = error if error is not None else f"HTTP {status_code}"
    if not is_retryable_status(status_code):
        if status_code is not None and 300 <= status_code <= 399:
            failure = f"HTTP {status_code}: redirect not followed; set the final URL"
        return Outcome("dead", now, f"rejected by the target: {failure}")
    if attempt >= settings.delivery_max_attempts:
        return Outcome("dead", now, f"gave up after {attempt} attempts: {failure}")

    wait = backoff_seconds(
        attempt,
        settings.delivery_initial_backoff_seconds,
        settings.delivery_max_backoff_seconds,
        jitter,
    )
    if retry_after is not None:
        wait = max(wait, retry_after)
    wait = min(wait, settings.delivery_max_backoff_seconds)
    return Outcome("pending", now + timedelta(seconds=wait), failure)


@dataclass(frozen=True)
class Response:
    """The parts of a target's response the worker keeps."""

    status_code: int
    retry_after: str | None
    body: str


class DeliveryWorker:
    """Leases due deliveries and sends them, per target in parallel."""

    def __init__(
        self,
        store: DeliveryStore,
        targets: TargetSet,
        settings: Settings,
        metrics: PublisherMetrics,
        *,
        lease_seconds: float | None = None,
        drain_seconds: float | None = None,
        poll_seconds: float = POLL_SECONDS,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.targets = targets
        self.settings = settings
        self.metrics = metrics
        self.lease_seconds = (
            lease_seconds
            if lease_seconds is not None
            else settings.delivery_timeout_seconds + LEASE_MARGIN_SECONDS
        )
        self.drain_seconds = (
            drain_seconds
            if drain_seconds is not None
            else min(settings.shutdown_grace_seconds, settings.delivery_timeout_seconds)
        )
        self.poll_seconds = poll_seconds
        self.jitter = jitter
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._wake = asyncio.Event()
        # Targets that may have a due delivery: every target after a wake(),
        # and a target whose delivery just finished, since the next delivery
        # of that group becomes its head. A claim that returns fewer than it
        # asked for removes the target.
        self._ready: set[str] = set()
        self._all_ready = True
        # time.monotonic() of the next due_times() query, which finds retries
        # that became due, expired leases and deliveries other replicas
        # recorded.
        self._refresh_at = 0.0
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._in_flight: dict[asyncio.Task[None], ClaimedDelivery] = {}
        self._busy: dict[str, int] = {}
        self._dispatch_failures = 0
        self._buckets: dict[str, TokenBucket] = {}
        # time.monotonic() until which a target that returned 429 with
        # Retry-After gets no request.
        self._paused_until: dict[str, float] = {}
        # Outcomes of attempts that finish while one is being stored are
        # stored together, in one statement.
        # NOTE: a statement that waits on one locked delivery row (an
        # operator's open transaction) holds up the other outcomes of its
        # write until the command timeout, and all of them are retried.
        self._outcomes: Coalescer[FinishedAttempt, bool] = Coalescer(
            self._write_outcomes,
            max_batch=OUTCOMES_PER_WRITE,
            concurrency=OUTCOME_WRITES,
            retry_alone=_may_be_one_row,
        )

    async def start(self) -> None:
        """Start the dispatch loop."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.delivery_timeout_seconds),
            connector=aiohttp.TCPConnector(limit=0),
            headers={"User-Agent": USER_AGENT},
        )
        self._loop_task = asyncio.create_task(self._run(), name="delivery-dispatch")
        logger.info("delivery worker started", extra={"owner": self.owner})

    def wake(self) -> None:
        """Look for due deliveries now instead of at the next poll."""
        self._all_ready = True
        self._wake.set()

    async def close(self) -> None:
        """Stop taking deliveries, let requests in flight finish for the drain
        time, then cancel the rest and release their leases."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
            self._loop_task = None

        in_flight = dict(self._in_flight)
        if in_flight:
            drained_by = time.monotonic() + self.drain_seconds
            _, unfinished = await asyncio.wait(in_flight, timeout=self.drain_seconds)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
            await self._close_outcomes(drained_by - time.monotonic())
            if unfinished:
                await self._release([in_flight[task].id for task in unfinished])

        if self._session is not None:
            await self._session.close()
            self._session = None
        logger.info("delivery worker stopped", extra={"owner": self.owner})

    async def _close_outcomes(self, seconds: float) -> None:
        """Let outcome writes in flight finish within the drain time.

        Outcomes of cancelled deliveries are written too, because their
        requests may have reached the target. A write still running after
        `seconds` (at least OUTCOME_CLOSE_SECONDS) is cancelled, and its
        deliveries are sent again once their leases are released or expire.
        """
        try:
            await asyncio.wait_for(
                self._outcomes.close(), max(seconds, OUTCOME_CLOSE_SECONDS)
            )
        except TimeoutError:
            logger.error(
                "delivery outcomes not stored before shutdown, so their "
                "deliveries will be sent again once their leases are released",
                extra={"owner": self.owner},
            )

    async def _release(self, delivery_ids: list[int]) -> None:
        try:
            await self.store.release(delivery_ids, self.owner)
        except Exception as exc:
            # The leases expire on their own; the deliveries wait until then.
            logger.warning(
                "cannot release delivery leases",
                extra={"error": str(exc), "deliveries": len(delivery_ids)},
            )

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                wait = await self._dispatch()
                self._dispatch_failures = 0
            except Exception as exc:
                self._log_dispatch_failure(exc)
                wait = self.poll_seconds
            if wait > 0 and not self._stopping:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)

    def _log_dispatch_failure(self, exc: Exception) -> None:
        self._dispatch_failures += 1
        # One record on the first failure, then one per 60 failed polls (about
        # a minute) while the store stays unreachable.
        if self._dispatch_failures % 60 == 1:
            logger.error(
                "cannot take due deliveries from the store",
                extra={"error": str(exc), "failures": self._dispatch_failures},
            )

    async def _dispatch(self) -> float:
        """Lease due deliveries of every ready target with free slots and
        start them.

        Returns the seconds to wait before the next look. The aggregate
        due_times() query runs at most once per poll interval or at the
        earliest known due time, not on every pass.
        """
        now = datetime.now(UTC)
        enabled = list(self.targets.enabled())
        if self._all_ready:
            self._all_ready = False
            self._ready = {target.name for target in enabled}
        if time.monotonic() >= self._refresh_at:
            await self._refresh_due(enabled, now)

        wait = max(self._refresh_at - time.monotonic(), 0.0)
        for target in enabled:
            if target.name not in self._ready or self._stopping:
                continue
            free, blocked_for = self._free_slots(target)
            if free <= 0:
                if blocked_for > 0:
                    wait = min(wait, blocked_for)
                continue
            claimed = await self._claim(target, free, now)
            if len(claimed) < free:
                self._ready.discard(target.name)
            if claimed:
                wait = 0.0
        return wait

    async def _refresh_due(self, enabled: list[Target], now: datetime) -> None:
        """Mark the targets with a due delivery ready and schedule the next
        refresh at the earliest future due time, within the poll interval."""
        due_times = await self.store.due_times()
        refresh_in = self.poll_seconds
        for target in enabled:
            due = due_times.get(target.name)
            if due is None:
                continue
            if due <= now:
                self._ready.add(target.name)
            else:
                refresh_in = min(refresh_in, (due - now).total_seconds())
        self._refresh_at = time.monotonic() + refresh_in

    async def _claim(
        self, target: Target, free: int, now: datetime
    ) -> list[ClaimedDelivery]:
        claimed = await self.store.claim(
            target.name,
            free,
            self.owner,
            now,
            now + timedelta(seconds=self.lease_seconds),
        )
        bucket = self._buckets.get(target.name)
        if bucket is not None:
            bucket.take(len(claimed))
        for delivery in claimed:
            self._start_delivery(target, delivery)
        return claimed

    def _free_slots(self, target: Target) -> tuple[int, float]:
        """Return how many deliveries of `target` may start now and, when
        none may, the seconds until one may (0 when a running one must end).

        The limits are the target's concurrency, its pause after a 429 with
        Retry-After, and its `rate_limit_per_second`. They apply per worker,
        so each replica allows the full rate.
        """
        paused = self._paused_until.get(target.name, 0.0) - time.monotonic()
        if paused > 0:
            return 0, paused
        free = self.settings.delivery_concurrency_per_target - self._busy.get(
            target.name, 0
        )
        bucket = self._bucket(target)
        if bucket is None or free <= 0:
            return free, 0.0
        tokens = bucket.available()
        if tokens < 1:
            return 0, bucket.seconds_until_available()
        return min(free, tokens), 0.0

    def _bucket(self, target: Target) -> TokenBucket | None:
        rate = target.rate_limit_per_second
        bucket = self._buckets.get(target.name)
        if rate is None:
            self._buckets.pop(target.name, None)
            return None
        if bucket is None or bucket.rate != rate:
            bucket = TokenBucket(rate)
            self._buckets[target.name] = bucket
        return bucket

    def _pause_after(
        self, target: Target, status_code: int | None, wait: float | None
    ) -> None:
        """Hold every delivery of a target that returned 429 with Retry-After."""
        if status_code != 429 or wait is None or wait <= 0:
            return
        wait = min(wait, self.settings.delivery_max_backoff_seconds)
        until = time.monotonic() + wait
        self._paused_until[target.name] = max(
            self._paused_until.get(target.name, 0.0), until
        )

    def _start_delivery(self, target: Target, delivery: ClaimedDelivery) -> None:
        self._busy[target.name] = self._busy.get(target.name, 0) + 1
        task = asyncio.create_task(self._deliver_traced(target, delivery))
        self._in_flight[task] = delivery

        def finished(done: asyncio.Task[None]) -> None:
            self._in_flight.pop(done, None)
            self._busy[target.name] -= 1
            self._ready.add(target.name)
            self._wake.set()

        task.add_done_callback(finished)

    async def _deliver_traced(self, target: Target, delivery: ClaimedDelivery) -> None:
        """Send one attempt in a span that continues the Publish call's trace.

        The span names the target, never its URL, which may carry credentials.
        """
        with telemetry.span_from_context(
            delivery.trace_context,
            "deliver",
            kind=SpanKind.CLIENT,
            attributes={
                "target": target.name,
                "format": delivery.format,
                "attempt": delivery.attempts + 1,
                "delivery_id": delivery.id,
                "batch_id": delivery.batch_id,
            },
        ):
            await self._deliver(target, delivery)

    async def _deliver(self, target: Target, delivery: ClaimedDelivery) -> None:
        attempt = delivery.attempts + 1
        started_at = datetime.now(UTC)
        started = time.perf_counter()
        response: Response | None = None
        error: str | None = None
        try:
            response = await self._send(target, delivery)
        except TimeoutError:
            error = f"timed out after {self.settings.delivery_timeout_seconds:g} s"
        except aiohttp.ClientError as exc:
            error = describe_error(exc, target.url)
        except Exception as exc:
            logger.error(
                "unexpected error sending a delivery",
                exc_info=exc,
                extra={"target": target.name, "delivery_id": delivery.id},
            )
            error = f"internal error: {type(exc).__name__}"
        duration = time.perf_counter() - started
        self.metrics.latency.labels(target.name, delivery.format).observe(duration)

        now = datetime.now(UTC)
        status_code = response.status_code if response is not None else None
        retry_after = parse_retry_after(
            response.retry_after if response is not None else None, now
        )
        outcome = decide_outcome(
            self.settings,
            attempt=attempt - delivery.attempt_offset,
            status_code=status_code,
            error=error,
            retry_after=retry_after,
            now=now,
            jitter=self.jitter(),
        )
        self._pause_after(target, status_code, retry_after)
        result = AttemptResult(
            attempted_at=started_at,
            duration_seconds=duration,
            status_code=status_code,
            error=error if error is not None else outcome.error,
            response_body=redact(response.body, target)
            if response is not None
            else None,
        )
        self._count(target, delivery, outcome)
        _annotate_span(status_code, outcome)
        self._log_outcome(target, delivery, attempt, result, outcome)
        await self._store_outcome(delivery, result, outcome)

    async def _send(self, target: Target, delivery: ClaimedDelivery) -> Response:
        assert self._session is not None, "DeliveryWorker.start() was not called"
        headers = {
            **target.headers,
            "Content-Type": "application/json",
            "Idempotency-Key": delivery.idempotency_key,
        }
        async with self._session.post(
            target.url,
            data=delivery.body.encode("utf-8"),
            headers=headers,
            allow_redirects=False,
        ) as resp:
            body = await _read_prefix(resp, MAX_RESPONSE_BODY_BYTES)
            return Response(
                status_code=resp.status,
                retry_after=resp.headers.get("Retry-After"),
                body=storable(body.decode("utf-8", errors="replace")),
            )

    def _count(
        self, target: Target, delivery: ClaimedDelivery, outcome: Outcome
    ) -> None:
        labels = (target.name, delivery.format)
        if outcome.state == "succeeded":
            self.metrics.success.labels(*labels).inc()
            return
        self.metrics.errors.labels(*labels).inc()
        if outcome.state == "dead":
            self.metrics.dead.labels(*labels).inc()

    def _log_outcome(
        self,
        target: Target,
        delivery: ClaimedDelivery,
        attempt: int,
        result: AttemptResult,
        outcome: Outcome,
    ) -> None:
        extra = {
            "target": target.name,
            "delivery_id": delivery.id,
            "batch_id": delivery.batch_id,
            "attempt": attempt,
            "status_code": result.status_code,
            "duration_seconds": round(result.duration_seconds, 3),
        }
        if outcome.state == "succeeded":
            logger.info("delivery succeeded", extra=extra)
        elif outcome.state == "pending":
            logger.warning(
                "delivery attempt failed; retrying later",
                extra={
                    **extra,
                    "error": outcome.error,
                    "next_attempt_at": outcome.next_attempt_at.isoformat(),
                },
            )
        else:
            logger.error(
                "delivery dead-lettered", extra={**extra, "error": outcome.error}
            )

    async def _store_outcome(
        self, delivery: ClaimedDelivery, result: AttemptResult, outcome: Outcome
    ) -> None:
        """Store the outcome, retrying while the lease lasts.

        If the store stays unreachable the lease expires and the delivery is
        sent again, the one case where a receiver gets a repeated request.
        """
        deadline = (
            time.monotonic()
            + self.lease_seconds
            - self.settings.delivery_timeout_seconds
        )
        while True:
            try:
                stored = await self._outcomes.submit(
                    FinishedAttempt(delivery, result, outcome)
                )
            except Exception as exc:
                if time.monotonic() >= deadline or self._stopping:
                    logger.error(
                        "cannot store a delivery outcome; it will be sent again",
                        extra={
                            "target": delivery.target,
                            "delivery_id": delivery.id,
                            "error": str(exc),
                        },
                    )
                    return
                await asyncio.sleep(1.0)
                continue
            if not stored:
                logger.warning(
                    "delivery lease lost before its outcome was stored",
                    extra={"target": delivery.target, "delivery_id": delivery.id},
                )
            return

    async def _write_outcomes(self, finished: Sequence[FinishedAttempt]) -> list[bool]:
        return await self.store.finish_attempts(finished, self.owner, datetime.now(UTC))


def _may_be_one_row(exc: Exception) -> bool:
    """Return whether a failed write of several outcomes may be one row's fault.

    An unreachable database, or a statement that timed out or was cancelled
    (statement_timeout), fails every row alike, so writing each outcome alone
    would only repeat the wait once per outcome.
    """
    return not isinstance(
        exc,
        UnavailableError | TimeoutError | OSError | asyncpg.QueryCanceledError,
    )


def _annotate_span(status_code: int | None, outcome: Outcome) -> None:
    """Record an attempt's status code and outcome on the current span."""
    span = trace.get_current_span()
    telemetry.set_http_status(span, status_code, server=False)
    span.set_attribute("outcome", outcome.state)
    if outcome.state != "succeeded" and outcome.error:
        span.set_status(Status(StatusCode.ERROR, outcome.error))


async def _read_prefix(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await resp.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def redact(text: str, target: Target) -> str:
    """Replace the target's credentials in a response body with [redacted].

    A receiver may echo a request's routing key, header values or URL path
    and query; none of them may reach the stored log.
    """
    parts = urlsplit(target.url)
    secrets = [
        *target.headers.values(),
        target.routing_key or "",
        parts.path if len(parts.path) > 1 else "",
        parts.query,
        parts.password or "",
    ]
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        if len(secret) >= MIN_REDACTED_LENGTH:
            text = text.replace(secret, "[redacted]")
    return text


def describe_error(exc: BaseException, url: str) -> str:
    """Describe a request failure without the URL's path, query or userinfo."""
    text = f"{type(exc).__name__}: {exc}"
    parts = urlsplit(url)
    secrets = [url, parts.path if len(parts.path) > 1 else "", parts.query]
    if parts.username or parts.password:
        secrets.append(parts.netloc)
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "[redacted]")
    return storable(text[:MAX_ERROR_LENGTH])


def storable(text: str) -> str:
    """Replace NUL characters, which PostgreSQL text cannot hold.

    A response body with one would otherwise make its attempt unstorable, and
    the delivery would be sent again and again.
    """
    return text.replace("\x00", "\ufffd")
