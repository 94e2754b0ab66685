"""Deterministic severity rules, used when no model server decides.

`classify_by_rules` tries these steps in order and the first match wins:

1. well-known heartbeat and inhibitor alerts (Watchdog, InfoInhibitor, ...)
   are noise whatever their labels say;
2. the `severity` label, including common non-standard values such as
   `page`, `ticket` or `p2`;
3. a `severity` annotation, for rule sets that put it there;
4. the linear text model of `learned.py`, trained on public alerting rules,
   which reads the alertname, the other labels, the annotations and the
   rule's expression in the generator URL;
5. keyword patterns in the alertname and the summary (Down, CrashLoop, ...),
   only when the model file cannot be read or no feature of the alert
   supports the model's guess;
6. otherwise warning, with a low confidence.

`classify_by_keywords` is the same with step 4 left out. Every step but the
model is a table, so extending the rules means adding a row.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from services.classifier.learned import LinearModel, shipped_model, split_words
from services.classifier.severity import Severity

__all__ = [
    "RuleVerdict",
    "RulesFunction",
    "Severity",
    "classify_by_keywords",
    "classify_by_rules",
    "declared_severity",
    "is_noise_alertname",
    "split_words",
]


@dataclass(frozen=True)
class RuleVerdict:
    """A verdict of the rules and which step reached it."""

    severity: Severity
    confidence: float
    reasoning: str
    # The step that decided: noise_alertname, severity_label,
    # severity_annotation, learned_model, name_pattern or default.
    rule: str


class RulesFunction(Protocol):
    """A function that classifies an alert without a model server."""

    def __call__(
        self,
        labels: Mapping[str, str],
        annotations: Mapping[str, str],
        *,
        generator_url: str = "",
    ) -> RuleVerdict: ...


# Values of a `severity` label or annotation, lowercased and stripped.
# `none` is handled separately because its meaning depends on the alert.
SEVERITY_VALUES: dict[str, Severity] = {
    "critical": Severity.CRITICAL,
    "crit": Severity.CRITICAL,
    "error": Severity.CRITICAL,
    "high": Severity.CRITICAL,
    "page": Severity.CRITICAL,
    "p1": Severity.CRITICAL,
    "warning": Severity.WARNING,
    "warn": Severity.WARNING,
    "notify": Severity.WARNING,
    "ticket": Severity.WARNING,
    "medium": Severity.WARNING,
    "p2": Severity.WARNING,
    "p3": Severity.WARNING,
    "info": Severity.INFO,
    "informational": Severity.INFO,
    "low": Severity.INFO,
    "task": Severity.INFO,
    "p4": Severity.INFO,
    "p5": Severity.INFO,
}
NONE_VALUE = "none"

# Alerts that fire on purpose to prove the pipeline works or to inhibit other
# alerts. Matched against the whole alertname, case-insensitively.
NOISE_ALERTNAMES: tuple[re.Pattern[str], ...] = tuple(
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        r"watchdog",
        r"dead_?mans_?s(?:witch|nitch)",
        r"heartbeat",
        r"always_?firing",
        r"\w*inhibitor",
        r"inhibition\w*",
    )
)


@dataclass(frozen=True)
class NamePattern:
    """A keyword pattern matched against the words of the alertname or summary."""

    pattern: re.Pattern[str]
    severity: Severity
    meaning: str


def _words(pattern: str) -> re.Pattern[str]:
    return re.compile(rf"\b(?:{pattern})", re.IGNORECASE)


# Tried in order; the first match decides. The text they run on is the
# alertname split into lowercase words ("KubePodCrashLooping" becomes
# "kube pod crash looping") followed by the summary.
NAME_PATTERNS: tuple[NamePattern, ...] = (
    NamePattern(_words(r"critical\b"), Severity.CRITICAL, "the alert is critical"),
    NamePattern(_words(r"warning\b"), Severity.WARNING, "the alert is a warning"),
    NamePattern(
        _words(r"down\b|outage|unavailable|unreachable"),
        Severity.CRITICAL,
        "a component is down or unreachable",
    ),
    NamePattern(
        _words(r"crash ?loop|crashing|panic"),
        Severity.CRITICAL,
        "a process is crashing",
    ),
    NamePattern(
        _words(r"out ?of ?memory|oom ?kill|oom\b"),
        Severity.CRITICAL,
        "a process ran out of memory",
    ),
    NamePattern(
        _words(
            r"disk ?full|out ?of ?(?:disk|space)|no ?space|"
            r"(?:disk|volume|filesystem) (?:is )?full"
        ),
        Severity.CRITICAL,
        "storage is full",
    ),
    NamePattern(
        _words(
            r"fail(?:ed|ing|ure|s)?\b|dead\b|lost\b|split ?brain|"
            r"data ?loss|corrupt|missing|absent|unhealthy|"
            r"not ?running|time ?out|timed ?out"
        ),
        Severity.CRITICAL,
        "something failed",
    ),
    NamePattern(
        _words(r"expir|will ?fill|filling ?up|almost|predict|near(?:ly)?\b"),
        Severity.WARNING,
        "a limit will be reached soon",
    ),
    NamePattern(
        _words(
            r"high\b|slow|latency|lag\b|lagging|throttl|degraded|"
            r"errors?\b|restart|pending|backlog|saturat|too ?many|"
            r"mismatch|not ?ready|flapping"
        ),
        Severity.WARNING,
        "a component is degraded",
    ),
    NamePattern(
        _words(
            r"under ?utili[sz]ed|low ?usage|info\b|scaled|"
            r"relocating|initiali[sz]ing"
        ),
        Severity.INFO,
        "a condition worth knowing about",
    ),
)

LABEL_CONFIDENCE = 0.9
NOISE_NAME_CONFIDENCE = 0.95
NONE_LABEL_CONFIDENCE = 0.6
ANNOTATION_CONFIDENCE = 0.8
PATTERN_CONFIDENCE = 0.6
DEFAULT_CONFIDENCE = 0.3


def classify_by_rules(
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    *,
    generator_url: str = "",
    model: LinearModel | None = None,
) -> RuleVerdict:
    """Classify an alert from its labels, annotations and generator URL.

    The model reads the rule's expression from `generator_url` when it
    carries one. `model` replaces the shipped model, for evaluating one
    trained on part of a corpus.
    """
    declared = _declared_verdict(labels, annotations)
    if declared is not None:
        return declared

    model = model or shipped_model()
    if model is not None:
        verdict = _classify_by_model(labels, annotations, generator_url, model)
        if verdict is not None:
            return verdict
    return _classify_by_name(
        labels.get("alertname", ""), annotations.get("summary", "")
    )


def classify_by_keywords(
    labels: Mapping[str, str], annotations: Mapping[str, str]
) -> RuleVerdict:
    """Classify an alert with the rules' tables only, never the learned model."""
    declared = _declared_verdict(labels, annotations)
    if declared is not None:
        return declared
    return _classify_by_name(
        labels.get("alertname", ""), annotations.get("summary", "")
    )


def _declared_verdict(
    labels: Mapping[str, str], annotations: Mapping[str, str]
) -> RuleVerdict | None:
    alertname = labels.get("alertname", "").strip()
    if is_noise_alertname(alertname):
        return RuleVerdict(
            Severity.NOISE,
            NOISE_NAME_CONFIDENCE,
            f"{alertname} is a heartbeat or inhibition alert that fires on purpose.",
            "noise_alertname",
        )

    label_value = _normalize(labels.get("severity", ""))
    if label_value == NONE_VALUE:
        return RuleVerdict(
            Severity.INFO,
            NONE_LABEL_CONFIDENCE,
            'The severity label is "none", which rule sets use for alerts that '
            "should not notify, so the alert is informational.",
            "severity_label",
        )
    if label_value in SEVERITY_VALUES:
        return RuleVerdict(
            SEVERITY_VALUES[label_value],
            LABEL_CONFIDENCE,
            f'The alert\'s severity label is "{label_value}".',
            "severity_label",
        )

    annotation_value = _normalize(annotations.get("severity", ""))
    if annotation_value in SEVERITY_VALUES:
        return RuleVerdict(
            SEVERITY_VALUES[annotation_value],
            ANNOTATION_CONFIDENCE,
            "The alert has no usable severity label and its severity "
            f'annotation is "{annotation_value}".',
            "severity_annotation",
        )
    return None


def declared_severity(
    labels: Mapping[str, str], annotations: Mapping[str, str]
) -> Severity | None:
    """Return the severity the alert states about itself, if any.

    The `severity` label wins; the annotation counts only when the label is
    missing or unrecognised. `none` and unknown values return None.
    """
    for value in (labels.get("severity", ""), annotations.get("severity", "")):
        normalized = _normalize(value)
        if normalized in SEVERITY_VALUES:
            return SEVERITY_VALUES[normalized]
    return None


def is_noise_alertname(alertname: str) -> bool:
    """Return whether `alertname` is a well-known heartbeat or inhibitor alert."""
    return any(pattern.fullmatch(alertname) for pattern in NOISE_ALERTNAMES)


def _classify_by_model(
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    generator_url: str,
    model: LinearModel,
) -> RuleVerdict | None:
    prediction = model.predict(labels, annotations, generator_url)
    if not prediction.top_features:
        return None
    return RuleVerdict(
        prediction.severity,
        round(prediction.probability, 3),
        "The alert has no severity label, and a linear model learned from "
        f"public alerting rules rates it {prediction.severity.value} with "
        f"probability {prediction.probability:.2f}, mostly because of "
        f"{_join(prediction.top_features)}.",
        "learned_model",
    )


def _join(items: tuple[str, ...]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _classify_by_name(alertname: str, summary: str) -> RuleVerdict:
    text = f"{split_words(alertname)} {summary}"
    for row in NAME_PATTERNS:
        if row.pattern.search(text):
            return RuleVerdict(
                row.severity,
                PATTERN_CONFIDENCE,
                f"The alert has no severity label and its name or summary "
                f"suggests {row.meaning}.",
                "name_pattern",
            )
    return RuleVerdict(
        Severity.WARNING,
        DEFAULT_CONFIDENCE,
        "The alert has no severity label and no known pattern in its name, "
        "so it is treated as a warning.",
        "default",
    )


def _normalize(value: str) -> str:
    return value.strip().lower()
