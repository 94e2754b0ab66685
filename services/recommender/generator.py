"""One generation: statistics in, stored recommendations out.

The statistics come from the history service's GetAlertStatistics, page by
page, so the recommender never reads history's tables. The current
configuration comes from Prometheus and Alertmanager when their URLs are
set, and is otherwise inferred from the statistics: repeat_interval from the
median time between two deliveries of one occurrence, the rest unknown.
Each flagged alert is sent to the model, at most
RECOMMENDER_MAX_MODEL_REQUESTS per generation and four at a time. Without a
model, past that budget, or when its reply is unusable, the deterministic
rules write the recommendation.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as redis
from google.protobuf import json_format

from alerthistory.history.v1 import history_pb2, history_pb2_grpc
from alerthistory.recommender.v1 import recommender_pb2
from libs.alerts import datetime_to_timestamp
from libs.errors import InvalidInputError
from libs.locks import try_lock
from services.classifier.reply import ModelFailure
from services.recommender import detect
from services.recommender.durations import format_duration, round_up
from services.recommender.model import RecommendationModel
from services.recommender.snippets import build_snippet
from services.recommender.sources import (
    ConfigSources,
    Route,
    RuleConfig,
    Snapshot,
    pick_rule,
)
from services.recommender.store import Proposal, RecommendationStore

logger = logging.getLogger(__name__)

STATISTICS_PAGE = 1000
STATISTICS_DEADLINE = 30.0
MODEL_CONCURRENCY = 4
INFERRED = recommender_pb2.CONFIG_SOURCE_INFERRED
PROMETHEUS = recommender_pb2.CONFIG_SOURCE_PROMETHEUS
ALERTMANAGER = recommender_pb2.CONFIG_SOURCE_ALERTMANAGER
RULE_FIELDS = frozenset({"for_duration", "evaluation_interval", "threshold_adjustment"})
CONFIG_FIELDS = tuple(f.name for f in recommender_pb2.AlertConfig.DESCRIPTOR.fields)
# Seconds a generation may spend waiting for the model, within the 120 s
# deadline its callers set. Alerts not sent by then get the rules' change.
MODEL_PHASE_SECONDS = 60.0


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Settled:
    """The current configuration of one alert and where it was read."""

    config: recommender_pb2.AlertConfig
    rule_source: int
    route_source: int
    rule: RuleConfig | None
    route: Route | None
    notes: list[str]


def settle_config(stats: history_pb2.AlertStatistics, snapshot: Snapshot) -> Settled:
    """Return the current configuration of one alert from the snapshot or history."""
    config = recommender_pb2.AlertConfig()
    notes: list[str] = []
    rule = None
    rule_source = INFERRED
    if snapshot.rules is not None:
        rule = pick_rule(snapshot.rules, stats.alertname, stats.namespace)
        rule_source = PROMETHEUS
        if rule is None:
            notes.append("Prometheus has no alerting rule of this name.")
        else:
            config.for_duration = format_duration(rule.for_seconds)
            config.evaluation_interval = format_duration(rule.interval_seconds)
    else:
        notes.append(f"Rule configuration inferred: {snapshot.rule_note}.")

    route = None
    route_source = INFERRED
    if snapshot.routes is not None:
        labels = {"alertname": stats.alertname, "namespace": stats.namespace}
        route = snapshot.routes.match(labels)
        route_source = ALERTMANAGER
        for name, seconds in route.intervals.items():
            setattr(config, name, format_duration(seconds))
    else:
        notes.append(f"Route configuration inferred: {snapshot.route_note}.")
        if stats.redelivery_p50_seconds > 0:
            config.repeat_interval = format_duration(
                round_up(stats.redelivery_p50_seconds)
            )
    return Settled(config, rule_source, route_source, rule, route, notes)


def primary_source(recommended: recommender_pb2.AlertConfig, settled: Settled) -> int:
    """Return the source of the part of the configuration that changes most."""
    changed = {name for name in CONFIG_FIELDS if getattr(recommended, name)}
    if changed & RULE_FIELDS or not changed:
        return settled.rule_source
    return settled.route_source


def model_input(
    stats: history_pb2.AlertStatistics,
    finding: detect.Finding,
    settled: Settled,
    draft: detect.Draft,
    window_hours: float,
) -> dict[str, Any]:
    """Return the data sent to the model about one alert."""
    return {
        "alert": {"alertname": stats.alertname, "namespace": stats.namespace},
        "window_hours": window_hours,
        "statistics": json_format.MessageToDict(
            stats, preserving_proto_field_name=True
        ),
        "problems": detect.problem_names(finding.problems),
        "reasons": finding.reasons,
        "current_config": json_format.MessageToDict(
            settled.config, preserving_proto_field_name=True
        ),
        "config_notes": settled.notes,
        "deterministic_proposal": json_format.MessageToDict(
            draft.recommended, preserving_proto_field_name=True
        ),
    }


class Generator:
    """Runs generations, one at a time across replicas."""

    def __init__(
        self,
        *,
        history: history_pb2_grpc.HistoryServiceStub,
        store: RecommendationStore,
        sources: ConfigSources,
        model: RecommendationModel | None,
        thresholds: detect.Thresholds,
        window_hours: int,
        max_model_requests: int,
        database_url: str,
        redis_client: redis.Redis | None = None,
        lock_seconds: float = 600.0,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.history = history
        self.store = store
        self.sources = sources
        self.model = model
        self.thresholds = thresholds
        self.window_hours = window_hours
        self.max_model_requests = max_model_requests
        self.database_url = database_url
        self.redis_client = redis_client
        self.lock_seconds = lock_seconds
        self._clock = clock
        digest = hashlib.sha256(database_url.encode()).hexdigest()[:16]
        self.lock_name = f"recommender-generate-{digest}"

    async def generate(
        self, window_hours: int = 0
    ) -> recommender_pb2.GenerateRecommendationsResponse:
        """Generate and store recommendations unless another generation runs."""
        if window_hours < 0:
            raise InvalidInputError(
                f"window_hours must be 0 or more, not {window_hours}"
            )
        lock = try_lock(
            self.lock_name,
            database_url=self.database_url,
            redis_client=self.redis_client,
            ttl_seconds=self.lock_seconds,
        )
        async with lock as acquired:
            if not acquired:
                logger.info("generation skipped: another one is running")
                return recommender_pb2.GenerateRecommendationsResponse(
                    already_running=True
                )
            return await self._generate(window_hours or self.window_hours)

    async def _generate(
        self, window_hours: int
    ) -> recommender_pb2.GenerateRecommendationsResponse:
        until = self._clock()
        since = until - timedelta(hours=window_hours)
        statistics = await self._read_statistics(since, until)
        snapshot = await self.sources.snapshot()
        flagged = [
            (stats, finding)
            for stats in statistics
            if (finding := detect.find_problems(stats, self.thresholds, window_hours))
        ]
        proposals = await self._propose_all(
            flagged, snapshot, since, until, window_hours
        )
        counts = await self.store.save(proposals)

        response = recommender_pb2.GenerateRecommendationsResponse(
            analyzed=len(statistics),
            flagged=len(flagged),
            created=counts.created,
            updated=counts.updated,
            unchanged=counts.unchanged,
            from_model=sum(p.origin == recommender_pb2.ORIGIN_MODEL for p in proposals),
            from_rules=sum(p.origin == recommender_pb2.ORIGIN_RULES for p in proposals),
            rule_config_source=PROMETHEUS if snapshot.rules is not None else INFERRED,
            route_config_source=ALERTMANAGER
            if snapshot.routes is not None
            else INFERRED,
            window_since=datetime_to_timestamp(since),
            window_until=datetime_to_timestamp(until),
        )
        logger.info(
            "recommendations generated",
            extra={
                "analyzed": response.analyzed,
                "flagged": response.flagged,
                "recommendations_created": response.created,
                "recommendations_updated": response.updated,
            },
        )
        return response

    async def _read_statistics(
        self, since: datetime, until: datetime
    ) -> list[history_pb2.AlertStatistics]:
        statistics: list[history_pb2.AlertStatistics] = []
        cursor = ""
        while True:
            page = await self.history.GetAlertStatistics(
                history_pb2.GetAlertStatisticsRequest(
                    since=datetime_to_timestamp(since),
                    until=datetime_to_timestamp(until),
                    short_lived_seconds=self.thresholds.short_lived_seconds,
                    long_firing_seconds=int(self.thresholds.long_firing_seconds),
                    flap_min_occurrences=self.thresholds.flap_min_cycles,
                    limit=STATISTICS_PAGE,
                    cursor=cursor,
                ),
                timeout=STATISTICS_DEADLINE,
            )
            statistics.extend(page.statistics)
            cursor = page.next_cursor
            if not cursor:
                return statistics

    async def _propose_all(
        self,
        flagged: list[tuple[history_pb2.AlertStatistics, detect.Finding]],
        snapshot: Snapshot,
        since: datetime,
        until: datetime,
        window_hours: int,
    ) -> list[Proposal]:
        semaphore = asyncio.Semaphore(MODEL_CONCURRENCY)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MODEL_PHASE_SECONDS

        async def propose(index: int, stats: Any, finding: detect.Finding) -> Proposal:
            async with semaphore:
                budget = 0.0
                if self.model is not None and index < self.max_model_requests:
                    budget = deadline - loop.time()
                return await self._propose(
                    stats, finding, snapshot, (since, until), window_hours, budget
                )

        return list(
            await asyncio.gather(
                *(
                    propose(index, stats, finding)
                    for index, (stats, finding) in enumerate(flagged)
                )
            )
        )

    async def _propose(
        self,
        stats: history_pb2.AlertStatistics,
        finding: detect.Finding,
        snapshot: Snapshot,
        window: tuple[datetime, datetime],
        window_hours: int,
        model_seconds: float,
    ) -> Proposal:
        """Write the proposal of one alert, asking the model for `model_seconds`."""
        settled = settle_config(stats, snapshot)
        draft = detect.rules_recommendation(
            stats, finding, settled.config, self.thresholds
        )
        origin = recommender_pb2.ORIGIN_RULES
        model_name = ""
        fallback_reason = ""
        if self.model is not None and model_seconds <= 0:
            fallback_reason = "model_budget"
        if self.model is not None and model_seconds > 0:
            try:
                answer = await asyncio.wait_for(
                    self.model.recommend(
                        model_input(stats, finding, settled, draft, window_hours)
                    ),
                    model_seconds,
                )
            except TimeoutError:
                fallback_reason = "timeout"
                logger.warning(
                    "model recommendation timed out, using the rules",
                    extra={"alertname": stats.alertname, "error": "timeout"},
                )
            except ModelFailure as failure:
                fallback_reason = failure.reason
                logger.warning(
                    "model recommendation unusable, using the rules",
                    extra={"alertname": stats.alertname, "error": failure.reason},
                )
            else:
                draft = detect.Draft(
                    recommender_pb2.AlertConfig(
                        evaluation_interval=answer.evaluation_interval,
                        for_duration=answer.for_duration,
                        group_interval=answer.group_interval,
                        repeat_interval=answer.repeat_interval,
                        threshold_adjustment=answer.threshold_adjustment,
                    ),
                    answer.reasoning,
                    answer.impact_estimate,
                )
                origin = recommender_pb2.ORIGIN_MODEL
                model_name = answer.model

        reasons = [*finding.reasons, *settled.notes]
        return Proposal(
            alert_name=stats.alertname,
            namespace=stats.namespace,
            problems=finding.problems,
            reasons=reasons,
            current=settled.config,
            recommended=draft.recommended,
            confidence=finding.confidence,
            config_source=primary_source(draft.recommended, settled),
            rule_config_source=settled.rule_source,
            route_config_source=settled.route_source,
            origin=origin,
            model=model_name,
            fallback_reason=fallback_reason,
            reasoning=draft.reasoning,
            impact_estimate=draft.impact_estimate,
            snippet=build_snippet(
                stats.alertname,
                stats.namespace,
                draft.recommended,
                settled.rule,
                settled.route,
            ),
            statistics=stats,
            window_since=window[0],
            window_until=window[1],
        )
