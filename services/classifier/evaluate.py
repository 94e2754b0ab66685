"""Measure how often the no-model classifier agrees with rule authors.

`alert-history evaluate` reads rules in the corpus's JSON-lines format and
builds each rule's alert without its severity label, with the generator URL
Prometheus would set for its expression (see `corpus.py`). It classifies
each alert and compares the verdict with the authors' severity. Three
classifiers run on the same rules:

- `shipped`: `classify_by_rules` with the learned model, cross-validated.
  The rules are split into folds so that rules sharing an alertname (or, with
  `group_by="source"`, a rules file) fall in the same fold. Each fold is
  classified by a model trained on the other folds only, the same way the
  shipped model is trained on all of them;
- `keywords`: `classify_by_keywords`, the hand-written name patterns;
- `warning`: always warning.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.classifier.corpus import (
    CorpusError,
    CorpusRule,
    grouped_folds,
    read_corpus,
)
from services.classifier.learned import LinearModel
from services.classifier.rules import (
    Severity,
    classify_by_keywords,
    classify_by_rules,
)
from services.classifier.training import rounded, train, training_examples

CLASSIFIERS = ("shipped", "keywords", "warning")
ORDER = (Severity.CRITICAL, Severity.WARNING, Severity.INFO, Severity.NOISE)


@dataclass
class Confusion:
    """Counts of (authors' severity, classifier's severity) pairs."""

    counts: Counter[tuple[Severity, Severity]] = field(default_factory=Counter)

    def add(self, truth: Severity, predicted: Severity) -> None:
        self.counts[(truth, predicted)] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def agreement(self) -> float:
        """Return the fraction of rules where the classifier matches the authors."""
        if not self.total:
            return 0.0
        agreed = sum(self.counts[(severity, severity)] for severity in ORDER)
        return agreed / self.total


@dataclass(frozen=True)
class Evaluation:
    """The confusion of each classifier, summed over repeated fold splits."""

    rules: int
    folds: int
    seeds: tuple[int, ...]
    group_by: str
    results: Mapping[str, Confusion]


def evaluate(
    rules: Sequence[CorpusRule],
    *,
    folds: int = 5,
    seed: int = 1,
    repeats: int = 1,
    group_by: str = "alertname",
) -> Evaluation:
    """Classify every rule with each classifier, once per fold split.

    Split `i` shuffles the groups with seed `seed + i`, so `repeats` > 1 gives
    repeated cross-validation, whose pooled agreement varies less with the
    seed. Raises ValueError for fewer than 2 folds, more folds than groups or
    `repeats` below 1.
    """
    if repeats < 1:
        raise ValueError(f"repeats is {repeats}: use at least 1")
    seeds = tuple(range(seed, seed + repeats))
    results = {name: Confusion() for name in CLASSIFIERS}
    for split_seed in seeds:
        _evaluate_split(rules, folds, split_seed, group_by, results)
    return Evaluation(len(rules), folds, seeds, group_by, results)


def _evaluate_split(
    rules: Sequence[CorpusRule],
    folds: int,
    seed: int,
    group_by: str,
    results: Mapping[str, Confusion],
) -> None:
    fold_of = grouped_folds(rules, folds, seed, group_by)
    models = [_fold_model(rules, fold_of, fold) for fold in range(folds)]
    for rule, fold in zip(rules, fold_of, strict=True):
        labels, annotations = rule.labels, rule.annotations
        verdicts = {
            "shipped": classify_by_rules(
                labels,
                annotations,
                generator_url=rule.generator_url,
                model=models[fold],
            ),
            "keywords": classify_by_keywords(labels, annotations),
        }
        for name, verdict in verdicts.items():
            results[name].add(rule.severity, verdict.severity)
        results["warning"].add(rule.severity, Severity.WARNING)


def _fold_model(
    rules: Sequence[CorpusRule], fold_of: Sequence[int], fold: int
) -> LinearModel:
    training = [
        rule for rule, other in zip(rules, fold_of, strict=True) if other != fold
    ]
    return rounded(train(training_examples(training)))


def format_confusion(confusion: Confusion) -> str:
    """Return a confusion matrix as text: authors in rows, classifier in columns."""
    width = 10
    header = "authors \\ verdict".ljust(18) + "".join(
        severity.value.rjust(width) for severity in ORDER
    )
    lines = [header + "total".rjust(width)]
    for truth in ORDER:
        row = [confusion.counts[(truth, predicted)] for predicted in ORDER]
        cells = "".join(str(count).rjust(width) for count in row)
        lines.append(truth.value.ljust(18) + cells + str(sum(row)).rjust(width))
    return "\n".join(lines)


def format_evaluation(evaluation: Evaluation, matrix_of: str, source: str) -> str:
    """Return the report `alert-history evaluate` prints."""
    lines = [
        f"rules: {evaluation.rules} with a severity, from {source}",
        f"folds: {evaluation.folds}, grouped by {evaluation.group_by}, "
        f"seed{'s' if len(evaluation.seeds) > 1 else ''} "
        f"{', '.join(str(seed) for seed in evaluation.seeds)}",
        "",
        "classifier   agreement with the rule authors (severity label removed)",
    ]
    notes = {
        "shipped": "learned model, cross-validated on unseen groups",
        "keywords": "hand-written name patterns",
        "warning": "always warning",
    }
    for name in CLASSIFIERS:
        agreement = evaluation.results[name].agreement * 100
        lines.append(f"{name.ljust(12)} {agreement:5.1f}%  {notes[name]}")
    title = f"confusion matrix of {matrix_of}"
    if len(evaluation.seeds) > 1:
        title += f", counts summed over {len(evaluation.seeds)} splits"
    lines += ["", f"{title}:", format_confusion(evaluation.results[matrix_of])]
    return "\n".join(lines)


def run(
    rules_file: Path,
    *,
    folds: int = 5,
    seed: int = 1,
    repeats: int = 1,
    classifier: str = "shipped",
    group_by: str = "alertname",
) -> int:
    """Run an evaluation and print its report; return the process exit code."""
    started = time.perf_counter()
    try:
        corpus = read_corpus(rules_file)
        evaluation = evaluate(
            corpus.rules,
            folds=folds,
            seed=seed,
            repeats=repeats,
            group_by=group_by,
        )
    except (CorpusError, ValueError) as exc:
        print(f"alert-history evaluate: {exc}", file=sys.stderr)
        return 2

    source = f"{rules_file} ({corpus.skipped} without a severity skipped)"
    print(format_evaluation(evaluation, classifier, source))
    print(f"\ntook {time.perf_counter() - started:.1f} s")
    return 0
