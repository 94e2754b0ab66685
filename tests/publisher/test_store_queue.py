"""How the store records batches, which deliveries it leases (group heads only)
and when targets are due."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from services.publisher.store import (
    AttemptResult,
    DeliveredAlert,
    DeliveredStates,
    DeliveryStore,
    FinishedAttempt,
    NewDelivery,
    Outcome,
    PlannedBatch,
    Planner,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LEASE = timedelta(seconds=60)
LEASE_UNTIL = NOW + LEASE


def delivery(group_key: str, part: int, target: str = "hook") -> NewDelivery:
    return NewDelivery(
        target=target,
        part=part,
        format="webhook",
        group_key=group_key,
        idempotency_key=f"{group_key}-{part}",
        body="{}",
        alerts=(),
    )


async def record(store: DeliveryStore, batch_id: str, *items: NewDelivery) -> None:
    await store.record_batch(batch_id, len(items), items, NOW)


async def test_claim_one_per_group(store: DeliveryStore) -> None:
    await record(store, "b1", delivery("g1", 0), delivery("g2", 1))
    await record(store, "b2", delivery("g1", 0), delivery("g2", 1))

    claimed = await store.claim("hook", 10, "worker", NOW, LEASE_UNTIL)

    assert [d.batch_id for d in claimed] == ["b1", "b1"]


async def test_claim_leased_head_blocks_group(store: DeliveryStore) -> None:
    await record(store, "b1", delivery("g1", 0))
    await record(store, "b2", delivery("g1", 0))
    await store.claim("hook", 1, "worker-a", NOW, LEASE_UNTIL)

    claimed = await store.claim("hook", 10, "worker-b", NOW, LEASE_UNTIL)

    assert claimed == []


async def test_claim_respects_limit(store: DeliveryStore) -> None:
    await record(store, "b1", *(delivery(f"g{index}", index) for index in range(5)))

    claimed = await store.claim("hook", 3, "worker", NOW, LEASE_UNTIL)

    assert len(claimed) == 3


async def test_claim_other_target_ignored(store: DeliveryStore) -> None:
    await record(store, "b1", delivery("g1", 0, target="other"))

    claimed = await store.claim("hook", 10, "worker", NOW, LEASE_UNTIL)

    assert claimed == []


async def test_due_times_lease_expiry(store: DeliveryStore) -> None:
    await record(store, "b1", delivery("g1", 0))
    await record(store, "b2", delivery("g1", 0))
    await store.claim("hook", 1, "worker", NOW, LEASE_UNTIL)

    due = await store.due_times()

    assert due == {"hook": LEASE_UNTIL}


async def test_due_times_per_target(store: DeliveryStore) -> None:
    await record(store, "b1", delivery("g1", 0), delivery("g1", 1, target="other"))

    due = await store.due_times()

    assert set(due) == {"hook", "other"}


def carrying(group_key: str, key: str, status: str) -> NewDelivery:
    alert = DeliveredAlert("f1", status, 1 if status == "firing" else 2, key)
    return dataclasses.replace(delivery(group_key, 0), alerts=(alert,))


async def test_record_batches_see_earlier_batches(store: DeliveryStore) -> None:
    seen: list[DeliveredStates] = []

    def planner(*items: NewDelivery) -> Planner:
        def plan(delivered: DeliveredStates) -> list[NewDelivery]:
            seen.append(dict(delivered))
            return list(items)

        return plan

    results = await store.record_planned_batches(
        [
            PlannedBatch("b1", 1, ["k1"], planner(carrying("g1", "k1", "firing"))),
            PlannedBatch("b2", 1, ["k1"], planner(carrying("g1", "k1", "resolved"))),
            PlannedBatch("b1", 1, ["k1"], planner()),
        ],
        NOW,
    )

    assert results == [True, True, False]
    assert seen == [{}, {("k1", "firing"): frozenset({"hook"})}]
    claimed = await store.claim("hook", 10, "worker", NOW, LEASE_UNTIL)
    assert [d.batch_id for d in claimed] == ["b1"]


async def test_record_batches_failure_stays_with_its_batch(
    store: DeliveryStore,
) -> None:
    def failing(delivered: DeliveredStates) -> list[NewDelivery]:
        raise RuntimeError("planner failed")

    results = await store.record_planned_batches(
        [
            PlannedBatch("b1", 1, [], lambda _: [delivery("g1", 0)]),
            PlannedBatch("b2", 1, [], failing),
            PlannedBatch("b3", 1, [], lambda _: [delivery("g3", 0)]),
        ],
        NOW,
    )

    assert results[0] is True
    assert results[2] is True
    assert isinstance(results[1], RuntimeError)
    claimed = await store.claim("hook", 10, "worker", NOW, LEASE_UNTIL)
    assert sorted(d.batch_id for d in claimed) == ["b1", "b3"]


async def test_claim_looks_at_oldest_window_only(
    store: DeliveryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("services.publisher.store.CLAIM_WINDOW", 3)
    await record(store, "b1", delivery("g1", 0), delivery("g2", 1))
    await record(store, "b2", delivery("g1", 0), delivery("g3", 1))

    first = await store.claim("hook", 10, "worker", NOW, LEASE_UNTIL)
    # Once the oldest leave the queue, the window moves on.
    for claimed in first:
        await store.db.execute(
            "UPDATE publisher_deliveries SET state = 'succeeded' WHERE id = $1",
            claimed.id,
        )
    second = await store.claim("hook", 10, "worker", NOW, LEASE_UNTIL)

    assert [(d.batch_id, d.part) for d in first] == [("b1", 0), ("b1", 1)]
    assert [(d.batch_id, d.part) for d in second] == [("b2", 0), ("b2", 1)]


RESULT = AttemptResult(
    attempted_at=NOW,
    duration_seconds=0.25,
    status_code=503,
    error="HTTP 503",
    response_body="busy",
)


async def test_finish_attempt_stores_outcome(store: DeliveryStore) -> None:
    await record(store, "b1", delivery("g1", 0))
    [claimed] = await store.claim("hook", 1, "worker", NOW, LEASE_UNTIL)
    retry_at = NOW + timedelta(seconds=5)

    finished = FinishedAttempt(
        claimed, RESULT, Outcome("pending", retry_at, "retrying")
    )
    [stored] = await store.finish_attempts([finished], "worker", NOW)

    assert stored is True
    record_after = await store.get(claimed.id)
    assert record_after is not None
    assert (record_after.state, record_after.attempts) == ("pending", 1)
    assert record_after.last_error == "retrying"
    attempts = await store.attempts(claimed.id)
    assert [(a.attempt, a.status_code, a.error) for a in attempts] == [
        (1, 503, "HTTP 503")
    ]
    assert attempts[0].duration_seconds == pytest.approx(0.25)


async def test_finish_attempt_lost_lease_stores_nothing(store: DeliveryStore) -> None:
    await record(store, "b1", delivery("g1", 0))
    [claimed] = await store.claim("hook", 1, "worker-a", NOW, LEASE_UNTIL)
    later = LEASE_UNTIL + timedelta(seconds=1)
    [taken_over] = await store.claim("hook", 1, "worker-b", later, later + LEASE)

    finished = FinishedAttempt(claimed, RESULT, Outcome("succeeded", later))
    [stored] = await store.finish_attempts([finished], "worker-a", later)

    assert taken_over.id == claimed.id
    assert stored is False
    assert await store.attempts(claimed.id) == []


async def test_finish_attempts_stores_each_held_lease(store: DeliveryStore) -> None:
    await record(store, "b1", *(delivery(f"g{index}", index) for index in range(3)))
    first, second, third = await store.claim("hook", 3, "worker-a", NOW, LEASE_UNTIL)
    later = LEASE_UNTIL + timedelta(seconds=1)
    # worker-a gives up the first and third leases, and worker-b takes the
    # first over.
    await store.release([first.id, third.id], "worker-a")
    [taken_over] = await store.claim("hook", 1, "worker-b", later, later + LEASE)
    assert taken_over.id == first.id
    retry_at = later + timedelta(seconds=5)

    stored = await store.finish_attempts(
        [
            FinishedAttempt(first, RESULT, Outcome("succeeded", later)),
            FinishedAttempt(second, RESULT, Outcome("pending", retry_at, "retry")),
            FinishedAttempt(third, RESULT, Outcome("dead", later, "gave up")),
        ],
        "worker-a",
        later,
    )

    assert stored == [False, True, False]
    after = await store.get(second.id)
    assert after is not None
    assert (after.state, after.attempts, after.last_error) == ("pending", 1, "retry")
    assert [a.attempt for a in await store.attempts(second.id)] == [1]
    assert await store.attempts(first.id) == []
    assert await store.attempts(third.id) == []


async def test_finish_attempts_completes_final_states(
    store: DeliveryStore,
) -> None:
    await record(store, "b1", delivery("g1", 0), delivery("g2", 1))
    done, failed = await store.claim("hook", 2, "worker", NOW, LEASE_UNTIL)

    stored = await store.finish_attempts(
        [
            FinishedAttempt(done, RESULT, Outcome("succeeded", NOW)),
            FinishedAttempt(failed, RESULT, Outcome("dead", NOW, "gave up")),
        ],
        "worker",
        NOW,
    )

    assert stored == [True, True]
    records = [await store.get(done.id), await store.get(failed.id)]
    assert [(r.state, r.completed_at) for r in records if r is not None] == [
        ("succeeded", NOW),
        ("dead", NOW),
    ]


async def test_finish_attempts_rejects_duplicates(
    store: DeliveryStore,
) -> None:
    await record(store, "b1", delivery("g1", 0))
    [claimed] = await store.claim("hook", 1, "worker", NOW, LEASE_UNTIL)
    item = FinishedAttempt(claimed, RESULT, Outcome("succeeded", NOW))

    with pytest.raises(ValueError, match="a delivery twice"):
        await store.finish_attempts([item, item], "worker", NOW)

    assert await store.attempts(claimed.id) == []
