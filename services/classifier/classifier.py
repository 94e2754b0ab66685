"""Classification of alerts: cache, model, time budget, fallbacks, floor.

For each alert `Classifier.classify` returns, in order of preference:

- a cached model verdict (source CACHE);
- a fresh model verdict (source MODEL) when it arrives within the budget;
- when the model failed or was too slow, the last model verdict stored for
  the alert (source LAST_KNOWN), from the history service's context or from
  the cache, with the failure's `fallback_reason`;
- the deterministic rules' verdict (source RULES) with a `fallback_reason`
  when no model is configured, the mode is transparent, or the model failed
  and no last verdict is known.

A model call that outlives the budget keeps running in the background and
caches its verdict for the next request. It ends, retries included, at the
later of the request's deadline and LLM_TIMEOUT_SECONDS after it started.
Concurrent requests with the same cache key share one model call, across
replicas too when a `Flight` coordinates them. A model verdict never lowers
an alert whose own severity is critical (see
`Settings.classifier_severity_floor`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import CollectorRegistry, Counter

from alerthistory.alert.v1 import alert_pb2
from alerthistory.classifier.v1 import classifier_pb2
from libs.config import Settings
from libs.errors import InvalidInputError
from services.classifier.cache import VerdictCache, cache_key
from services.classifier.context import AlertContext, ContextSource
from services.classifier.flight import Flight
from services.classifier.injection import has_instruction_like_text
from services.classifier.prompt import (
    NO_CONTEXT,
    Messages,
    PromptTemplate,
    Redaction,
    prompt_version,
)
from services.classifier.reply import (
    MAX_REASONING_CHARS,
    MAX_RECOMMENDATION_CHARS,
    MAX_RECOMMENDATIONS,
    ModelFailure,
    ModelVerdict,
    clean_text,
)
from services.classifier.rules import (
    RulesFunction,
    RuleVerdict,
    Severity,
    classify_by_rules,
)

logger = logging.getLogger(__name__)

CACHE_TYPE = "classification"
LAST_KNOWN_CACHE_TYPE = "last_known"
# Cache entries that keep a model verdict for LAST_KNOWN after its TTL ends.
LAST_KNOWN_KEY_PREFIX = "last:"
# Each pending model call keeps its alert payload in memory, so this bounds
# memory while the model is slow or down.
DEFAULT_MAX_PENDING = 1000

SEVERITY_VALUES = {
    Severity.CRITICAL: alert_pb2.SEVERITY_CRITICAL,
    Severity.WARNING: alert_pb2.SEVERITY_WARNING,
    Severity.INFO: alert_pb2.SEVERITY_INFO,
    Severity.NOISE: alert_pb2.SEVERITY_NOISE,
}
SOURCE_NAMES = {
    alert_pb2.VERDICT_SOURCE_MODEL: "model",
    alert_pb2.VERDICT_SOURCE_CACHE: "cache",
    alert_pb2.VERDICT_SOURCE_RULES: "rules",
    alert_pb2.VERDICT_SOURCE_LAST_KNOWN: "last_known",
}
# Rules steps that read the alert's own severity. Only these trigger the floor.
DECLARED_SEVERITY_RULES = frozenset({"severity_label", "severity_annotation"})
# Stored verdicts whose `model_severity` is a model's own severity.
MODEL_SOURCES = frozenset(
    {
        alert_pb2.VERDICT_SOURCE_MODEL,
        alert_pb2.VERDICT_SOURCE_CACHE,
        alert_pb2.VERDICT_SOURCE_LAST_KNOWN,
    }
)
MODEL_SEVERITIES = {value: severity for severity, value in SEVERITY_VALUES.items()}

# Failures that skip the model on purpose. They repeat for every alert while
# they last, so they are logged at DEBUG; the breaker logs its state changes
# and alert_history_llm_requests_total counts them.
QUIET_REASONS = frozenset({"circuit_open", "spend_limit"})

FLAG_SEVERITY_FLOOR = "severity_floor"
FLAG_INSTRUCTION_LIKE_TEXT = "instruction_like_text"


class ModelClient(Protocol):
    """A model that classifies one alert's messages or raises ModelFailure.

    `deadline` is on the event loop's clock: no request may start after it.
    """

    model: str

    async def classify(
        self, messages: Messages, deadline: float | None = None
    ) -> ModelVerdict: ...

    async def close(self) -> None: ...


class ClassifierMetrics:
    """Verdict and cache counters."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.classifications = Counter(
            "alert_history_classifications_total",
            "Verdicts returned, by source and final severity.",
            ["source", "severity"],
            registry=registry,
        )
        self.flags = Counter(
            "alert_history_classification_flags_total",
            "Verdicts carrying each flag, such as severity_floor.",
            ["flag"],
            registry=registry,
        )
        self.cache_hits = Counter(
            "alert_history_cache_hits_total",
            "Lookups that found a cached entry, by cache type.",
            ["type"],
            registry=registry,
        )
        self.cache_misses = Counter(
            "alert_history_cache_misses_total",
            "Lookups that found no cached entry, by cache type.",
            ["type"],
            registry=registry,
        )


@dataclass(frozen=True)
class _Inspection:
    """Rules verdict and text flags of one alert."""

    rules: RuleVerdict
    flags: tuple[str, ...]


@dataclass
class _Flight:
    """A model call shared by the requests for one cache key in this process.

    `context` is set once the alert's history has been read, so requests
    whose budget ran out can still serve its last verdict.
    """

    task: asyncio.Task[ModelVerdict | ModelFailure] | None = None
    context: AlertContext | None = None


class Classifier:
    """Classify alerts with a model when possible and rules otherwise.

    `max_pending` bounds the model calls queued or running at once, background
    calls included. Beyond it, alerts that need a new model call get the rules'
    verdict with reason `overloaded`. `context` supplies the alert's history
    for the prompt and its last verdict; `flight` shares model calls with
    other replicas.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: ClassifierMetrics,
        cache: VerdictCache,
        model: ModelClient | None,
        *,
        rules: RulesFunction = classify_by_rules,
        max_pending: int = DEFAULT_MAX_PENDING,
        template: PromptTemplate | None = None,
        redaction: Redaction | None = None,
        context: ContextSource | None = None,
        flight: Flight | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._cache = cache
        self._model = model
        self._rules = rules
        self._max_pending = max_pending
        self._template = template or PromptTemplate()
        self._redaction = redaction or Redaction.from_settings(settings)
        self._prompt_version = prompt_version(self._template, self._redaction)
        self._context = context
        self._flight = flight
        self._model_slots = asyncio.Semaphore(settings.classifier_concurrency)
        self._inflight: dict[str, _Flight] = {}

    @property
    def pending_model_calls(self) -> int:
        return len(self._inflight)

    async def classify(
        self,
        alert: alert_pb2.Alert,
        mode: int = classifier_pb2.ENRICHMENT_MODE_UNSPECIFIED,
        budget_seconds: float | None = None,
    ) -> alert_pb2.Classification:
        """Return a verdict on `alert`, waiting at most `budget_seconds` for a model.

        Raises InvalidInputError for an alert with no labels. Any other error,
        model failures included, gives the rules' verdict with a reason code.
        """
        validate_alert(alert)
        deadline = self._deadline(budget_seconds)
        return await self._classify_or_fall_back(alert, mode, deadline)

    async def classify_batch(
        self,
        alerts: Sequence[alert_pb2.Alert],
        mode: int = classifier_pb2.ENRICHMENT_MODE_UNSPECIFIED,
        budget_seconds: float | None = None,
    ) -> list[alert_pb2.Classification]:
        """Return one verdict per alert, in order, all within one shared budget.

        Raises InvalidInputError for an empty batch, one larger than
        `classifier_max_batch`, or an alert with no labels. An unexpected
        error on one alert gives that alert the rules' verdict with reason
        `internal_error` and leaves the others alone.
        """
        validate_batch(alerts, self._settings.classifier_max_batch)
        deadline = self._deadline(budget_seconds)
        limiter = asyncio.Semaphore(self._settings.classifier_concurrency)

        async def classify_one(alert: alert_pb2.Alert) -> alert_pb2.Classification:
            async with limiter:
                return await self._classify_or_fall_back(alert, mode, deadline)

        return list(await asyncio.gather(*(classify_one(a) for a in alerts)))

    async def wait_for_pending(self) -> None:
        """Wait until every background model call has finished."""
        while self._inflight:
            await asyncio.gather(*self._pending_tasks(), return_exceptions=True)

    async def close(self) -> None:
        """Cancel background calls; release the model, the cache and the context."""
        tasks = self._pending_tasks()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()
        if self._model is not None:
            await self._model.close()
        await self._cache.close()
        if self._context is not None:
            await self._context.close()

    def _pending_tasks(self) -> list[asyncio.Task[ModelVerdict | ModelFailure]]:
        return [f.task for f in self._inflight.values() if f.task is not None]

    def _deadline(self, budget_seconds: float | None) -> float:
        budget = budget_seconds
        if budget is None:
            budget = self._settings.pipeline_budget_seconds
        return asyncio.get_running_loop().time() + max(0.0, budget)

    async def _classify_or_fall_back(
        self, alert: alert_pb2.Alert, mode: int, deadline: float
    ) -> alert_pb2.Classification:
        started = time.perf_counter()
        try:
            return await self._classify(alert, mode, deadline)
        except Exception as exc:
            logger.error(
                "classification failed, using the rules",
                extra={"fingerprint": alert.fingerprint, "error": repr(exc)},
            )
            inspection = self._inspect(alert)
            failure = ModelFailure("internal_error", "classification failed")
            return self._record(_from_rules(inspection, failure, started), alert)

    async def _classify(
        self, alert: alert_pb2.Alert, mode: int, deadline: float
    ) -> alert_pb2.Classification:
        started = time.perf_counter()
        inspection = self._inspect(alert)

        if mode == classifier_pb2.ENRICHMENT_MODE_TRANSPARENT:
            failure = ModelFailure("transparent_mode", "enrichment mode is transparent")
            return self._record(_from_rules(inspection, failure, started), alert)
        if self._model is None:
            failure = ModelFailure("no_model", "no model is configured")
            return self._record(_from_rules(inspection, failure, started), alert)

        key = cache_key(
            alert.labels, alert.annotations, self._model.model, self._prompt_version
        )
        cached = await self._cache_get(key, CACHE_TYPE)
        if cached is not None:
            source = alert_pb2.VERDICT_SOURCE_CACHE
            result = self._from_model(inspection, cached, started, source)
            return self._record(result, alert)

        outcome, flight = await self._ask_model(key, alert, deadline)
        if isinstance(outcome, ModelVerdict):
            source = alert_pb2.VERDICT_SOURCE_MODEL
            result = self._from_model(inspection, outcome, started, source)
            return self._record(result, alert)

        last = await self._last_known(key, flight)
        if last is None:
            return self._record(_from_rules(inspection, outcome, started), alert)
        source = alert_pb2.VERDICT_SOURCE_LAST_KNOWN
        result = self._from_model(inspection, last, started, source, outcome)
        return self._record(result, alert)

    def _inspect(self, alert: alert_pb2.Alert) -> _Inspection:
        flags: tuple[str, ...] = ()
        if has_instruction_like_text(alert.labels, alert.annotations):
            flags = (FLAG_INSTRUCTION_LIKE_TEXT,)
        verdict = self._rules(
            alert.labels, alert.annotations, generator_url=alert.generator_url
        )
        return _Inspection(verdict, flags)

    async def _cache_get(self, key: str, cache_type: str) -> ModelVerdict | None:
        try:
            cached = await self._cache.get(key)
        except Exception as exc:
            logger.warning("cache lookup failed", extra={"error": repr(exc)})
            cached = None
        counter = self._metrics.cache_hits if cached else self._metrics.cache_misses
        counter.labels(cache_type).inc()
        return cached

    async def _ask_model(
        self, key: str, alert: alert_pb2.Alert, deadline: float
    ) -> tuple[ModelVerdict | ModelFailure, _Flight | None]:
        flight = self._inflight.get(key)
        if flight is None:
            if len(self._inflight) >= self._max_pending:
                failure = ModelFailure("overloaded", "too many model calls pending")
                return failure, None
            flight = _Flight()
            task = asyncio.create_task(self._call_model(key, alert, flight, deadline))
            flight.task = task
            self._inflight[key] = flight
            task.add_done_callback(lambda done: self._forget(key, flight))

        assert flight.task is not None
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            outcome = await asyncio.wait_for(
                asyncio.shield(flight.task), max(0.0, remaining)
            )
        except TimeoutError:
            logger.info(
                "model missed the budget, using a fallback",
                extra={"fingerprint": alert.fingerprint},
            )
            outcome = ModelFailure("timeout", "model did not answer within the budget")
        return outcome, flight

    def _forget(self, key: str, flight: _Flight) -> None:
        if self._inflight.get(key) is flight:
            del self._inflight[key]

    async def _call_model(
        self, key: str, alert: alert_pb2.Alert, flight: _Flight, deadline: float
    ) -> ModelVerdict | ModelFailure:
        """Read the alert's history, then ask the model, once across peers.

        The call may outlive the request's deadline to cache its verdict,
        until LLM_TIMEOUT_SECONDS after it started.
        """
        loop = asyncio.get_running_loop()
        call_deadline = max(deadline, loop.time() + self._settings.llm_timeout_seconds)
        flight.context = await self._read_context(alert, deadline)
        messages = self._messages(alert, flight.context)

        async def call() -> ModelVerdict:
            assert self._model is not None
            async with self._model_slots:
                verdict = await self._model.classify(messages, call_deadline)
            await self._store(key, verdict)
            return verdict

        try:
            if self._flight is None:
                return await call()
            return await self._flight.run(key, call, call_deadline)
        except ModelFailure as failure:
            level = (
                logging.DEBUG if failure.reason in QUIET_REASONS else logging.WARNING
            )
            logger.log(
                level,
                "model gave no verdict, using a fallback",
                extra={"fingerprint": alert.fingerprint, "error": failure.reason},
            )
            return failure
        except Exception as exc:
            logger.error(
                "model call raised an unexpected error, using a fallback",
                extra={"fingerprint": alert.fingerprint, "error": repr(exc)},
            )
            return ModelFailure("internal_error", "model call failed")

    async def _read_context(
        self, alert: alert_pb2.Alert, deadline: float
    ) -> AlertContext | None:
        if self._context is None:
            return None
        remaining = deadline - asyncio.get_running_loop().time()
        wait = min(self._settings.classifier_context_timeout_seconds, remaining)
        try:
            return await self._context.get(alert.fingerprint, wait)
        except Exception as exc:
            logger.warning(
                "alert history lookup failed",
                extra={"fingerprint": alert.fingerprint, "error": repr(exc)},
            )
            return None

    def _messages(
        self, alert: alert_pb2.Alert, context: AlertContext | None
    ) -> Messages:
        payload = self._redaction.payload(alert.labels, alert.annotations)
        history = NO_CONTEXT if context is None else context.prompt_data()
        return self._template.messages(payload, history)

    async def _store(self, key: str, verdict: ModelVerdict) -> None:
        entries = (
            (key, self._settings.classification_cache_ttl_seconds),
            (
                LAST_KNOWN_KEY_PREFIX + key,
                self._settings.classifier_last_known_max_age_seconds,
            ),
        )
        for entry_key, ttl in entries:
            try:
                await self._cache.set(entry_key, verdict, ttl)
            except Exception as exc:
                logger.warning("cache store failed", extra={"error": repr(exc)})

    async def _last_known(
        self, key: str, flight: _Flight | None
    ) -> ModelVerdict | None:
        """Return the alert's last model verdict, if one is recent enough.

        The history service's latest classification of the fingerprint comes
        first, then the cache's copy of the last verdict for this cache key.
        """
        max_age = self._settings.classifier_last_known_max_age_seconds
        if max_age <= 0:
            return None
        context = flight.context if flight is not None else None
        if context is not None and context.last_classification is not None:
            stored = _stored_verdict(context.last_classification, max_age)
            if stored is not None:
                self._metrics.cache_hits.labels(LAST_KNOWN_CACHE_TYPE).inc()
                return stored
        return await self._cache_get(LAST_KNOWN_KEY_PREFIX + key, LAST_KNOWN_CACHE_TYPE)

    def _from_model(
        self,
        inspection: _Inspection,
        verdict: ModelVerdict,
        started: float,
        source: alert_pb2.VerdictSource,
        failure: ModelFailure | None = None,
    ) -> alert_pb2.Classification:
        """Build the classification from a model verdict, after the floor.

        Only the verdict's severity, confidence, reasoning, recommendations
        and model name are used. With a `failure`, the verdict is a stored
        one and the failure's reason and tokens are kept.
        """
        severity = verdict.severity
        confidence = verdict.confidence
        reasoning = verdict.reasoning
        flags = list(inspection.flags)
        if self._floor_applies(inspection.rules, verdict.severity):
            severity = Severity.CRITICAL
            confidence = inspection.rules.confidence
            reasoning = (
                f"The model classified it as {verdict.severity.value}, but the alert's "
                f"own severity is critical, so the verdict stays critical. "
                f"Model reasoning: {verdict.reasoning}"
            )
            flags.append(FLAG_SEVERITY_FLOOR)

        tokens = verdict.tokens if source == alert_pb2.VERDICT_SOURCE_MODEL else 0
        return alert_pb2.Classification(
            severity=SEVERITY_VALUES[severity],
            confidence=confidence,
            reasoning=reasoning,
            recommendations=list(verdict.recommendations),
            processing_time=_elapsed(started),
            source=source,
            model=verdict.model,
            model_severity=SEVERITY_VALUES[verdict.severity],
            flags=flags,
            classified_at=_now(),
            fallback_reason=failure.reason if failure is not None else "",
            refusal=failure.refusal if failure is not None else "",
            tokens=failure.tokens if failure is not None else tokens,
        )

    def _floor_applies(self, rules: RuleVerdict, model_severity: Severity) -> bool:
        return (
            self._settings.classifier_severity_floor
            and rules.rule in DECLARED_SEVERITY_RULES
            and rules.severity is Severity.CRITICAL
            and model_severity is not Severity.CRITICAL
        )

    def _record(
        self, result: alert_pb2.Classification, alert: alert_pb2.Alert
    ) -> alert_pb2.Classification:
        self._metrics.classifications.labels(
            SOURCE_NAMES.get(result.source, "unspecified"),
            alert_pb2.Severity.Name(result.severity).removeprefix("SEVERITY_").lower(),
        ).inc()
        for flag in result.flags:
            self._metrics.flags.labels(flag).inc()
        if FLAG_INSTRUCTION_LIKE_TEXT in result.flags:
            logger.warning(
                "alert contains instruction-like text",
                extra={"fingerprint": alert.fingerprint},
            )
        return result


def validate_alert(alert: alert_pb2.Alert, where: str = "alert") -> None:
    """Raise InvalidInputError unless the alert has at least one label."""
    if not alert.labels:
        raise InvalidInputError(
            f"{where} has no labels: send the alert's Alertmanager labels, "
            "at least alertname"
        )


def validate_batch(alerts: Sequence[alert_pb2.Alert], max_batch: int) -> None:
    """Raise InvalidInputError for an empty or oversized batch or a bad alert."""
    if not alerts:
        raise InvalidInputError("alerts is empty: send at least one alert")
    if len(alerts) > max_batch:
        raise InvalidInputError(
            f"batch has {len(alerts)} alerts, more than the maximum of "
            f"{max_batch}: split it into smaller batches"
        )
    for index, alert in enumerate(alerts):
        validate_alert(alert, f"alerts[{index}]")


def _from_rules(
    inspection: _Inspection, failure: ModelFailure, started: float
) -> alert_pb2.Classification:
    rules = inspection.rules
    return alert_pb2.Classification(
        severity=SEVERITY_VALUES[rules.severity],
        confidence=rules.confidence,
        reasoning=rules.reasoning,
        processing_time=_elapsed(started),
        source=alert_pb2.VERDICT_SOURCE_RULES,
        fallback_reason=failure.reason,
        flags=list(inspection.flags),
        refusal=failure.refusal,
        classified_at=_now(),
        tokens=failure.tokens,
    )


def _stored_verdict(
    stored: alert_pb2.Classification, max_age_seconds: float
) -> ModelVerdict | None:
    """Return the model verdict inside a stored classification, if usable.

    Usable means it came from a model, carries the model's own severity and
    is at most `max_age_seconds` old. The severity floor is applied again by
    the caller, against the alert's current labels.
    """
    severity = MODEL_SEVERITIES.get(stored.model_severity)
    if stored.source not in MODEL_SOURCES or severity is None:
        return None
    if not stored.HasField("classified_at"):
        return None
    age = time.time() - stored.classified_at.ToNanoseconds() / 1e9
    if age > max_age_seconds:
        return None
    return ModelVerdict(
        severity=severity,
        confidence=min(1.0, max(0.0, stored.confidence)),
        reasoning=clean_text(stored.reasoning, MAX_REASONING_CHARS),
        recommendations=tuple(
            clean_text(item, MAX_RECOMMENDATION_CHARS)
            for item in stored.recommendations[:MAX_RECOMMENDATIONS]
        ),
        model=stored.model,
    )


def _elapsed(started: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(int((time.perf_counter() - started) * 1e9))
    return duration


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp
