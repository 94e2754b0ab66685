"""A linear text model that guesses an alert's severity from its words.

The model is multinomial logistic regression over sparse features of what
an Alertmanager alert carries at run time, never its severity label:

- `name`: words of the alertname split at CamelCase and underscores, and
  pairs of adjacent words;
- `text`: words and adjacent word pairs of the `summary`, `description` and
  `message` annotations, with Go templates (`{{ $labels.x }}`, `{{ $value }}`),
  URLs and tokens containing digits removed, because a rendered alert fills
  them with instance names and measured values, not with severity;
- `labels`: the names and values of labels other than `alertname`, `severity`
  and the well-known series labels in `SERIES_LABELS`, and the names of
  annotations;
- `layout`: the names of those labels and of the annotations other than
  `summary` and `description`, as one set, alone and crossed with each
  alertname word. Rule sets have their own conventions, and this lets a word
  weigh differently in each;
- `expr`: from the rule's PromQL expression in the alert's generator URL
  (see `expression.py`), the words of metric names split at `_` and `:` and
  their adjacent pairs, the functions and aggregations, and each comparison
  operator alone, with the decade of its threshold and with the threshold
  rounded to two significant digits. An alert without such a URL has none.

Each group's features share a fixed weight divided by the square root of the
group's size, so a long description does not drown the alertname. The
weights ship in `model/severity.json.gz`, built from public rules by
`services.classifier.training`.
"""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from services.classifier.expression import (
    AGGREGATIONS,
    expression_from_url,
    parse_expression,
)
from services.classifier.severity import Severity

logger = logging.getLogger(__name__)

MODEL_FILE = Path(__file__).resolve().parent / "model" / "severity.json.gz"
MODEL_FORMAT = 1
CLASSES: tuple[Severity, ...] = (Severity.CRITICAL, Severity.WARNING, Severity.INFO)

GROUP_WEIGHTS: dict[str, float] = {
    "name": 0.7,
    "text": 1.0,
    "labels": 2.0,
    "layout": 1.0,
    "expr": 0.4,
}
TEXT_ANNOTATIONS = ("summary", "description", "message")

# Labels that Prometheus, exporters and Kubernetes put on the series rather
# than on the rule. They name the thing that fired, not how bad it is, and
# the corpus's rules rarely carry them, so they are left out of the features.
SERIES_LABELS = frozenset(
    {
        "instance",
        "job",
        "pod",
        "pod_ip",
        "pod_uid",
        "uid",
        "namespace",
        "container",
        "container_id",
        "node",
        "service",
        "endpoint",
        "cluster",
        "prometheus",
        "prometheus_replica",
        "replica",
        "__replica__",
        "device",
        "mountpoint",
        "fstype",
    }
)
# Maximum length of a label value in a feature, in characters.
MAX_LABEL_VALUE = 40

STOP_WORDS = frozenset(
    "a an and are as at be been by for from has have in is it its of on or "
    "that the this to was with".split()
)
_TEMPLATE = re.compile(r"\{\{.*?\}\}", re.DOTALL)
_URL = re.compile(r"\bhttps?://\S+")
# Lines such as "VALUE = {{ $value }}" are empty once templates are removed.
_EMPTY_ASSIGNMENT = re.compile(r"^\s*\w+\s*[=:]\s*$")
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NON_WORD = re.compile(r"[^0-9A-Za-z]+")
_TOKEN = re.compile(r"[a-z0-9]+")
_METRIC_SEPARATOR = re.compile(r"[_:]+")
_RANGE_TEXT = {
    "<0": "below 0",
    "(0,1)": "between 0 and 1",
    "[1,10)": "from 1 to 10",
    "[10,100)": "from 10 to 100",
    "[100,1000)": "from 100 to 1000",
    ">=1000": "of 1000 or more",
}
# Feature kinds that name no word of the alert, left out of explanations.
_UNEXPLAINED_KINDS = ("s", "a")


class ModelFileError(ValueError):
    """A model file that is missing, unreadable or of another format."""


@dataclass(frozen=True)
class Prediction:
    """The model's severity, its probability and the features that weighed most."""

    severity: Severity
    probability: float
    # Readable descriptions of the features that pushed most towards
    # `severity`, strongest first.
    top_features: tuple[str, ...]


def extract_features(
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    generator_url: str = "",
) -> dict[str, list[str]]:
    """Return the feature names of an alert by group, without duplicates."""
    name_words = [
        word
        for word in split_words(labels.get("alertname", "")).split()
        if not word.isdigit()
    ]
    text: list[str] = []
    for key in TEXT_ANNOTATIONS:
        words = text_words(annotations.get(key, ""))
        text += [f"t:{word}" for word in words]
        text += [f"tb:{first}_{second}" for first, second in itertools.pairwise(words)]

    label_names = sorted(
        key
        for key in labels
        if key not in ("alertname", "severity") and key not in SERIES_LABELS
    )
    label_features = [f"l:{key}" for key in label_names]
    label_features += [
        f"lv:{key}={labels[key].strip().lower()[:MAX_LABEL_VALUE]}"
        for key in label_names
    ]
    label_features += [f"a:{key}" for key in sorted(annotations)]

    extra_annotations = sorted(
        key for key in annotations if key not in ("summary", "description")
    )
    layout = "+".join(label_names) + "|" + "+".join(extra_annotations)
    layout_features = [f"s:{layout}"]
    layout_features += [f"x:{layout}|{word}" for word in name_words]

    name = [f"n:{word}" for word in name_words]
    name += [f"nb:{first}_{second}" for first, second in itertools.pairwise(name_words)]
    return {
        "name": _unique(name),
        "text": _unique(text),
        "labels": _unique(label_features),
        "layout": _unique(layout_features),
        "expr": expression_features(generator_url),
    }


def expression_features(generator_url: str) -> list[str]:
    """Return the features of the PromQL expression in a generator URL.

    A URL that is empty, malformed or has no `g0.expr` parameter gives none.
    """
    expression = expression_from_url(generator_url)
    if not expression:
        return []
    parsed = parse_expression(expression)
    features = []
    for metric in parsed.metrics:
        words = [
            word
            for word in _METRIC_SEPARATOR.split(metric.lower())
            if word and not word.isdigit()
        ]
        features += [f"em:{word}" for word in words]
        features += [
            f"emb:{first}_{second}" for first, second in itertools.pairwise(words)
        ]
    features += [f"ef:{name}" for name in parsed.functions]
    for operator, threshold in parsed.comparisons:
        features.append(f"ec:{operator}")
        if threshold is None:
            continue
        features.append(f"et:{operator}:{threshold_range(threshold)}")
        features.append(f"ev:{operator}:{threshold:.2g}")
    return _unique(features)


def threshold_range(value: float) -> str:
    """Return the range of a comparison's threshold: 0, 1 or a decade."""
    if value < 0:
        return "<0"
    if value == 0:
        return "0"
    if value == 1:
        return "1"
    if value < 1:
        return "(0,1)"
    for upper in (10, 100, 1000):
        if value < upper:
            return f"[{upper // 10},{upper})"
    return ">=1000"


def split_words(name: str) -> str:
    """Split a CamelCase or snake_case name into lowercase words."""
    spaced = _CAMEL_BOUNDARY.sub(" ", name)
    return _NON_WORD.sub(" ", spaced).strip().lower()


def text_words(text: str) -> list[str]:
    """Split annotation text into lowercase words, templates and numbers removed."""
    if not text:
        return []
    text = _URL.sub(" ", _TEMPLATE.sub(" ", text))
    lines = [line for line in text.splitlines() if not _EMPTY_ASSIGNMENT.match(line)]
    spaced = _CAMEL_BOUNDARY.sub(" ", " ".join(lines)).lower()
    return [
        token
        for token in _TOKEN.findall(spaced)
        if token.isalpha() and token not in STOP_WORDS
    ]


def describe_feature(feature: str) -> str:
    """Return a feature name as words a reader of a verdict understands."""
    kind, _, value = feature.partition(":")
    if kind == "n":
        return f'the name word "{value}"'
    if kind == "x":
        return f'the name word "{value.rpartition("|")[2]}"'
    if kind == "nb":
        return f'the name words "{value.replace("_", " ")}"'
    if kind == "t":
        return f'the word "{value}"'
    if kind == "tb":
        return f'the words "{value.replace("_", " ")}"'
    if kind == "l":
        return f'the label "{value}"'
    if kind == "lv":
        key, _, label_value = value.partition("=")
        return f'the label {key}="{label_value}"'
    if kind == "a":
        return f'the annotation "{value}"'
    return _describe_expression_feature(kind, value)


def _describe_expression_feature(kind: str, value: str) -> str:
    if kind == "em":
        return f'the metric word "{value}"'
    if kind == "emb":
        return f'the metric words "{value.replace("_", " ")}"'
    if kind == "ef" and value in AGGREGATIONS:
        return f'the aggregation "{value}"'
    if kind == "ef":
        return f'the function "{value}"'
    if kind == "ec":
        return f'the comparison "{value}" in the expression'
    if kind == "et":
        operator, _, bounds = value.partition(":")
        if bounds in ("0", "1"):
            return f'the comparison "{operator} {bounds}"'
        return f'a comparison "{operator} x" with x {_RANGE_TEXT.get(bounds, bounds)}'
    if kind == "ev":
        operator, _, threshold = value.partition(":")
        return f'the comparison "{operator} {threshold}"'
    return "its set of label and annotation names"


class LinearModel:
    """Weights of a multinomial logistic regression over `extract_features`."""

    def __init__(
        self,
        weights: Mapping[str, Sequence[float]],
        bias: Sequence[float],
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if len(bias) != len(CLASSES):
            raise ModelFileError(f"bias has {len(bias)} values, not {len(CLASSES)}")
        self.weights: dict[str, tuple[float, ...]] = {
            feature: tuple(values) for feature, values in weights.items()
        }
        self.bias = tuple(bias)
        self.metadata = dict(metadata or {})

    def vectorize(self, groups: Mapping[str, Sequence[str]]) -> dict[str, float]:
        """Return the features of an alert that have weights, with their values.

        A feature's value is its group's weight divided by the square root of
        the group's size, counting features without weights.
        """
        vector: dict[str, float] = {}
        for group, features in groups.items():
            if not features:
                continue
            value = GROUP_WEIGHTS[group] / math.sqrt(len(features))
            for feature in features:
                if feature in self.weights:
                    vector[feature] = value
        return vector

    def probabilities(self, vector: Mapping[str, float]) -> list[float]:
        """Return the probability of each class in `CLASSES` order."""
        scores = list(self.bias)
        for feature, value in vector.items():
            for index, weight in enumerate(self.weights[feature]):
                scores[index] += weight * value
        return softmax(scores)

    def predict(
        self,
        labels: Mapping[str, str],
        annotations: Mapping[str, str],
        generator_url: str = "",
        explain: int = 3,
    ) -> Prediction:
        """Classify an alert and name up to `explain` features that decided it."""
        features = extract_features(labels, annotations, generator_url)
        vector = self.vectorize(features)
        probabilities = self.probabilities(vector)
        best = max(range(len(CLASSES)), key=lambda index: probabilities[index])
        return Prediction(
            CLASSES[best],
            probabilities[best],
            self._strongest(vector, best, explain),
        )

    def to_json(self) -> dict[str, Any]:
        """Return the model as a JSON document, features sorted by name."""
        return {
            "format": MODEL_FORMAT,
            "classes": [severity.value for severity in CLASSES],
            "metadata": self.metadata,
            "bias": list(self.bias),
            "weights": {
                feature: list(self.weights[feature]) for feature in sorted(self.weights)
            },
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> LinearModel:
        """Build a model from `to_json`'s document; raises ModelFileError."""
        if document.get("format") != MODEL_FORMAT:
            raise ModelFileError(
                f"model format is {document.get('format')!r}, expected {MODEL_FORMAT}"
            )
        classes = [severity.value for severity in CLASSES]
        if document.get("classes") != classes:
            raise ModelFileError(f"model classes are not {classes}")
        return cls(document["weights"], document["bias"], document.get("metadata"))

    def _strongest(
        self, vector: Mapping[str, float], best: int, count: int
    ) -> tuple[str, ...]:
        pushes = []
        for feature, value in vector.items():
            if feature.partition(":")[0] in _UNEXPLAINED_KINDS:
                continue
            weights = self.weights[feature]
            others = [weight for index, weight in enumerate(weights) if index != best]
            push = (weights[best] - sum(others) / len(others)) * value
            if push > 0:
                pushes.append((push, feature))
        pushes.sort(key=lambda item: (-item[0], item[1]))
        descriptions: list[str] = []
        for _, feature in pushes:
            if len(descriptions) == count:
                break
            description = describe_feature(feature)
            if description not in descriptions:
                descriptions.append(description)
        return tuple(descriptions)


def softmax(scores: Sequence[float]) -> list[float]:
    """Return the softmax of `scores`, stable for large values."""
    top = max(scores)
    exps = [math.exp(score - top) for score in scores]
    total = sum(exps)
    return [value / total for value in exps]


def load_model(path: Path = MODEL_FILE) -> LinearModel:
    """Read a gzip JSON model file; raises ModelFileError."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as stream:
            document = json.load(stream)
    except (OSError, EOFError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise ModelFileError(f"model file {path} does not contain a JSON object")
    try:
        return LinearModel.from_json(document)
    except (KeyError, TypeError) as exc:
        raise ModelFileError(f"model file {path} is incomplete: {exc!r}") from exc


@lru_cache(maxsize=1)
def shipped_model() -> LinearModel | None:
    """Return the model that ships in the package, read once per process.

    Returns None, and logs the error once, when the file cannot be read, so
    that callers can fall back to keyword patterns.
    """
    try:
        return load_model(MODEL_FILE)
    except ModelFileError as exc:
        logger.error(
            "severity model unavailable, using keyword patterns",
            extra={"error": str(exc)},
        )
        return None


def _unique(features: list[str]) -> list[str]:
    return list(dict.fromkeys(features))
