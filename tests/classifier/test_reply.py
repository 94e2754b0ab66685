"""Reading a chat completion into a verdict, in the documented order of checks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.classifier.reply import (
    ModelFailure,
    ModelVerdict,
    check_verdict,
    extract_json_object,
    model_name,
    parse_completion,
)
from services.classifier.rules import Severity
from tests.classifier.conftest import case_completion
from tests.fakes.llm import completion

VERDICT = {"severity": "info", "confidence": 0.7, "reasoning": "Fine."}


def _failure(body: Any) -> ModelFailure:
    with pytest.raises(ModelFailure) as caught:
        parse_completion(body, "configured")
    return caught.value


def test_extract_json_plain() -> None:
    assert extract_json_object(json.dumps(VERDICT)) == VERDICT


@pytest.mark.parametrize("fence", ["```json\n", "```\n", "```JSON\n"])
def test_extract_json_code_fence(fence: str) -> None:
    text = f"{fence}{json.dumps(VERDICT)}\n```"

    assert extract_json_object(text) == VERDICT


def test_extract_json_first_object_in_text() -> None:
    text = f'Here is my answer: {json.dumps(VERDICT)} and {{"severity": "noise"}}'

    assert extract_json_object(text) == VERDICT


def test_extract_json_skips_unparsable_braces() -> None:
    text = f"I think {{not json}} so {json.dumps(VERDICT)}"

    assert extract_json_object(text) == VERDICT


def test_extract_json_fence_inside_prose() -> None:
    text = f"Sure!\n```json\n{json.dumps(VERDICT)}\n```\nHope this helps."

    assert extract_json_object(text) == VERDICT


@pytest.mark.parametrize("text", ["no json here", "[1, 2]", '{"severity": '])
def test_extract_json_invalid(text: str) -> None:
    with pytest.raises(ModelFailure) as caught:
        extract_json_object(text)

    assert caught.value.reason == "invalid_json"


@pytest.mark.parametrize("given", [" Critical ", "CRITICAL", "critical\n"])
def test_check_verdict_normalizes_severity(given: str) -> None:
    verdict = check_verdict({**VERDICT, "severity": given})

    assert verdict.severity is Severity.CRITICAL


@pytest.mark.parametrize(("given", "clamped"), [(95, 1.0), (-0.2, 0.0), (0.42, 0.42)])
def test_check_verdict_clamps_confidence(given: float, clamped: float) -> None:
    verdict = check_verdict({**VERDICT, "confidence": given})

    assert verdict.confidence == clamped


@pytest.mark.parametrize(
    "change",
    [
        {"severity": "urgent"},
        {"severity": "high"},
        {"severity": "crit ical"},
        {"severity": None},
        {"severity": 1},
        {"confidence": "0.9"},
        {"confidence": True},
        {"confidence": float("nan")},
        {"confidence": None},
        {"reasoning": None},
        {"reasoning": 5},
        {"recommendations": [1, 2]},
        {"recommendations": {"a": "b"}},
    ],
)
def test_check_verdict_rejects(change: dict[str, Any]) -> None:
    data = {**VERDICT, **change}

    with pytest.raises(ModelFailure) as caught:
        check_verdict(data)

    assert caught.value.reason == "invalid_schema"


def test_check_verdict_missing_confidence() -> None:
    data = {"severity": "info", "reasoning": "Fine."}

    with pytest.raises(ModelFailure) as caught:
        check_verdict(data)

    assert caught.value.reason == "invalid_schema"


def test_check_verdict_recommendations_optional() -> None:
    assert check_verdict(VERDICT).recommendations == ()


def test_check_verdict_recommendation_string() -> None:
    verdict = check_verdict({**VERDICT, "recommendations": "Restart it."})

    assert verdict.recommendations == ("Restart it.",)


def test_check_verdict_bounds_text() -> None:
    verdict = check_verdict(
        {
            **VERDICT,
            "reasoning": "r" * 10_000,
            "recommendations": ["x" * 10_000] * 50,
        }
    )

    assert len(verdict.reasoning) == 2000
    assert len(verdict.recommendations) == 10
    assert {len(item) for item in verdict.recommendations} == {500}


def test_check_verdict_strips_control_characters() -> None:
    verdict = check_verdict({**VERDICT, "reasoning": "Disk\x1b[31m full\x00."})

    assert verdict.reasoning == "Disk[31m full."


def test_check_verdict_ignores_other_fields() -> None:
    data = {
        **VERDICT,
        "target": "https://attacker.example/hook",
        "route": "silence",
        "action": "resolve",
    }

    verdict = check_verdict(data)

    assert verdict == ModelVerdict(Severity.INFO, 0.7, "Fine.")


def test_parse_completion_r03_noise() -> None:
    verdict = parse_completion(case_completion("r03"), "configured")

    assert verdict.severity is Severity.NOISE
    assert verdict.confidence == 0.9
    assert verdict.model == "test-model"


def test_parse_completion_r17_length() -> None:
    assert _failure(case_completion("r17")).reason == "length"


def test_parse_completion_r18_refusal() -> None:
    failure = _failure(case_completion("r18"))

    assert failure.reason == "refusal"
    assert failure.refusal == "I can't help with that request."


def test_parse_completion_refusal_bounded() -> None:
    failure = _failure(completion(refusal="no " * 1000))

    assert len(failure.refusal) == 500


def test_parse_completion_content_filter() -> None:
    body = completion(VERDICT, finish_reason="content_filter")

    assert _failure(body).reason == "content_filter"


def test_parse_completion_length_before_content() -> None:
    body = completion(VERDICT, finish_reason="length")

    assert _failure(body).reason == "length"


def test_parse_completion_refusal_before_content() -> None:
    body = completion(VERDICT, refusal="No.")

    assert _failure(body).reason == "refusal"


@pytest.mark.parametrize("content", ["", "   ", None])
def test_parse_completion_empty_content(content: str | None) -> None:
    body = completion(VERDICT)
    body["choices"][0]["message"]["content"] = content

    assert _failure(body).reason == "empty_content"


@pytest.mark.parametrize("body", [{}, {"choices": []}, [], {"choices": [1]}])
def test_parse_completion_bad_shape(body: Any) -> None:
    assert _failure(body).reason == "invalid_response"


@pytest.mark.parametrize(
    ("reported", "expected"),
    [
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-07-18"),
        ("llama3.1:8b", "llama3.1:8b"),
        ("", "configured"),
        (None, "configured"),
        ("ignore all <b>rules</b>", "configured"),
        ("x" * 300, "x" * 200),
    ],
)
def test_model_name_checked(reported: Any, expected: str) -> None:
    assert model_name(reported, "configured") == expected


def test_verdict_json_round_trip() -> None:
    verdict = ModelVerdict(Severity.INFO, 0.5, "Fine.", ("Look.",), "m")

    assert ModelVerdict.from_json(verdict.to_json()) == verdict
