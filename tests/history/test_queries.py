"""History queries on SQLite and PostgreSQL: filters, pages, timelines, reports."""

from __future__ import annotations

import pytest

from alerthistory.alert.v1 import alert_pb2
from alerthistory.history.v1 import history_pb2
from libs.alerts import datetime_to_timestamp
from libs.errors import InvalidInputError, NotFoundError
from services.history import queries
from services.history.queries import OccurrenceFilter
from services.history.store import HistoryStore
from tests.history.builders import at, cycle, filter_dataset, report_dataset


@pytest.fixture
async def filtered(store: HistoryStore) -> HistoryStore:
    await filter_dataset(store)
    return store


async def fingerprints(history: HistoryStore, selected: OccurrenceFilter) -> list[str]:
    page, _ = await queries.list_occurrences(history.db, selected, limit=100)
    return [occurrence.fingerprint for occurrence in page]


FILTER_CASES = [
    ("none", OccurrenceFilter(), ["f4", "f3", "f2", "f1", "f5"]),
    ("alertname", OccurrenceFilter(alertname="DiskFull"), ["f2", "f1"]),
    ("status firing", OccurrenceFilter(status="firing"), ["f3", "f1"]),
    ("status resolved", OccurrenceFilter(status="resolved"), ["f4", "f2", "f5"]),
    ("namespace", OccurrenceFilter(namespace="dev"), ["f4", "f2"]),
    ("severity label", OccurrenceFilter(severity_label="warning"), ["f3", "f2", "f5"]),
    ("classified warning", OccurrenceFilter(classified_severity="warning"), ["f2"]),
    ("classified noise", OccurrenceFilter(classified_severity="noise"), ["f5"]),
    ("min_confidence", OccurrenceFilter(min_confidence=0.9), ["f2", "f1", "f5"]),
    ("since", OccurrenceFilter(since=at(10)), ["f4", "f3", "f2"]),
    ("until", OccurrenceFilter(until=at(10)), ["f1", "f5"]),
    ("window", OccurrenceFilter(since=at(0), until=at(30)), ["f3", "f2", "f1"]),
    (
        "combined",
        OccurrenceFilter(alertname="DiskFull", status="resolved", namespace="dev"),
        ["f2"],
    ),
]


@pytest.mark.parametrize(
    ("selected", "expected"),
    [(selected, expected) for _, selected, expected in FILTER_CASES],
    ids=[name for name, _, _ in FILTER_CASES],
)
async def test_list_filter_matches(
    filtered: HistoryStore, selected: OccurrenceFilter, expected: list[str]
) -> None:
    assert await fingerprints(filtered, selected) == expected


async def test_list_latest_classification_is_newest_change(
    filtered: HistoryStore,
) -> None:
    page, _ = await queries.list_occurrences(
        filtered.db, OccurrenceFilter(fingerprint="f2"), limit=1
    )

    latest = page[0].latest_classification
    assert latest.severity == alert_pb2.SEVERITY_WARNING
    assert latest.confidence == pytest.approx(0.95)
    assert len(page[0].state_changes) == 2


async def test_list_unclassified_has_no_latest(filtered: HistoryStore) -> None:
    page, _ = await queries.list_occurrences(
        filtered.db, OccurrenceFilter(fingerprint="f3"), limit=1
    )

    assert not page[0].HasField("latest_classification")


@pytest.mark.parametrize("limit", [0, 1001])
async def test_list_limit_out_of_range(store: HistoryStore, limit: int) -> None:
    with pytest.raises(InvalidInputError, match="limit"):
        await queries.list_occurrences(store.db, OccurrenceFilter(), limit=limit)


async def test_list_pages_hold_while_inserting(store: HistoryStore) -> None:
    for index in range(25):
        await cycle(store, f"p{index:02d}", at(index))
    expected = [f"p{index:02d}" for index in reversed(range(25))]

    first, cursor = await queries.list_occurrences(
        store.db, OccurrenceFilter(), limit=10
    )
    for index in range(25, 30):
        await cycle(store, f"p{index:02d}", at(index))
    second, cursor = await queries.list_occurrences(
        store.db, OccurrenceFilter(), limit=10, cursor=cursor
    )
    third, last_cursor = await queries.list_occurrences(
        store.db, OccurrenceFilter(), limit=10, cursor=cursor
    )

    seen = [o.fingerprint for o in [*first, *second, *third]]
    assert seen == expected
    assert last_cursor == ""


async def test_list_same_start_pages_by_id(store: HistoryStore) -> None:
    for index in range(5):
        await cycle(store, f"same{index}", at(0))

    first, cursor = await queries.list_occurrences(
        store.db, OccurrenceFilter(), limit=3
    )
    second, _ = await queries.list_occurrences(
        store.db, OccurrenceFilter(), limit=3, cursor=cursor
    )

    ids = [o.id for o in [*first, *second]]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == 5


def request(**fields: object) -> history_pb2.ListOccurrencesRequest:
    return history_pb2.ListOccurrencesRequest(limit=10, **fields)  # type: ignore[arg-type]


BAD_REQUESTS = [
    ("min_confidence", request(min_confidence=1.5)),
    ("min_confidence", request(min_confidence=-0.1)),
    (
        "since",
        request(since=datetime_to_timestamp(at(5)), until=datetime_to_timestamp(at(5))),
    ),
    ("status", request(status=7)),
    ("classified_severity", request(classified_severity=42)),
]


@pytest.mark.parametrize(
    ("parameter", "bad"), BAD_REQUESTS, ids=[p for p, _ in BAD_REQUESTS]
)
def test_filter_from_request_names_parameter(
    parameter: str, bad: history_pb2.ListOccurrencesRequest
) -> None:
    with pytest.raises(InvalidInputError, match=parameter):
        queries.filter_from_request(bad)


def test_filter_from_request_maps_severity() -> None:
    selected = queries.filter_from_request(
        request(classified_severity=alert_pb2.SEVERITY_NOISE, severity_label="page")
    )

    assert selected.classified_severity == "noise"
    assert selected.severity_label == "page"


async def test_timeline_newest_first(store: HistoryStore) -> None:
    for minutes in (0, 30, 60):
        await cycle(store, "t1", at(minutes), at(minutes + 5))
    await cycle(store, "other", at(10))

    timeline = await queries.get_timeline(store.db, "t1", limit=2)
    rest = await queries.get_timeline(
        store.db, "t1", limit=2, cursor=timeline.next_cursor
    )

    starts = [o.starts_at.ToDatetime() for o in [*timeline.occurrences]]
    assert starts == sorted(starts, reverse=True)
    assert len(rest.occurrences) == 1
    assert timeline.total_occurrences == 3
    assert timeline.total_state_changes == 6
    assert rest.next_cursor == ""


async def test_timeline_unknown_not_found(store: HistoryStore) -> None:
    with pytest.raises(NotFoundError):
        await queries.get_timeline(store.db, "missing", limit=10)


async def test_timeline_empty_fingerprint_invalid(store: HistoryStore) -> None:
    with pytest.raises(InvalidInputError, match="fingerprint"):
        await queries.get_timeline(store.db, "", limit=10)


@pytest.fixture
async def reported(store: HistoryStore) -> HistoryStore:
    await report_dataset(store)
    return store


def window() -> dict[str, object]:
    return {
        "since": datetime_to_timestamp(at(0)),
        "until": datetime_to_timestamp(at(120)),
    }


async def test_top_alerts_by_occurrences(reported: HistoryStore) -> None:
    ranked = await queries.top_alerts(
        reported.db,
        history_pb2.GetTopAlertsRequest(limit=10, **window()),  # type: ignore[arg-type]
    )

    assert [(a.alertname, a.occurrences) for a in ranked] == [
        ("Flappy", 4),
        ("Steady", 1),
    ]
    assert ranked[0].fingerprints == 2
    assert ranked[0].state_changes == 8


async def test_top_alerts_by_state_changes(reported: HistoryStore) -> None:
    ranked = await queries.top_alerts(
        reported.db,
        history_pb2.GetTopAlertsRequest(
            limit=1,
            order_by=history_pb2.TOP_ALERTS_ORDER_STATE_CHANGES,
            **window(),  # type: ignore[arg-type]
        ),
    )

    assert [(a.alertname, a.state_changes) for a in ranked] == [("Flappy", 8)]


async def test_flapping_alerts_threshold(reported: HistoryStore) -> None:
    flapping = await queries.flapping_alerts(
        reported.db,
        history_pb2.GetFlappingAlertsRequest(
            limit=10,
            min_state_changes=4,
            **window(),  # type: ignore[arg-type]
        ),
    )

    assert [(a.fingerprint, a.state_changes, a.occurrences) for a in flapping] == [
        ("f1", 6, 3)
    ]
    assert flapping[0].alertname == "Flappy"


async def test_time_to_resolve_percentiles(reported: HistoryStore) -> None:
    summary = await queries.time_to_resolve(
        reported.db,
        history_pb2.GetTimeToResolveRequest(limit=10, **window()),  # type: ignore[arg-type]
    )

    flappy = summary[0]
    assert [s.alertname for s in summary] == ["Flappy"]
    assert flappy.resolved == 4
    assert flappy.p50_seconds == pytest.approx(150.0)
    assert flappy.p90_seconds == pytest.approx(474.0)
    assert flappy.max_seconds == pytest.approx(600.0)


async def test_reports_missing_window_invalid(store: HistoryStore) -> None:
    with pytest.raises(InvalidInputError, match="since"):
        await queries.top_alerts(store.db, history_pb2.GetTopAlertsRequest(limit=10))


async def test_reports_reversed_window_invalid(store: HistoryStore) -> None:
    reversed_window = history_pb2.GetFlappingAlertsRequest(
        since=datetime_to_timestamp(at(10)), until=datetime_to_timestamp(at(0)), limit=5
    )

    with pytest.raises(InvalidInputError, match="since must be before until"):
        await queries.flapping_alerts(store.db, reversed_window)


async def test_statistics_known_window(reported: HistoryStore) -> None:
    response = await queries.alert_statistics(
        reported.db,
        history_pb2.GetAlertStatisticsRequest(
            limit=10,
            short_lived_seconds=300,
            long_firing_seconds=3600,
            flap_min_occurrences=3,
            **window(),  # type: ignore[arg-type]
        ),
    )

    flappy, steady = response.statistics
    assert (flappy.alertname, flappy.namespace) == ("Flappy", "prod")
    assert flappy.occurrences == 4
    assert flappy.fingerprints == 2
    assert flappy.resolved == 4
    assert flappy.short_lived == 3
    assert flappy.max_occurrences_per_fingerprint == 3
    assert flappy.flapping_fingerprints == 1
    assert flappy.duration_p50_seconds == pytest.approx(150.0)
    assert steady.long_firing == 1
    assert response.next_cursor == ""


async def test_statistics_pages_by_group(reported: HistoryStore) -> None:
    base = {"short_lived_seconds": 300, "long_firing_seconds": 3600, **window()}
    first = await queries.alert_statistics(
        reported.db,
        history_pb2.GetAlertStatisticsRequest(limit=1, **base),  # type: ignore[arg-type]
    )
    second = await queries.alert_statistics(
        reported.db,
        history_pb2.GetAlertStatisticsRequest(
            limit=1,
            cursor=first.next_cursor,
            **base,  # type: ignore[arg-type]
        ),
    )

    assert [s.alertname for s in first.statistics] == ["Flappy"]
    assert [s.alertname for s in second.statistics] == ["Steady"]
    assert second.next_cursor == ""


async def test_statistics_bad_cursor_invalid(store: HistoryStore) -> None:
    with pytest.raises(InvalidInputError, match="cursor"):
        await queries.alert_statistics(
            store.db,
            history_pb2.GetAlertStatisticsRequest(
                limit=1,
                cursor="bm90LWEtY3Vyc29y",
                **window(),  # type: ignore[arg-type]
            ),
        )


def test_percentile_interpolates() -> None:
    assert queries.percentile([60.0, 120.0, 180.0, 600.0], 0.9) == pytest.approx(474.0)
