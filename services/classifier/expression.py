"""Read the PromQL expression that an alert's generator URL carries.

Prometheus sets each alert's `generatorURL` to a graph link for the rule's
expression, `<external URL>/graph?g0.expr=<expression>&g0.tab=1`, with the
expression encoded by Go's `url.QueryEscape` (`TableLinkForExpression` in
Prometheus's `util/strutil`). The expression is the parsed rule printed
again, so its spacing and number format can differ from the rule file.
Thanos Ruler builds the same link on its `--alert.query-url` by default.
Alertmanager passes the URL on unchanged in the webhook. Other sources, such
as Grafana-managed alerts, link elsewhere and carry no expression.

`expression_from_url` gets the expression back, and `parse_expression`
splits it into the parts the severity model reads: metric names, functions,
label matchers and comparisons with their thresholds. The parser is a
tokenizer with a little context, not a PromQL grammar, so it never rejects
an expression. Text it cannot read yields fewer parts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import parse_qs, quote_plus, urlsplit

# Without --web.external-url, Prometheus uses http://<hostname>:<listen port>/,
# and the port is 9090 by default. The corpus's alerts get this URL.
DEFAULT_EXTERNAL_URL = "http://prometheus:9090"
EXPRESSION_PARAMETER = "g0.expr"
# Maximum length of a generator URL that is read, in characters. Longer URLs
# give no expression, so that one alert cannot make parsing slow.
MAX_URL_LENGTH = 16_384

AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)
# Keywords followed by a parenthesised list of label names.
LABEL_LIST_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right"}
)
# Keywords and number literals that read like identifiers but name no metric.
SKIPPED_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
)
COMPARISONS = frozenset({"==", "!=", ">", "<", ">=", "<="})
MATCHERS = frozenset({"=", "!=", "=~", "!~"})
# The operator that keeps a comparison's meaning when its sides swap.
MIRRORED = {">": "<", "<": ">", ">=": "<=", "<=": ">="}

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    |(?P<duration>\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*(?![A-Za-z0-9_]))
    |(?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    |(?P<identifier>[A-Za-z_:][A-Za-z0-9_:]*)
    |(?P<operator>==|!=|>=|<=|=~|!~|[-+*/%^<>=])
    |(?P<punctuation>[(){}\[\],@])
    |(?P<comment>\#[^\n]*)
    """,
    re.VERBOSE,
)


class Token(NamedTuple):
    """One PromQL token: its kind (a group name of `_TOKEN`) and its text."""

    kind: str
    text: str


@dataclass
class Expression:
    """The parts of a PromQL expression that the severity model reads."""

    metrics: list[str] = field(default_factory=list)
    # Functions and aggregation operators, lowercased.
    functions: list[str] = field(default_factory=list)
    # Label matchers as (label name, operator, value without quotes).
    matchers: list[tuple[str, str, str]] = field(default_factory=list)
    # Comparisons as (operator, threshold), the threshold None when the
    # comparison is not against a number.
    comparisons: list[tuple[str, float | None]] = field(default_factory=list)


def generator_url(expression: str, external_url: str = DEFAULT_EXTERNAL_URL) -> str:
    """Return the generator URL Prometheus gives the alerts of a rule."""
    encoded = quote_plus(expression, safe="")
    return f"{external_url.rstrip('/')}/graph?{EXPRESSION_PARAMETER}={encoded}&g0.tab=1"


def expression_from_url(url: str) -> str:
    """Return the `g0.expr` query parameter of a generator URL, or "".

    Malformed URLs, URLs longer than `MAX_URL_LENGTH` and URLs without the
    parameter give "", never an exception.
    """
    if not url or len(url) > MAX_URL_LENGTH:
        return ""
    try:
        query = urlsplit(url).query
        values = parse_qs(query, max_num_fields=100).get(EXPRESSION_PARAMETER)
    except ValueError:
        return ""
    if not values:
        return ""
    return values[0].strip()


def tokenize(expression: str) -> list[Token]:
    """Split a PromQL expression into tokens, dropping comments.

    Characters that start no token, such as stray quotes, are skipped.
    """
    tokens = []
    for match in _TOKEN.finditer(expression):
        kind = match.lastgroup
        if kind is None or kind == "comment":
            continue
        tokens.append(Token(kind, match.group()))
    return tokens


def parse_expression(expression: str) -> Expression:
    """Split a PromQL expression into metrics, functions, matchers and comparisons."""
    tokens = tokenize(expression)
    parsed = Expression()
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token.text == "{":
            index = _read_matchers(tokens, index + 1, parsed)
            continue
        if token.text == "[":
            # A range or subquery such as [5m] or [1h:5m] has no features.
            index = _skip_past(tokens, index + 1, "]")
            continue
        if token.kind == "identifier":
            index = _read_identifier(tokens, index, parsed)
            continue
        if token.kind == "operator" and token.text in COMPARISONS:
            parsed.comparisons.append(_comparison(tokens, index))
        index += 1
    return parsed


def _read_identifier(tokens: list[Token], index: int, parsed: Expression) -> int:
    name = tokens[index].text
    lowered = name.lower()
    following = tokens[index + 1].text if index + 1 < len(tokens) else ""
    if lowered in LABEL_LIST_KEYWORDS:
        if following == "(":
            return _skip_past(tokens, index + 2, ")")
        return index + 1
    if lowered in SKIPPED_KEYWORDS:
        return index + 1
    if lowered in AGGREGATIONS or following == "(":
        parsed.functions.append(lowered)
        return index + 1
    parsed.metrics.append(name)
    return index + 1


def _read_matchers(tokens: list[Token], index: int, parsed: Expression) -> int:
    """Read the label matchers that follow "{" and return the index after "}"."""
    while index < len(tokens) and tokens[index].text != "}":
        window = tokens[index : index + 3]
        if len(window) == 3 and _is_matcher(*window):
            name, operator, value = window
            parsed.matchers.append(
                (_unquote(name.text), operator.text, _unquote(value.text))
            )
            index += 3
            continue
        if tokens[index].kind == "string":
            # A quoted metric name, as in {"http.requests", code="500"}.
            parsed.metrics.append(_unquote(tokens[index].text))
        index += 1
    return index + 1


def _is_matcher(name: Token, operator: Token, value: Token) -> bool:
    return (
        name.kind in ("identifier", "string")
        and operator.text in MATCHERS
        and value.kind == "string"
    )


def _skip_past(tokens: list[Token], index: int, closing: str) -> int:
    while index < len(tokens) and tokens[index].text != closing:
        index += 1
    return index + 1


def _comparison(tokens: list[Token], index: int) -> tuple[str, float | None]:
    """Return the comparison at `tokens[index]` with the number it compares to.

    The number after the operator counts, else the number before it, with
    the operator mirrored so that `90 > x` reads as `x < 90`. Only a lone
    number counts: in `x > 86400 * 7` the threshold is None.
    """
    operator = tokens[index].text
    position = index + 1
    if position < len(tokens) and tokens[position].text == "bool":
        position += 1
    sign = 1.0
    if position < len(tokens) and tokens[position].text in ("-", "+"):
        sign = -1.0 if tokens[position].text == "-" else 1.0
        position += 1
    if position < len(tokens) and tokens[position].kind == "number":
        after = position + 1
        if after >= len(tokens) or tokens[after].kind != "operator":
            # Adding 0.0 turns the -0.0 of "x > -0" into 0.0.
            return operator, sign * _number(tokens[position].text) + 0.0
    if index > 0 and tokens[index - 1].kind == "number":
        before = index - 2
        if before < 0 or tokens[before].kind != "operator":
            mirrored = MIRRORED.get(operator, operator)
            return mirrored, _number(tokens[index - 1].text)
    return operator, None


def _number(text: str) -> float:
    if text[:2].lower() == "0x":
        return float(int(text, 16))
    return float(text)


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        return text[1:-1]
    return text
