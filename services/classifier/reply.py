"""Reading a chat completion reply into a checked verdict.

`parse_completion` checks, in this order: the response shape,
`finish_reason` (`length`, `content_filter`), `refusal`, empty content, JSON
parsing, then the fields. Each failure raises `ModelFailure` with a short
reason code. Of the reply only `severity`, `confidence`, `reasoning` and
`recommendations` are used, each bounded in length; any other field the
model returns is ignored.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from services.classifier.rules import Severity

# Maximum characters of a model reply that are parsed. The search for the
# first JSON object is quadratic in the worst case, so it must stay bounded.
MAX_CONTENT_CHARS = 32 * 1024
MAX_REASONING_CHARS = 2000
MAX_RECOMMENDATIONS = 10
MAX_RECOMMENDATION_CHARS = 500
MAX_REFUSAL_CHARS = 500
MAX_MODEL_NAME_CHARS = 200

# Model names as endpoints report them, such as "gpt-4o-mini-2024-07-18" or
# "llama3.1:8b". Any other text in the response's `model` field is ignored.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*")
# C0 and C1 control characters other than tab and newline.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class ModelFailure(Exception):
    """The model returned no usable verdict. `reason` is a short, bounded code.

    `tokens` counts the tokens the endpoint reported for the failed requests,
    so that a fallback verdict still records what it cost.
    """

    def __init__(
        self, reason: str, message: str, refusal: str = "", tokens: int = 0
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.refusal = refusal[:MAX_REFUSAL_CHARS]
        self.tokens = tokens


@dataclass(frozen=True)
class ModelVerdict:
    """A checked verdict from the model.

    `tokens` is what the requests behind this verdict cost; a cached copy
    does not keep it.
    """

    severity: Severity
    confidence: float
    reasoning: str
    recommendations: tuple[str, ...] = ()
    model: str = ""
    tokens: int = 0

    def to_json(self) -> str:
        """Encode for a cache that stores text, such as Redis."""
        return json.dumps(
            {
                "severity": self.severity.value,
                "confidence": self.confidence,
                "reasoning": self.reasoning,
                "recommendations": list(self.recommendations),
                "model": self.model,
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelVerdict:
        """Decode `to_json` output; raise ValueError or KeyError when malformed."""
        data = json.loads(text)
        return cls(
            severity=Severity(data["severity"]),
            confidence=float(data["confidence"]),
            reasoning=str(data["reasoning"]),
            recommendations=tuple(str(item) for item in data["recommendations"]),
            model=str(data["model"]),
        )


def parse_completion(body: Any, configured_model: str) -> ModelVerdict:
    """Check a chat completion response and return the verdict it carries."""
    choice = _first_choice(body)
    finish_reason = choice.get("finish_reason")
    if finish_reason == "length":
        raise ModelFailure("length", "model reply was cut off by the token limit")
    if finish_reason == "content_filter":
        raise ModelFailure("content_filter", "model provider filtered the reply")

    message = choice.get("message")
    if not isinstance(message, dict):
        raise ModelFailure("invalid_response", "choices[0].message is missing")
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal.strip():
        raise ModelFailure("refusal", "model refused to classify", refusal.strip())
    content = message.get("content")
    if not isinstance(content, str) or not content.strip():
        raise ModelFailure("empty_content", "model reply has no content")

    verdict = check_verdict(extract_json_object(content))
    reported = body.get("model") if isinstance(body, dict) else None
    return replace(verdict, model=model_name(reported, configured_model))


def model_name(reported: Any, configured: str) -> str:
    """Return the endpoint's model name when it looks like one, else `configured`."""
    if isinstance(reported, str) and _MODEL_NAME.fullmatch(reported):
        return reported[:MAX_MODEL_NAME_CHARS]
    return configured[:MAX_MODEL_NAME_CHARS]


def extract_json_object(content: str) -> dict[str, Any]:
    """Parse the JSON object in a model reply, raising ModelFailure("invalid_json").

    One surrounding Markdown code fence (```json ... ``` or ``` ... ```) is
    removed. When the rest is not a JSON object, the first `{...}` in the text
    that parses as a JSON object is used, so prose around the object is
    ignored.
    """
    text = _strip_code_fence(content.strip()[:MAX_CONTENT_CHARS])
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        return parsed

    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            candidate, _ = decoder.raw_decode(text, start)
        except ValueError:
            candidate = None
        if isinstance(candidate, dict):
            return candidate
        start = text.find("{", start + 1)
    raise ModelFailure("invalid_json", "model reply contains no JSON object")


def check_verdict(data: Mapping[str, Any]) -> ModelVerdict:
    """Check the fields of a parsed reply, raising ModelFailure("invalid_schema").

    `severity` is stripped and lowercased and must then be one of the four
    classes. `confidence` must be a JSON number and is clamped to [0, 1], so
    95 becomes 1.0 and -0.2 becomes 0.0. `reasoning` must be a string.
    `recommendations` may be missing, a string or a list of strings. Texts
    lose control characters and are cut to their maximum lengths.
    """
    severity_value = data.get("severity")
    if not isinstance(severity_value, str):
        raise ModelFailure("invalid_schema", "severity is missing or not a string")
    try:
        severity = Severity(severity_value.strip().lower())
    except ValueError:
        raise ModelFailure(
            "invalid_schema", f"severity {severity_value[:40]!r} is not a known class"
        ) from None

    confidence = data.get("confidence")
    if (
        not isinstance(confidence, int | float)
        or isinstance(confidence, bool)
        or math.isnan(confidence)
    ):
        raise ModelFailure("invalid_schema", "confidence is missing or not a number")

    reasoning = data.get("reasoning")
    if not isinstance(reasoning, str):
        raise ModelFailure("invalid_schema", "reasoning is missing or not a string")

    return ModelVerdict(
        severity=severity,
        confidence=min(1.0, max(0.0, float(confidence))),
        reasoning=clean_text(reasoning, MAX_REASONING_CHARS),
        recommendations=_check_recommendations(data.get("recommendations")),
    )


def clean_text(text: str, max_chars: int) -> str:
    """Remove control characters other than tab and newline, strip, and cut."""
    return _CONTROL.sub("", text).strip()[:max_chars]


def _check_recommendations(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
        raise ModelFailure("invalid_schema", "recommendations is not a list of strings")
    items = [clean_text(item, MAX_RECOMMENDATION_CHARS) for item in value]
    return tuple(item for item in items if item)[:MAX_RECOMMENDATIONS]


def _first_choice(body: Any) -> dict[str, Any]:
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ModelFailure("invalid_response", "response has no choices")
    return choices[0]


def _strip_code_fence(text: str) -> str:
    if not (text.startswith("```") and text.endswith("```") and len(text) >= 6):
        return text
    first_newline = text.find("\n")
    if first_newline == -1:
        return text
    return text[first_newline + 1 : -3].strip()
