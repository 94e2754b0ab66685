"""Which alerts of a batch go to which target.

Three rules decide, in this order, for each target and alert state:

1. A state (occurrence, status) that already has a delivery to the target
   is left out, whatever batch carries it again: HA peers and re-sent
   work items never page twice.
2. A resolve goes to every target that has a delivery of its occurrence's
   trigger (pending, sent or dead). The target's filter, the verdict and
   the severity floor no longer matter, and a disabled target gets it too,
   where it waits until the target is enabled again. So every incident
   opened downstream gets its resolve.
3. Anything else goes to an enabled target when its filter passes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from alerthistory.publisher.v1 import publisher_pb2
from services.publisher.encoding import STATUS_NAMES, occurrence_key
from services.publisher.filters import FilterReason, drop_reason
from services.publisher.store import DeliveredStates
from services.publisher.targets import Target


@dataclass
class TargetPlan:
    """The alerts selected for one target and why the others were not."""

    target: Target
    selected: list[publisher_pb2.PublishAlert] = field(default_factory=list)
    dropped: list[FilterReason] = field(default_factory=list)
    # Resolves selected because the target has their trigger.
    followed: int = 0
    # States left out because the target already has a delivery of them.
    duplicates: int = 0


def plan_targets(
    targets: Sequence[Target],
    alerts: Sequence[publisher_pb2.PublishAlert],
    delivered: DeliveredStates,
) -> list[TargetPlan]:
    """Select each target's alerts by the rules in the module docstring."""
    return [plan_target(target, alerts, delivered) for target in targets]


def plan_target(
    target: Target,
    alerts: Sequence[publisher_pb2.PublishAlert],
    delivered: DeliveredStates,
) -> TargetPlan:
    plan = TargetPlan(target)
    for item in alerts:
        key = occurrence_key(item.alert)
        status = STATUS_NAMES[item.alert.status]
        if target.name in delivered.get((key, status), frozenset()):
            plan.duplicates += 1
            continue
        has_trigger = target.name in delivered.get((key, "firing"), frozenset())
        if status == "resolved" and has_trigger:
            plan.selected.append(item)
            plan.followed += 1
            continue
        if not target.enabled:
            continue
        reason = drop_reason(target.filter, item.alert, item.classification)
        if reason is None:
            plan.selected.append(item)
        else:
            plan.dropped.append(reason)
    return plan
