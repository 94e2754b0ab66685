"""Classification of alerts: cache, model, time budget, rules fallback, floor.

For each alert `Classifier.classify` returns, in order of preference:

- a cached model verdict (source CACHE);
- a fresh model verdict (source MODEL) when it arrives within the budget;
- the deterministic rules' verdict (source RULES) with a `fallback_reason`
  when no model is configured, the mode is transparent, or the model failed
  or was too slow.

A model call that outlives the budget keeps running in the background and
caches its verdict for the next request. Concurrent requests with the same
cache key share one model call. A model verdict never lowers an alert whose
own severity is critical (see `Settings.classifier_severity_floor`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import CollectorRegistry, Counter

from alerthistory.alert.v1 import alert_pb2
from alerthistory.classifier.v1 import classifier_pb2
from libs.config import Settings
from libs.errors import InvalidInputError
from services.classifier.cache import VerdictCache, cache_key
from services.classifier.injection import has_instruction_like_text
from services.classifier.llm import ModelFailure, ModelVerdict, alert_payload
from services.classifier.rules import (
    RulesFunction,
    RuleVerdict,
    Severity,
    classify_by_rules,
)

logger = logging.getLogger(__name__)

CACHE_TYPE = "classification"
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

FLAG_SEVERITY_FLOOR = "severity_floor"
FLAG_INSTRUCTION_LIKE_TEXT = "instruction_like_text"


class ModelClient(Protocol):
    """A model that classifies one alert payload or raises ModelFailure."""

    model: str

    async def classify(self, alert: Mapping[str, Any]) -> ModelVerdict: ...

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


class Classifier:
    """Classify alerts with a model when possible and rules otherwise.

    `max_pending` bounds the model calls queued or running at once, background
    calls included. Beyond it, alerts that need a new model call get the rules'
    verdict with reason `overloaded`.
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
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._cache = cache
        self._model = model
        self._rules = rules
        self._max_pending = max_pending
        self._model_slots = asyncio.Semaphore(settings.classifier_concurrency)
        self._inflight: dict[str, asyncio.Task[ModelVerdict | ModelFailure]] = {}

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
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)

    async def close(self) -> None:
        """Cancel background model calls and release the model and the cache."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()
        if self._model is not None:
            await self._model.close()
        await self._cache.close()

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

        key = cache_key(alert.labels, alert.annotations, self._model.model)
        cached = await self._cache_get(key)
        if cached is not None:
            result = self._from_model(inspection, cached, started, from_cache=True)
            return self._record(result, alert)

        outcome = await self._ask_model(key, alert, deadline)
        if isinstance(outcome, ModelFailure):
            result = _from_rules(inspection, outcome, started)
        else:
            result = self._from_model(inspection, outcome, started, from_cache=False)
        return self._record(result, alert)

    def _inspect(self, alert: alert_pb2.Alert) -> _Inspection:
        flags: tuple[str, ...] = ()
        if has_instruction_like_text(alert.labels, alert.annotations):
            flags = (FLAG_INSTRUCTION_LIKE_TEXT,)
        return _Inspection(self._rules(alert.labels, alert.annotations), flags)

    async def _cache_get(self, key: str) -> ModelVerdict | None:
        try:
            cached = await self._cache.get(key)
        except Exception as exc:
            logger.warning("cache lookup failed", extra={"error": repr(exc)})
            cached = None
        counter = self._metrics.cache_hits if cached else self._metrics.cache_misses
        counter.labels(CACHE_TYPE).inc()
        return cached

    async def _ask_model(
        self, key: str, alert: alert_pb2.Alert, deadline: float
    ) -> ModelVerdict | ModelFailure:
        task = self._inflight.get(key)
        if task is None:
            if len(self._inflight) >= self._max_pending:
                return ModelFailure("overloaded", "too many model calls pending")
            payload = alert_payload(alert.labels, alert.annotations)
            task = asyncio.create_task(self._call_model(key, payload, alert))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))

        remaining = deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(asyncio.shield(task), max(0.0, remaining))
        except TimeoutError:
            logger.info(
                "model missed the budget, using the rules",
                extra={"fingerprint": alert.fingerprint},
            )
            return ModelFailure("timeout", "model did not answer within the budget")

    def _forget(self, key: str, task: asyncio.Task[Any]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]

    async def _call_model(
        self, key: str, payload: Mapping[str, Any], alert: alert_pb2.Alert
    ) -> ModelVerdict | ModelFailure:
        assert self._model is not None
        try:
            async with self._model_slots:
                verdict = await self._model.classify(payload)
        except ModelFailure as failure:
            logger.warning(
                "model gave no verdict, using the rules",
                extra={"fingerprint": alert.fingerprint, "error": failure.reason},
            )
            return failure
        except Exception as exc:
            logger.error(
                "model call raised an unexpected error, using the rules",
                extra={"fingerprint": alert.fingerprint, "error": repr(exc)},
            )
            return ModelFailure("internal_error", "model call failed")

        try:
            await self._cache.set(key, verdict)
        except Exception as exc:
            logger.warning("cache store failed", extra={"error": repr(exc)})
        return verdict

    def _from_model(
        self,
        inspection: _Inspection,
        verdict: ModelVerdict,
        started: float,
        *,
        from_cache: bool,
    ) -> alert_pb2.Classification:
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

        source = (
            alert_pb2.VERDICT_SOURCE_CACHE
            if from_cache
            else alert_pb2.VERDICT_SOURCE_MODEL
        )
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
    )


def _elapsed(started: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(int((time.perf_counter() - started) * 1e9))
    return duration


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp
