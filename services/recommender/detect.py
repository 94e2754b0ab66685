"""Find noisy alerts in window statistics and write deterministic fixes.

`find_problems` flags one (alertname, namespace) pair when its statistics
cross a threshold (`Thresholds`, from the RECOMMENDER_* settings).
`rules_recommendation` turns the problems into a configuration change. A
longer `for` fixes flapping and short-lived alerts. A longer
repeat_interval fixes alerts that never resolve and heavy repeaters, which
also get a longer group_interval. A threshold change in words goes to
alerts that never resolve or are mostly noise. These changes serve when no
model is configured or the model's reply is unusable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from alerthistory.history.v1 import history_pb2
from alerthistory.recommender.v1 import recommender_pb2
from libs.config import Settings
from services.recommender.durations import format_duration, optional_seconds, round_up

FLAPPING = recommender_pb2.PROBLEM_FLAPPING
SHORT_LIVED = recommender_pb2.PROBLEM_SHORT_LIVED
NEVER_RESOLVES = recommender_pb2.PROBLEM_NEVER_RESOLVES
HEAVY_REPEATER = recommender_pb2.PROBLEM_HEAVY_REPEATER
MOSTLY_NOISE = recommender_pb2.PROBLEM_MOSTLY_NOISE

PROBLEM_NAMES: dict[int, str] = {
    FLAPPING: "flapping",
    SHORT_LIVED: "short_lived",
    NEVER_RESOLVES: "never_resolves",
    HEAVY_REPEATER: "heavy_repeater",
    MOSTLY_NOISE: "mostly_noise",
}

# Lower bounds of the recommended intervals, in seconds: Alertmanager's
# default repeat_interval (4h) and twice its default group_interval (5m).
MIN_REPEAT_INTERVAL = 4 * 3600.0
NEVER_RESOLVES_REPEAT_INTERVAL = 24 * 3600.0
MIN_GROUP_INTERVAL = 600.0


@dataclass(frozen=True)
class Thresholds:
    """When an alert's window statistics count as a problem."""

    flap_min_cycles: int = 6
    short_lived_seconds: int = 300
    short_lived_ratio: float = 0.5
    min_resolved: int = 3
    long_firing_seconds: float = 86400.0
    repeater_min_occurrences: int = 50
    repeater_min_deliveries: int = 200
    noise_ratio: float = 0.8
    min_classified: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(
            flap_min_cycles=settings.recommender_flap_min_cycles,
            short_lived_seconds=settings.recommender_short_lived_seconds,
            short_lived_ratio=settings.recommender_short_lived_ratio,
            min_resolved=settings.recommender_min_resolved,
            long_firing_seconds=settings.recommender_long_firing_hours * 3600,
            repeater_min_occurrences=settings.recommender_repeater_min_occurrences,
            repeater_min_deliveries=settings.recommender_repeater_min_deliveries,
            noise_ratio=settings.recommender_noise_ratio,
            min_classified=settings.recommender_min_classified,
        )


@dataclass
class Finding:
    """The problems of one alert, a sentence on each, and a confidence."""

    problems: list[int]
    reasons: list[str]
    confidence: float


def _scaled(value: float, threshold: float, limit: float) -> float:
    """Return a confidence from 0.6 at the threshold to 0.95 at `limit`."""
    if limit <= threshold:
        return 0.95
    share = min(1.0, max(0.0, (value - threshold) / (limit - threshold)))
    return round(0.6 + 0.35 * share, 3)


def _percent(share: float) -> str:
    return f"{share * 100:.0f}%"


def find_problems(
    stats: history_pb2.AlertStatistics, thresholds: Thresholds, window_hours: float
) -> Finding | None:
    """Return the problems of one alert's statistics, or None when it has none."""
    finding = Finding([], [], 0.0)
    window = format_duration(window_hours * 3600)
    _flapping(stats, thresholds, window, finding)
    _short_lived(stats, thresholds, finding)
    _never_resolves(stats, thresholds, finding)
    _heavy_repeater(stats, thresholds, window, finding)
    _mostly_noise(stats, thresholds, finding)
    return finding if finding.problems else None


def _add(finding: Finding, problem: int, reason: str, confidence: float) -> None:
    finding.problems.append(problem)
    finding.reasons.append(reason)
    finding.confidence = max(finding.confidence, confidence)


def _flapping(
    stats: history_pb2.AlertStatistics,
    thresholds: Thresholds,
    window: str,
    finding: Finding,
) -> None:
    if stats.flapping_fingerprints < 1:
        return
    _add(
        finding,
        FLAPPING,
        f"One fingerprint fired and resolved {stats.max_occurrences_per_fingerprint}"
        f" times in {window} (threshold {thresholds.flap_min_cycles});"
        f" {stats.flapping_fingerprints} fingerprint(s) flapped.",
        _scaled(
            stats.max_occurrences_per_fingerprint,
            thresholds.flap_min_cycles,
            thresholds.flap_min_cycles * 3,
        ),
    )


def _short_lived(
    stats: history_pb2.AlertStatistics, thresholds: Thresholds, finding: Finding
) -> None:
    if stats.resolved < thresholds.min_resolved:
        return
    share = stats.short_lived / stats.resolved
    if share < thresholds.short_lived_ratio:
        return
    _add(
        finding,
        SHORT_LIVED,
        f"{stats.short_lived} of {stats.resolved} resolved occurrences"
        f" ({_percent(share)}) lasted less than"
        f" {format_duration(thresholds.short_lived_seconds)}"
        f" (threshold {_percent(thresholds.short_lived_ratio)}); median duration"
        f" {format_duration(stats.duration_p50_seconds)}.",
        _scaled(share, thresholds.short_lived_ratio, 1.0),
    )


def _never_resolves(
    stats: history_pb2.AlertStatistics, thresholds: Thresholds, finding: Finding
) -> None:
    if stats.long_firing < 1:
        return
    _add(
        finding,
        NEVER_RESOLVES,
        f"{stats.long_firing} occurrence(s) have been firing for more than"
        f" {format_duration(thresholds.long_firing_seconds)} without resolving.",
        0.7,
    )


def _heavy_repeater(
    stats: history_pb2.AlertStatistics,
    thresholds: Thresholds,
    window: str,
    finding: Finding,
) -> None:
    by_occurrences = stats.occurrences >= thresholds.repeater_min_occurrences
    by_deliveries = stats.deliveries >= thresholds.repeater_min_deliveries
    if not (by_occurrences or by_deliveries):
        return
    confidence = max(
        _scaled(
            stats.occurrences,
            thresholds.repeater_min_occurrences,
            thresholds.repeater_min_occurrences * 4,
        ),
        _scaled(
            stats.deliveries,
            thresholds.repeater_min_deliveries,
            thresholds.repeater_min_deliveries * 4,
        ),
    )
    _add(
        finding,
        HEAVY_REPEATER,
        f"{stats.occurrences} occurrences and {stats.deliveries} notifications in"
        f" {window} (thresholds {thresholds.repeater_min_occurrences} occurrences"
        f" or {thresholds.repeater_min_deliveries} notifications).",
        confidence,
    )


def _mostly_noise(
    stats: history_pb2.AlertStatistics, thresholds: Thresholds, finding: Finding
) -> None:
    if stats.classified < thresholds.min_classified:
        return
    share = stats.noise / stats.classified
    if share < thresholds.noise_ratio:
        return
    _add(
        finding,
        MOSTLY_NOISE,
        f"{stats.noise} of {stats.classified} classified occurrences"
        f" ({_percent(share)}) were judged noise"
        f" (threshold {_percent(thresholds.noise_ratio)}).",
        _scaled(share, thresholds.noise_ratio, 1.0),
    )


@dataclass
class Draft:
    """A recommended configuration with its reasoning and estimated impact."""

    recommended: recommender_pb2.AlertConfig
    reasoning: str
    impact_estimate: str


def _raise_to(current: float | None, target: float) -> str:
    """Return the duration text of `target` when it is longer than `current`."""
    if current is not None and target <= current:
        return ""
    return format_duration(target)


def rules_recommendation(
    stats: history_pb2.AlertStatistics,
    finding: Finding,
    current: recommender_pb2.AlertConfig,
    thresholds: Thresholds,
) -> Draft:
    """Return the deterministic change for the problems of one alert."""
    problems = set(finding.problems)
    recommended = recommender_pb2.AlertConfig()
    reasoning: list[str] = []
    impact: list[str] = []

    if problems & {FLAPPING, SHORT_LIVED}:
        _lengthen_for(stats, current, thresholds, recommended, reasoning, impact)
        if FLAPPING in problems:
            reasoning.append(
                "On Prometheus 2.42 or later, `keep_firing_for` also stops brief"
                " recoveries from resolving and re-firing the alert."
            )
    if problems & {NEVER_RESOLVES, HEAVY_REPEATER}:
        _lengthen_intervals(stats, problems, current, recommended, reasoning, impact)
    adjustments = []
    if NEVER_RESOLVES in problems:
        adjustments.append(
            "It fires for days without resolving: alert on a change or a rate"
            " instead of a lasting state, or raise the threshold so that it fires"
            " only when someone has to act."
        )
    if MOSTLY_NOISE in problems:
        adjustments.append(
            "Most occurrences were judged noise: raise the threshold so that only"
            " actionable cases fire, or delete the rule if nobody acts on it."
        )
        impact.append(
            f"About {stats.noise} noise occurrences in the window would go away."
        )
    recommended.threshold_adjustment = " ".join(adjustments)
    return Draft(recommended, " ".join(reasoning), " ".join(impact))


def _lengthen_for(
    stats: history_pb2.AlertStatistics,
    current: recommender_pb2.AlertConfig,
    thresholds: Thresholds,
    recommended: recommender_pb2.AlertConfig,
    reasoning: list[str],
    impact: list[str],
) -> None:
    current_for = optional_seconds(current.for_duration)
    target = round_up(max(thresholds.short_lived_seconds, 2 * (current_for or 0)))
    recommended.for_duration = _raise_to(current_for, target)
    if not recommended.for_duration:
        return
    reasoning.append(
        f"A `for` of {recommended.for_duration} keeps conditions that clear"
        " sooner from firing at all."
    )
    impact.append(
        f"Up to {stats.short_lived} short-lived occurrences in the window would"
        " not have fired."
    )


def _lengthen_intervals(
    stats: history_pb2.AlertStatistics,
    problems: set[int],
    current: recommender_pb2.AlertConfig,
    recommended: recommender_pb2.AlertConfig,
    reasoning: list[str],
    impact: list[str],
) -> None:
    current_repeat = optional_seconds(current.repeat_interval)
    floor = (
        NEVER_RESOLVES_REPEAT_INTERVAL
        if NEVER_RESOLVES in problems
        else MIN_REPEAT_INTERVAL
    )
    repeat = round_up(max(floor, 2 * (current_repeat or 0)))
    recommended.repeat_interval = _raise_to(current_repeat, repeat)
    if HEAVY_REPEATER in problems:
        current_group = optional_seconds(current.group_interval)
        group = round_up(max(MIN_GROUP_INTERVAL, 2 * (current_group or 0)))
        recommended.group_interval = _raise_to(current_group, group)
    if recommended.repeat_interval or recommended.group_interval:
        reasoning.append(
            "Longer Alertmanager intervals send fewer repeat notifications for"
            " alerts that stay firing and batch more new ones per group."
        )
        impact.append(
            f"Fewer than the {stats.deliveries} notifications of the window would"
            " be sent."
        )


def problem_names(problems: Sequence[int]) -> list[str]:
    return [PROBLEM_NAMES[problem] for problem in problems]
