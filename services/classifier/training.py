"""Train the severity model from public rules and write the shipped file.

    python -m services.classifier.training [--rules FILE] [--output FILE]

rebuilds `services/classifier/model/severity.json.gz` from
`tests/fixtures/rules.jsonl`. Training is deterministic: the same rules,
seed and Python give the same file, byte for byte.

The trainer is averaged stochastic gradient descent on the multinomial
logistic loss, with a constant learning rate and the examples shuffled every
epoch with a fixed seed. It returns the average of the weights after every
step, because on a corpus this small the average generalises better than the
last step's weights.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import random
import sys
from collections.abc import Sequence
from pathlib import Path

from services.classifier.corpus import (
    DEFAULT_RULES_FILE,
    CorpusError,
    CorpusRule,
    read_rules,
)
from services.classifier.learned import (
    CLASSES,
    MODEL_FILE,
    LinearModel,
    extract_features,
)

EPOCHS = 30
LEARNING_RATE = 0.5
SEED = 20240611
# Weights are rounded to this many decimals in the shipped file, and features
# whose weights all round to zero are dropped.
WEIGHT_DECIMALS = 4


def training_examples(
    rules: Sequence[CorpusRule],
) -> list[tuple[dict[str, list[str]], int]]:
    """Return the features and class index of each rule the model learns from.

    Noise rules are left out: the rules catch heartbeat and inhibitor names
    before the model is asked.
    """
    return [
        (
            extract_features(rule.labels, rule.annotations, rule.generator_url),
            CLASSES.index(rule.severity),
        )
        for rule in rules
        if rule.severity in CLASSES
    ]


def train(
    examples: Sequence[tuple[dict[str, list[str]], int]],
    *,
    epochs: int = EPOCHS,
    learning_rate: float = LEARNING_RATE,
    seed: int = SEED,
) -> LinearModel:
    """Fit a LinearModel to (feature groups, class index) examples."""
    vocabulary: dict[str, int] = {}
    for groups, _ in examples:
        for features in groups.values():
            for feature in features:
                vocabulary.setdefault(feature, len(vocabulary))
    scaffold = LinearModel(dict.fromkeys(vocabulary, (0.0, 0.0, 0.0)), (0.0,) * 3)
    rows = []
    for groups, label in examples:
        vector = scaffold.vectorize(groups)
        rows.append(
            ([vocabulary[feature] for feature in vector], list(vector.values()), label)
        )

    weights, bias = _averaged_sgd(rows, len(vocabulary), epochs, learning_rate, seed)
    by_feature = {
        feature: tuple(weights[3 * index : 3 * index + 3])
        for feature, index in vocabulary.items()
    }
    return LinearModel(by_feature, bias)


def _averaged_sgd(
    rows: Sequence[tuple[list[int], list[float], int]],
    features: int,
    epochs: int,
    learning_rate: float,
    seed: int,
) -> tuple[list[float], list[float]]:
    # Three weights per feature, one per class, in one flat list for speed.
    # `totals` accumulates step * update, so that the average of all
    # intermediate weights is `weights - totals / steps` at the end.
    weights = [0.0] * (3 * features)
    totals = [0.0] * (3 * features)
    bias = [0.0, 0.0, 0.0]
    bias_totals = [0.0, 0.0, 0.0]
    order = list(range(len(rows)))
    shuffler = random.Random(seed)
    step = 0
    for _ in range(epochs):
        shuffler.shuffle(order)
        for row in order:
            step += 1
            indexes, values, label = rows[row]
            s0, s1, s2 = bias
            for index, value in zip(indexes, values, strict=True):
                base = 3 * index
                s0 += weights[base] * value
                s1 += weights[base + 1] * value
                s2 += weights[base + 2] * value

            top = max(s0, s1, s2)
            e0, e1, e2 = math.exp(s0 - top), math.exp(s1 - top), math.exp(s2 - top)
            scale = learning_rate / (e0 + e1 + e2)
            g0, g1, g2 = e0 * scale, e1 * scale, e2 * scale
            if label == 0:
                g0 -= learning_rate
            elif label == 1:
                g1 -= learning_rate
            else:
                g2 -= learning_rate

            bias[0] -= g0
            bias[1] -= g1
            bias[2] -= g2
            bias_totals[0] -= step * g0
            bias_totals[1] -= step * g1
            bias_totals[2] -= step * g2
            for index, value in zip(indexes, values, strict=True):
                base = 3 * index
                d0, d1, d2 = g0 * value, g1 * value, g2 * value
                weights[base] -= d0
                weights[base + 1] -= d1
                weights[base + 2] -= d2
                totals[base] -= step * d0
                totals[base + 1] -= step * d1
                totals[base + 2] -= step * d2

    steps = max(step, 1)
    averaged = [
        weight - total / steps for weight, total in zip(weights, totals, strict=True)
    ]
    averaged_bias = [
        b - total / steps for b, total in zip(bias, bias_totals, strict=True)
    ]
    return averaged, averaged_bias


def rounded(model: LinearModel, decimals: int = WEIGHT_DECIMALS) -> LinearModel:
    """Round the weights and drop features whose weights all round to zero."""
    weights = {}
    for feature, values in model.weights.items():
        rounded_values = tuple(round(value, decimals) + 0.0 for value in values)
        if any(rounded_values):
            weights[feature] = rounded_values
    bias = [round(value, decimals) + 0.0 for value in model.bias]
    return LinearModel(weights, bias, model.metadata)


def build_model(rules_file: Path = DEFAULT_RULES_FILE) -> LinearModel:
    """Train the shipped model on every rule of `rules_file`."""
    rules = read_rules(rules_file)
    model = rounded(train(training_examples(rules)))
    model.metadata = {
        "rules": len(rules),
        "rules_sha256": hashlib.sha256(rules_file.read_bytes()).hexdigest(),
        "epochs": EPOCHS,
        "learning_rate": LEARNING_RATE,
        "seed": SEED,
    }
    return model


def model_bytes(model: LinearModel) -> bytes:
    """Encode a model as gzip JSON without a timestamp, so equal models match."""
    text = json.dumps(model.to_json(), sort_keys=True, separators=(",", ":"))
    return gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.classifier.training",
        description="Train the severity model on rules in the corpus's JSON-lines "
        "format and write it as gzip JSON.",
    )
    parser.add_argument(
        "--rules",
        type=Path,
        default=DEFAULT_RULES_FILE,
        help="rules file (default: tests/fixtures/rules.jsonl)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=MODEL_FILE,
        help="model file to write (default: the shipped model)",
    )
    args = parser.parse_args(argv)
    try:
        model = build_model(args.rules)
    except CorpusError as exc:
        print(f"training: {exc}", file=sys.stderr)
        return 2
    data = model_bytes(model)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(data)
    print(
        f"wrote {args.output}: {len(model.weights)} features, {len(data)} bytes, "
        f"sha256 {hashlib.sha256(data).hexdigest()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
