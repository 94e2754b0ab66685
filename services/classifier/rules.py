"""Deterministic severity rules, used when no model decides.

`classify_by_rules` tries these steps in order and the first match wins:

1. well-known heartbeat and inhibitor alerts (Watchdog, InfoInhibitor, ...)
   are noise whatever their labels say;
2. the `severity` label, including common non-standard values such as
   `page`, `ticket` or `p2`;
3. a `severity` annotation, for rule sets that put it there;
4. keyword patterns in the alertname and the summary (Down, CrashLoop, ...);
5. otherwise warning, with a low confidence.

Every step is a table, so extending the rules means adding a row. A learned
classifier can replace this module as long as it keeps the `RulesFunction`
signature.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    """The four classes a verdict assigns, as the model names them."""

    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"
    NOISE = "noise"


@dataclass(frozen=True)
class RuleVerdict:
    """A verdict of the rules and which step reached it."""

    severity: Severity
    confidence: float
    reasoning: str
    # The step that decided: noise_alertname, severity_label,
    # severity_annotation, name_pattern or default.
    rule: str


RulesFunction = Callable[[Mapping[str, str], Mapping[str, str]], RuleVerdict]

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

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NON_WORD = re.compile(r"[^0-9A-Za-z]+")


def classify_by_rules(
    labels: Mapping[str, str], annotations: Mapping[str, str]
) -> RuleVerdict:
    """Classify an alert from its labels and annotations alone."""
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

    return _classify_by_name(alertname, annotations.get("summary", ""))


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


def split_words(name: str) -> str:
    """Split a CamelCase or snake_case name into lowercase words."""
    spaced = _CAMEL_BOUNDARY.sub(" ", name)
    return _NON_WORD.sub(" ", spaced).strip().lower()


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
