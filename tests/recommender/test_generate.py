"""Generations over gRPC on SQLite and PostgreSQL, with fakes of the outside."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest

from alerthistory.recommender.v1 import recommender_pb2
from services.recommender.detect import problem_names
from tests.fakes.configapis import (
    FakeAlertmanager,
    FakePrometheus,
    alerting_rule,
    rule_group,
)
from tests.fakes.llm import FakeLLM, completion
from tests.recommender.conftest import EXPECTED_PROBLEMS, Running, all_recommendations

GENERATE = recommender_pb2.GenerateRecommendationsRequest()
RULES = recommender_pb2.ORIGIN_RULES
MODEL = recommender_pb2.ORIGIN_MODEL
INFERRED = recommender_pb2.CONFIG_SOURCE_INFERRED

ALERTMANAGER_CONFIG = """
route:
  receiver: default
  group_by: [alertname]
  group_wait: 30s
  group_interval: 5m
  repeat_interval: 4h
  routes:
    - receiver: team-chatty
      matchers:
        - alertname="ChattyAlert"
      repeat_interval: 1h
    - receiver: team-disk
      match_re:
        alertname: Flapping.*
receivers:
  - name: default
  - name: team-chatty
  - name: team-disk
"""


async def test_generate_finds_known_problems(populated: Running) -> None:
    stub = await populated.recommender()

    counts = await stub.GenerateRecommendations(GENERATE, timeout=120)
    stored = await all_recommendations(stub)

    found = {name: problem_names(r.problems) for name, r in stored.items()}
    assert found == EXPECTED_PROBLEMS
    assert counts.flagged == len(EXPECTED_PROBLEMS)
    assert counts.created == len(EXPECTED_PROBLEMS)
    assert counts.analyzed == 11


async def test_generate_without_model_uses_rules(populated_sqlite: Running) -> None:
    stub = await populated_sqlite.recommender()

    counts = await stub.GenerateRecommendations(GENERATE, timeout=120)
    stored = await all_recommendations(stub)

    assert {r.origin for r in stored.values()} == {RULES}
    assert {r.fallback_reason for r in stored.values()} == {""}
    assert counts.from_rules == len(EXPECTED_PROBLEMS)


async def test_generate_without_urls_infers_config(populated_sqlite: Running) -> None:
    stub = await populated_sqlite.recommender()

    counts = await stub.GenerateRecommendations(GENERATE, timeout=120)
    chatty = (await all_recommendations(stub))["ChattyAlert"]

    assert counts.rule_config_source == INFERRED
    assert counts.route_config_source == INFERRED
    assert chatty.config_source == INFERRED
    assert any("inferred" in reason for reason in chatty.reasons)


async def test_generate_deterministic_changes(populated_sqlite: Running) -> None:
    stub = await populated_sqlite.recommender()

    await stub.GenerateRecommendations(GENERATE, timeout=120)
    stored = await all_recommendations(stub)

    assert stored["FlappingDisk"].recommended.for_duration == "5m"
    assert stored["ShortBlip"].recommended.for_duration == "5m"
    assert stored["StuckJob"].recommended.repeat_interval == "1d"
    assert stored["StuckJob"].recommended.threshold_adjustment != ""
    assert stored["ChattyAlert"].recommended.group_interval == "10m"
    assert stored["NoisyProbe"].recommended.threshold_adjustment != ""
    assert "for: 5m" in stored["ShortBlip"].snippet


async def test_generate_reads_prometheus_and_alertmanager(
    populated_sqlite: Running,
) -> None:
    prometheus = FakePrometheus(
        [
            rule_group(
                "disk",
                [alerting_rule("FlappingDisk", expr="disk_free < 0.1", duration=120)],
                interval=30,
            )
        ]
    )
    async with prometheus, FakeAlertmanager(ALERTMANAGER_CONFIG) as alertmanager:
        stub = await populated_sqlite.recommender(
            PROMETHEUS_URL=prometheus.url, ALERTMANAGER_URL=alertmanager.url
        )
        counts = await stub.GenerateRecommendations(GENERATE, timeout=120)
    stored = await all_recommendations(stub)
    flapping = stored["FlappingDisk"]
    chatty = stored["ChattyAlert"]

    assert counts.rule_config_source == recommender_pb2.CONFIG_SOURCE_PROMETHEUS
    assert flapping.current.for_duration == "2m"
    assert flapping.current.evaluation_interval == "30s"
    assert flapping.recommended.for_duration == "5m"
    assert flapping.config_source == recommender_pb2.CONFIG_SOURCE_PROMETHEUS
    assert "expr: disk_free < 0.1" in flapping.snippet
    assert chatty.current.repeat_interval == "1h"
    assert chatty.recommended.repeat_interval == "4h"
    assert chatty.config_source == recommender_pb2.CONFIG_SOURCE_ALERTMANAGER
    assert "receiver: team-chatty" in chatty.snippet
    assert prometheus.requests == ["/api/v1/rules?type=alert"]


async def test_generate_failed_api_falls_back(populated_sqlite: Running) -> None:
    async with FakePrometheus() as prometheus:
        prometheus.status = 503
        stub = await populated_sqlite.recommender(PROMETHEUS_URL=prometheus.url)
        counts = await stub.GenerateRecommendations(GENERATE, timeout=120)
    flapping = (await all_recommendations(stub))["FlappingDisk"]

    assert counts.rule_config_source == INFERRED
    assert any("HTTP 503" in reason for reason in flapping.reasons)


def answer(**fields: str) -> dict[str, Any]:
    base = {
        "evaluation_interval": "",
        "for_duration": "15m",
        "group_interval": "",
        "repeat_interval": "",
        "threshold_adjustment": "",
        "reasoning": "A longer for filters the flaps.",
        "impact_estimate": "About 8 pages fewer a week.",
    }
    return {**base, **fields}


async def test_generate_model_answer_used(populated_sqlite: Running) -> None:
    async with FakeLLM() as llm:
        for name in EXPECTED_PROBLEMS:
            llm.enqueue(completion(answer()), match=name)
        stub = await populated_sqlite.recommender(LLM_PROXY_URL=llm.url)
        counts = await stub.GenerateRecommendations(GENERATE, timeout=120)
        requests = list(llm.completion_requests)
    flapping = (await all_recommendations(stub))["FlappingDisk"]

    schema = requests[0].body["response_format"]["json_schema"]["schema"]
    assert counts.from_model == len(EXPECTED_PROBLEMS)
    assert flapping.origin == MODEL
    assert flapping.recommended.for_duration == "15m"
    assert flapping.impact_estimate == "About 8 pages fewer a week."
    assert flapping.model == "fake-model"
    assert "for: 15m" in flapping.snippet
    assert set(schema["required"]) >= {"for_duration", "impact_estimate"}


BAD_ANSWERS = [
    ("invalid_json", completion("The for should be longer.")),
    ("length", completion('{"for_duration": "15m", "reas', finish_reason="length")),
    ("invalid_schema", completion(answer(for_duration="soon"))),
    ("invalid_schema", completion({"for_duration": "15m"})),
    ("invalid_schema", completion(answer(for_duration="", reasoning="nothing"))),
    ("refusal", completion(refusal="I cannot help with that.")),
]


@pytest.mark.parametrize(
    ("reason", "reply"),
    BAD_ANSWERS,
    ids=[f"{r}-{i}" for i, (r, _) in enumerate(BAD_ANSWERS)],
)
async def test_generate_bad_answer_falls_back(
    populated_sqlite: Running, reason: str, reply: dict[str, Any]
) -> None:
    async with FakeLLM() as llm:
        for name in EXPECTED_PROBLEMS:
            llm.enqueue(reply, match=name)
        stub = await populated_sqlite.recommender(LLM_PROXY_URL=llm.url)
        counts = await stub.GenerateRecommendations(GENERATE, timeout=120)
    flapping = (await all_recommendations(stub))["FlappingDisk"]

    assert counts.from_rules == len(EXPECTED_PROBLEMS)
    assert flapping.origin == RULES
    assert flapping.fallback_reason == reason
    assert flapping.recommended.for_duration == "5m"


async def test_generate_http_error_falls_back(populated_sqlite: Running) -> None:
    async with FakeLLM() as llm:
        for _ in EXPECTED_PROBLEMS:
            llm.enqueue(status=500, body="upstream failed")
        stub = await populated_sqlite.recommender(
            LLM_PROXY_URL=llm.url, LLM_MAX_ATTEMPTS="1"
        )
        await stub.GenerateRecommendations(GENERATE, timeout=120)
    flapping = (await all_recommendations(stub))["FlappingDisk"]

    assert flapping.fallback_reason == "http_error"


async def test_generate_model_sees_data_block(populated_sqlite: Running) -> None:
    async with FakeLLM() as llm:
        stub = await populated_sqlite.recommender(LLM_PROXY_URL=llm.url)
        await stub.GenerateRecommendations(GENERATE, timeout=120)
        requests = list(llm.completion_requests)

    user = requests[0].messages[1]["content"]
    data = json.loads(user.split("\n")[2])
    assert data["problems"] != []
    assert "statistics" in data


async def test_generate_twice_keeps_one_set(populated: Running) -> None:
    stub = await populated.recommender()

    await stub.GenerateRecommendations(GENERATE, timeout=120)
    again = await stub.GenerateRecommendations(GENERATE, timeout=120)
    stored = await all_recommendations(stub)

    assert again.created == 0
    assert again.unchanged == len(EXPECTED_PROBLEMS)
    assert len(stored) == len(EXPECTED_PROBLEMS)


@pytest.mark.parametrize("lock", ["database", "redis"])
async def test_generate_two_replicas_one_set(populated: Running, lock: str) -> None:
    environ = {"REDIS_URL": "redis://127.0.0.1:6379/0"} if lock == "redis" else {}
    async with FakeLLM(delay=0.3) as llm:
        first = await populated.recommender(LLM_PROXY_URL=llm.url, **environ)
        second = await populated.recommender(LLM_PROXY_URL=llm.url, **environ)
        results = await asyncio.gather(
            first.GenerateRecommendations(GENERATE, timeout=120),
            second.GenerateRecommendations(GENERATE, timeout=120),
        )
    stored = await all_recommendations(first)

    assert sorted(r.already_running for r in results) == [False, True]
    assert sum(r.created for r in results) == len(EXPECTED_PROBLEMS)
    assert len(stored) == len(EXPECTED_PROBLEMS)


async def test_status_update_and_filter(populated: Running) -> None:
    stub = await populated.recommender()
    await stub.GenerateRecommendations(GENERATE, timeout=120)
    target = (await all_recommendations(stub))["StuckJob"]

    updated = await stub.UpdateRecommendationStatus(
        recommender_pb2.UpdateRecommendationStatusRequest(
            id=target.id, status=recommender_pb2.RECOMMENDATION_STATUS_APPLIED
        ),
        timeout=5,
    )
    applied = await all_recommendations(
        stub, status=recommender_pb2.RECOMMENDATION_STATUS_APPLIED
    )
    again = await stub.GenerateRecommendations(GENERATE, timeout=120)
    after = (await all_recommendations(stub))["StuckJob"]

    assert (
        updated.recommendation.status == recommender_pb2.RECOMMENDATION_STATUS_APPLIED
    )
    assert list(applied) == ["StuckJob"]
    assert again.unchanged == len(EXPECTED_PROBLEMS)
    assert after.status == recommender_pb2.RECOMMENDATION_STATUS_APPLIED


async def test_status_unknown_id_not_found(running: Running) -> None:
    stub = await running.recommender()

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.UpdateRecommendationStatus(
            recommender_pb2.UpdateRecommendationStatusRequest(
                id=4242, status=recommender_pb2.RECOMMENDATION_STATUS_REJECTED
            ),
            timeout=5,
        )

    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_status_unspecified_invalid(running: Running) -> None:
    stub = await running.recommender()

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.UpdateRecommendationStatus(
            recommender_pb2.UpdateRecommendationStatusRequest(id=1), timeout=5
        )

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "status" in (raised.value.details() or "")


async def test_list_filters_by_namespace(populated: Running) -> None:
    stub = await populated.recommender()
    await stub.GenerateRecommendations(GENERATE, timeout=120)

    dev = await all_recommendations(stub, namespace="dev")

    assert list(dev) == ["NoisyProbe"]


async def test_list_pages_with_cursor(populated_sqlite: Running) -> None:
    stub = await populated_sqlite.recommender()
    await stub.GenerateRecommendations(GENERATE, timeout=120)

    first = await stub.ListRecommendations(
        recommender_pb2.ListRecommendationsRequest(limit=3), timeout=10
    )
    second = await stub.ListRecommendations(
        recommender_pb2.ListRecommendationsRequest(limit=3, cursor=first.next_cursor),
        timeout=10,
    )

    names = [r.alert_name for r in [*first.recommendations, *second.recommendations]]
    assert sorted(names) == sorted(EXPECTED_PROBLEMS)
    assert second.next_cursor == ""


async def test_generate_history_down_unavailable(running: Running) -> None:
    stub = await running.recommender()
    await running.history.stop()

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GenerateRecommendations(GENERATE, timeout=20)

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
