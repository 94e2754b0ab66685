"""Model outages and limits: circuit, spend limit, last known verdict, prompt inputs."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alerthistory.alert.v1 import alert_pb2
from libs.alerts import datetime_to_timestamp
from services.classifier.context import AlertContext
from services.classifier.prompt import CONTEXT_BEGIN, CONTEXT_END, PromptTemplate
from tests.classifier.conftest import ClassifierFactory, StaticContext, make_alert
from tests.fakes.llm import FakeLLM, completion

MODEL = alert_pb2.VERDICT_SOURCE_MODEL
CACHE = alert_pb2.VERDICT_SOURCE_CACHE
RULES = alert_pb2.VERDICT_SOURCE_RULES
LAST_KNOWN = alert_pb2.VERDICT_SOURCE_LAST_KNOWN
FINGERPRINT = "00000000000000ff"
TARGET_DOWN = {"alertname": "TargetDown", "severity": "warning", "job": "api"}


def _stored(
    severity: int = alert_pb2.SEVERITY_INFO,
    source: int = MODEL,
    age: timedelta = timedelta(hours=1),
) -> alert_pb2.Classification:
    stored = alert_pb2.Classification(
        severity=severity,  # type: ignore[arg-type]
        model_severity=severity,  # type: ignore[arg-type]
        confidence=0.7,
        reasoning="Seen before.",
        recommendations=["Check the job."],
        source=source,  # type: ignore[arg-type]
        model="old-model",
    )
    stored.classified_at.CopyFrom(datetime_to_timestamp(datetime.now(UTC) - age))
    return stored


def _context(stored: alert_pb2.Classification | None) -> StaticContext:
    return StaticContext({FINGERPRINT: AlertContext(2, 4, stored)})


def _user_message(fake_llm: FakeLLM, index: int = 0) -> str:
    return str(fake_llm.requests[index].messages[1]["content"])


async def test_outage_costs_one_timeout(
    fake_llm: FakeLLM, make_classifier: ClassifierFactory
) -> None:
    fake_llm.default_delay = 3
    classifier = await make_classifier(
        llm_timeout_seconds=0.3,
        llm_max_attempts=1,
        llm_circuit_failure_threshold=1,
    )
    first = await classifier.classify(make_alert(TARGET_DOWN), budget_seconds=2)
    started = time.perf_counter()

    others = [
        await classifier.classify(make_alert({"alertname": f"A{i}"}), budget_seconds=2)
        for i in range(5)
    ]

    assert first.fallback_reason == "timeout"
    assert {r.fallback_reason for r in others} == {"circuit_open"}
    assert time.perf_counter() - started < 0.5
    assert len(fake_llm.requests) == 1


async def test_circuit_probe_closes_after_outage(
    fake_llm: FakeLLM, make_classifier: ClassifierFactory
) -> None:
    fake_llm.default_status = 503
    classifier = await make_classifier(
        llm_max_attempts=1,
        llm_circuit_failure_threshold=2,
        llm_circuit_open_seconds=0.2,
    )
    for name in ("A", "B"):
        await classifier.classify(make_alert({"alertname": name}))
    skipped = await classifier.classify(make_alert({"alertname": "C"}))
    fake_llm.default_status = None
    await asyncio.sleep(0.25)

    probe = await classifier.classify(make_alert({"alertname": "D"}))
    after = await classifier.classify(make_alert({"alertname": "E"}))

    assert skipped.fallback_reason == "circuit_open"
    assert probe.source == MODEL
    assert after.source == MODEL
    assert len(fake_llm.requests) == 4


async def test_spend_limit_falls_back(
    fake_llm: FakeLLM, make_classifier: ClassifierFactory
) -> None:
    classifier = await make_classifier(llm_max_calls_per_minute=1)
    first = await classifier.classify(make_alert({"alertname": "A"}))

    second = await classifier.classify(make_alert({"alertname": "B"}))

    assert first.source == MODEL
    assert second.source == RULES
    assert second.fallback_reason == "spend_limit"
    assert len(fake_llm.requests) == 1


async def test_spend_limit_spares_cache(
    fake_llm: FakeLLM, make_classifier: ClassifierFactory
) -> None:
    classifier = await make_classifier(llm_max_calls_per_minute=1)
    await classifier.classify(make_alert(TARGET_DOWN))

    repeat = await classifier.classify(make_alert(TARGET_DOWN))

    assert repeat.source == CACHE


async def test_last_known_from_context(
    fake_llm: FakeLLM, make_classifier: ClassifierFactory
) -> None:
    fake_llm.default_status = 500
    classifier = await make_classifier(context=_context(_stored()))

    result = await classifier.classify(make_alert(TARGET_DOWN))

    assert result.source == LAST_KNOWN
    assert result.fallback_reason == "http_error"
    assert result.severity == alert_pb2.SEVERITY_INFO
    assert result.model_severity == alert_pb2.SEVERITY_INFO
    assert result.reasoning == "Seen before."
    assert list(result.recommendations) == ["Check the job."]
    assert result.model == "old-model"
    assert result.tokens == 0


async def test_last_known_keeps_floor(
    fake_llm: FakeLLM, make_classifier: ClassifierFactory
) -> None:
    fake_llm.default_status = 500
    stored = _stored(alert_pb2.SEVERITY_NOISE)
    classifier = await make_classifier(context=_context(stored))
    alert = make_alert({"alertname": "PaymentsDown", "severity": "critical"})

    result = await classifier.classify(alert)

    assert result.source == LAST_KNOWN
    assert result.severity == alert_pb2.SEVERITY_CRITICAL
    assert result.model_severity == alert_pb2.SEVERITY_NOISE
    assert "severity_floor" in result.flags


async def test_last_known_ignores_rules_verdict(
    fake_llm: FakeLLM, make_classifier: ClassifierFactory
) -> None:
    fake_llm.default_status = 500
    classifier = await make_classifier(context=_context(_stored(source=RULES)))

    result = await classifier.classify(make_alert(TARGET_DOWN))

    assert result.source == RULES
    assert result.fallback_reason == "http_error"


async def test_last_known_too_old(
    fake_llm: FakeLLM, make_classifier: ClassifierFactory
) -> None:
    fake_llm.default_status = 500
    stored = _stored(age=timedelta(days=8))
    classifier = await make_classifier(context=_context(stored))

    result = await classifier.classify(make_alert(TARGET_DOWN))

    assert result.source == RULES


async def test_last_known_disabled(
    fake_llm: FakeLLM, make_classifier: ClassifierFactory
) -> None:
    fake_llm.default_status = 500
    classifier = await make_classifier(
        context=_context(_stored()), classifier_last_known_max_age_seconds=0
    )

    result = await classifier.classify(make_alert(TARGET_DOWN))

    assert result.source == RULES


async def test_last_known_from_cache(
    fake_llm: FakeLLM, make_classifier: ClassifierFactory
) -> None:
    fake_llm.enqueue(
        completion({"severity": "info", "confidence": 0.6, "reasoning": "Fine."})
    )
    classifier = await make_classifier(classification_cache_ttl_seconds=0)
    first = await classifier.classify(make_alert(TARGET_DOWN))
    fake_llm.default_status = 500

    second = await classifier.classify(make_alert(TARGET_DOWN))

    assert first.source == MODEL
    assert second.source == LAST_KNOWN
    assert second.severity == alert_pb2.SEVERITY_INFO
    assert second.fallback_reason == "http_error"


async def test_last_known_when_circuit_open(
    fake_llm: FakeLLM, make_classifier: ClassifierFactory
) -> None:
    fake_llm.default_status = 500
    classifier = await make_classifier(
        context=_context(_stored()),
        llm_max_attempts=1,
        llm_circuit_failure_threshold=1,
    )
    await classifier.classify(make_alert({"alertname": "Other"}))

    result = await classifier.classify(make_alert(TARGET_DOWN))

    assert result.source == LAST_KNOWN
    assert result.fallback_reason == "circuit_open"
    assert len(fake_llm.requests) == 1


async def test_context_in_prompt(
    fake_llm: FakeLLM, make_classifier: ClassifierFactory
) -> None:
    context = _context(_stored(alert_pb2.SEVERITY_CRITICAL))
    classifier = await make_classifier(context=context)

    await classifier.classify(make_alert(TARGET_DOWN))

    user = _user_message(fake_llm)
    lines = user.split("\n")
    history = json.loads(lines[lines.index(CONTEXT_BEGIN) + 1])
    assert context.lookups == [FINGERPRINT]
    assert history["available"] is True
    assert history["recent_occurrences_24h"] == 2
    assert history["flap_count_24h"] == 4
    assert history["last_verdict"]["severity"] == "critical"
    assert history["last_verdict"]["source"] == "model"
    assert history["last_verdict"]["age_hours"] == 1.0
    assert "Seen before." not in user


async def test_context_missing_in_prompt(
    fake_llm: FakeLLM, make_classifier: ClassifierFactory
) -> None:
    classifier = await make_classifier(context=StaticContext())

    await classifier.classify(make_alert(TARGET_DOWN))

    lines = _user_message(fake_llm).split("\n")
    history = json.loads(lines[lines.index(CONTEXT_BEGIN) + 1])
    assert history == {"available": False}
    assert lines[lines.index(CONTEXT_BEGIN) + 2] == CONTEXT_END


async def test_context_not_in_cache_key(
    fake_llm: FakeLLM, make_classifier: ClassifierFactory
) -> None:
    context = _context(None)
    classifier = await make_classifier(context=context)
    await classifier.classify(make_alert(TARGET_DOWN))
    context.contexts[FINGERPRINT] = AlertContext(50, 100, None)

    result = await classifier.classify(make_alert(TARGET_DOWN))

    assert result.source == CACHE
    assert len(fake_llm.requests) == 1


async def test_context_skipped_on_cache_hit(
    fake_llm: FakeLLM, make_classifier: ClassifierFactory
) -> None:
    context = _context(None)
    classifier = await make_classifier(context=context)
    await classifier.classify(make_alert(TARGET_DOWN))

    await classifier.classify(make_alert(TARGET_DOWN))

    assert context.lookups == [FINGERPRINT]


async def test_redaction_in_request(
    fake_llm: FakeLLM, make_classifier: ClassifierFactory
) -> None:
    classifier = await make_classifier(
        llm_omit_labels="customer",
        llm_redact_labels="namespace",
        llm_omit_annotations="runbook_url",
        llm_redact_annotations="description",
    )
    alert = make_alert(
        {"alertname": "X", "customer": "acme-corp", "namespace": "acme-prod"},
        {
            "runbook_url": "https://wiki.internal/rb",
            "description": "token=s3cr3t",
            "summary": "Visible summary",
        },
    )

    await classifier.classify(alert)

    text = fake_llm.requests[0].text
    for hidden in (
        "customer",
        "acme-corp",
        "acme-prod",
        "runbook_url",
        "wiki.internal",
    ):
        assert hidden not in text
    assert "s3cr3t" not in text
    assert "[redacted]" in text
    assert "Visible summary" in text
    assert "namespace" in text


async def test_template_in_request(
    fake_llm: FakeLLM, make_classifier: ClassifierFactory, tmp_path: Path
) -> None:
    path = tmp_path / "classify.txt"
    path.write_text("Team rules: be brief.\n{alert_data}\n{historical_context}\n")
    classifier = await make_classifier(template=PromptTemplate.load(path))

    await classifier.classify(make_alert(TARGET_DOWN))

    assert _user_message(fake_llm).startswith("Team rules: be brief.\n<alert_data>")


async def test_tokens_recorded(
    fake_llm: FakeLLM, make_classifier: ClassifierFactory
) -> None:
    fake_llm.enqueue(completion(total_tokens=321))
    classifier = await make_classifier()

    fresh = await classifier.classify(make_alert(TARGET_DOWN))
    cached = await classifier.classify(make_alert(TARGET_DOWN))

    assert fresh.tokens == 321
    assert cached.tokens == 0


async def test_tokens_of_failed_replies(
    fake_llm: FakeLLM, make_classifier: ClassifierFactory
) -> None:
    fake_llm.enqueue(completion("no json", total_tokens=40))
    fake_llm.enqueue(completion("still no json", total_tokens=60))
    classifier = await make_classifier()

    result = await classifier.classify(make_alert(TARGET_DOWN))

    assert result.source == RULES
    assert result.fallback_reason == "invalid_json"
    assert result.tokens == 100


async def test_classify_model_override(
    fake_llm: FakeLLM, make_classifier: ClassifierFactory
) -> None:
    classifier = await make_classifier(
        llm_model="general-model", llm_classify_model="classify-model"
    )

    await classifier.classify(make_alert(TARGET_DOWN))

    assert fake_llm.requests[0].body["model"] == "classify-model"
