"""Read public alerting rules in the corpus's JSON-lines format.

Each line of `tests/fixtures/rules.jsonl` is one Prometheus alerting rule with
its authors' severity. `read_rules` turns each rule into the alert
Alertmanager would deliver for it, with the severity label removed:

- labels: `alertname` plus the rule's other static labels (`labels_other`);
- annotations: `summary`, `description`, `runbook_url` and the other
  annotations (`annotations_other`), with Go templates left unrendered;
- generator URL: the graph link Prometheus would set for the rule's `expr`
  (see `expression.generator_url`), or "" for a rule without one. It holds
  the rule file's text, while Prometheus prints the parsed expression, which
  can differ in spacing and number format. The model's expression features
  depend on neither.

The authors' severity becomes one of the classifier's classes (see
`truth_severity`). Rules without a severity are skipped.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.classifier.expression import generator_url
from services.classifier.rules import Severity, is_noise_alertname

DEFAULT_RULES_FILE = (
    Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "rules.jsonl"
)

# Values of `severity_raw` for rules whose `severity_class` is `other`.
OTHER_SEVERITIES: dict[str, Severity] = {
    "page": Severity.CRITICAL,
    "notify": Severity.WARNING,
    "ticket": Severity.WARNING,
    "task": Severity.INFO,
}
CLASS_SEVERITIES: dict[str, Severity] = {
    "critical": Severity.CRITICAL,
    "warning": Severity.WARNING,
    "info": Severity.INFO,
}
ANNOTATION_FIELDS = ("summary", "description", "runbook_url")


class CorpusError(ValueError):
    """A rules file that cannot be read as the corpus's JSON-lines format."""


@dataclass(frozen=True)
class CorpusRule:
    """One rule as a label-blind alert with its authors' severity."""

    alertname: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    severity: Severity
    # Repository and path of the rules file, such as
    # "samber/awesome-prometheus-alerts:_data/rules.yml".
    source: str
    # The alert's generatorURL, which carries the rule's expression.
    generator_url: str = ""


@dataclass(frozen=True)
class Corpus:
    """The rules of a file that have a severity, and how many had none."""

    rules: list[CorpusRule]
    skipped: int


def read_rules(path: Path = DEFAULT_RULES_FILE) -> list[CorpusRule]:
    """Read every rule with a severity from a JSON-lines file.

    Raises CorpusError, naming the line, for invalid JSON or a rule without
    `alertname`.
    """
    return read_corpus(path).rules


def read_corpus(path: Path = DEFAULT_RULES_FILE) -> Corpus:
    """Read a JSON-lines file like `read_rules`, also counting skipped rules."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"cannot read rules file {path}: {exc}") from exc
    return parse_rules(lines, str(path))


def parse_rules(lines: Iterable[str], where: str = "rules") -> Corpus:
    """Parse JSON lines into rules, skipping blank lines and rules without severity."""
    rules = []
    skipped = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{where}:{number}: invalid JSON: {exc}") from exc
        if not isinstance(row, dict) or not row.get("alertname"):
            raise CorpusError(f"{where}:{number}: the rule has no alertname")
        rule = rule_from_row(row)
        if rule is None:
            skipped += 1
        else:
            rules.append(rule)
    return Corpus(rules, skipped)


def rule_from_row(row: Mapping[str, Any]) -> CorpusRule | None:
    """Build the label-blind alert of one corpus row, or None without a severity."""
    severity = truth_severity(row)
    if severity is None:
        return None

    alertname = str(row["alertname"])
    labels = {"alertname": alertname}
    labels.update(_strings(row.get("labels_other")))
    labels.pop("severity", None)

    annotations = {name: str(row[name]) for name in ANNOTATION_FIELDS if row.get(name)}
    annotations.update(_strings(row.get("annotations_other")))
    annotations.pop("severity", None)

    source = str(row.get("source") or row.get("collection") or "")
    expression = row.get("expr")
    url = ""
    if isinstance(expression, str) and expression.strip():
        url = generator_url(expression)
    return CorpusRule(alertname, labels, annotations, severity, source, url)


def truth_severity(row: Mapping[str, Any]) -> Severity | None:
    """Map a rule's authored severity to a class, or None when it has none.

    `page` is critical, `notify` and `ticket` are warning, `task` is info.
    `none` is info, except for heartbeat and inhibitor alerts, which are noise.
    """
    severity_class = row.get("severity_class")
    if severity_class in CLASS_SEVERITIES:
        return CLASS_SEVERITIES[severity_class]
    if severity_class == "other":
        return OTHER_SEVERITIES.get(str(row.get("severity_raw", "")).lower())
    if severity_class == "none":
        if is_noise_alertname(str(row.get("alertname", ""))):
            return Severity.NOISE
        return Severity.INFO
    return None


def group_key(rule: CorpusRule, group_by: str = "alertname") -> str:
    """Return the cross-validation group of a rule: its alertname or its file."""
    if group_by == "alertname":
        return rule.alertname.lower()
    if group_by == "source":
        return rule.source
    raise ValueError(f"invalid group_by {group_by!r}: use alertname or source")


def grouped_folds(
    rules: Sequence[CorpusRule], folds: int, seed: int, group_by: str = "alertname"
) -> list[int]:
    """Assign each rule a fold so that no group spans two folds.

    Groups are shuffled with `seed`, then each goes to the fold with the
    fewest rules so far, so folds come out about the same size.
    """
    if folds < 2:
        raise ValueError(f"folds is {folds}: use at least 2")
    sizes = Counter(group_key(rule, group_by) for rule in rules)
    if len(sizes) < folds:
        raise ValueError(
            f"{len(sizes)} groups cannot fill {folds} folds: use fewer folds"
        )
    groups = sorted(sizes)
    random.Random(seed).shuffle(groups)

    loads = [0] * folds
    fold_of: dict[str, int] = {}
    for group in groups:
        fold = min(range(folds), key=lambda index: (loads[index], index))
        fold_of[group] = fold
        loads[fold] += sizes[group]
    return [fold_of[group_key(rule, group_by)] for rule in rules]


def _strings(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(key): str(item) for key, item in value.items() if item is not None}
