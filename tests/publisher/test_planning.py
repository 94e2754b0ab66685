"""Which alert states go to which target."""

from __future__ import annotations

from alerthistory.alert.v1 import alert_pb2
from alerthistory.publisher.v1 import publisher_pb2
from services.publisher.encoding import occurrence_key
from services.publisher.planning import plan_target
from services.publisher.store import DeliveredStates
from services.publisher.targets import Target, TargetFilter
from tests.publisher.conftest import publish_alert

CRITICAL_ONLY = TargetFilter(severities=frozenset({"critical"}))


def target(name: str = "t", **values: object) -> Target:
    return Target(name=name, format="webhook", url="https://h.example/", **values)  # type: ignore[arg-type]


def resolved_alert(severity: str = "critical") -> publisher_pb2.PublishAlert:
    item = publish_alert(severity=severity)
    item.alert.status = alert_pb2.ALERT_STATUS_RESOLVED
    return item


def delivered(
    item: publisher_pb2.PublishAlert, status: str, *names: str
) -> DeliveredStates:
    return {(occurrence_key(item.alert), status): frozenset(names)}


def test_plan_filter_passes() -> None:
    plan = plan_target(target(), [publish_alert()], {})

    assert len(plan.selected) == 1


def test_plan_filter_drops_with_reason() -> None:
    plan = plan_target(
        target(filter=CRITICAL_ONLY), [publish_alert(severity="info")], {}
    )

    assert plan.selected == []
    assert plan.dropped == ["severity"]


def test_plan_state_delivered_before_left_out() -> None:
    item = publish_alert()

    plan = plan_target(target(), [item], delivered(item, "firing", "t"))

    assert plan.selected == []
    assert plan.duplicates == 1


def test_plan_state_of_other_target_kept() -> None:
    item = publish_alert()

    plan = plan_target(target(), [item], delivered(item, "firing", "other"))

    assert len(plan.selected) == 1


def test_plan_resolve_follows_trigger_past_filter() -> None:
    item = resolved_alert(severity="noise")
    rules = TargetFilter(severities=frozenset({"critical"}), exclude_noise=True)

    plan = plan_target(target(filter=rules), [item], delivered(item, "firing", "t"))

    assert len(plan.selected) == 1
    assert plan.followed == 1


def test_plan_lone_resolve_filtered() -> None:
    plan = plan_target(target(filter=CRITICAL_ONLY), [resolved_alert("info")], {})

    assert plan.selected == []


def test_plan_lone_resolve_passing_filter_sent() -> None:
    plan = plan_target(target(), [resolved_alert()], {})

    assert len(plan.selected) == 1


def test_plan_disabled_target_gets_followed_resolve() -> None:
    item = resolved_alert()

    plan = plan_target(target(enabled=False), [item], delivered(item, "firing", "t"))

    assert len(plan.selected) == 1


def test_plan_disabled_target_gets_nothing_new() -> None:
    plan = plan_target(target(enabled=False), [publish_alert()], {})

    assert plan.selected == []


def test_plan_resolve_sent_once() -> None:
    item = resolved_alert()
    states = {
        (occurrence_key(item.alert), "firing"): frozenset({"t"}),
        (occurrence_key(item.alert), "resolved"): frozenset({"t"}),
    }

    plan = plan_target(target(), [item], states)

    assert plan.selected == []


def test_plan_new_occurrence_not_a_duplicate() -> None:
    first = publish_alert()
    later = publish_alert()
    later.alert.starts_at.FromSeconds(first.alert.starts_at.seconds + 3600)

    plan = plan_target(target(), [later], delivered(first, "firing", "t"))

    assert len(plan.selected) == 1
