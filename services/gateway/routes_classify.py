"""HTTP routes of the gateway for classification.

- `POST /classify` classifies one Alertmanager alert object, as found in a
  webhook's `alerts[]`, without storing anything.
- `POST /classify/batch` classifies stored occurrences by id, at most
  MAX_BATCH_IDS at once, and records each verdict for the occurrence's latest
  state change. A state change keeps its first classification, so
  `recorded` is false where one was already stored. Unknown ids fail the
  whole request with 404 and the list of those ids; nothing is classified.
- `GET /classification/{id}` returns the latest classification stored for
  occurrence `id`, or 404.

Each verdict is shaped by `libs.convert.classification`. The current
enrichment mode (`MODE_KEY`) decides whether a model may be asked.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.duration_pb2 import Duration

from alerthistory.alert.v1 import alert_pb2
from alerthistory.classifier.v1 import classifier_pb2
from alerthistory.history.v1 import history_pb2
from libs import convert
from libs.alerts import parse_alert
from libs.batching import split_by_size
from libs.errors import InvalidInputError
from services.gateway.keys import CLIENTS_KEY, MODE_KEY, SETTINGS_KEY
from services.gateway.responses import json_error, not_json_message

MAX_BATCH_IDS = 100
# Seconds added to the classification budget for the classifier's deadline.
CLASSIFY_MARGIN = 2.0
READ_DEADLINE = 5.0
RECORD_DEADLINE = 5.0
# GetOccurrence calls in flight for one batch request.
FETCH_CONCURRENCY = 10


async def classify(request: web.Request) -> web.Response:
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    try:
        alert = parse_alert(body)
    except InvalidInputError as exc:
        return json_error(400, str(exc))

    mode, request_mode = await _mode(request)
    budget = request.app[SETTINGS_KEY].pipeline_budget_seconds
    response = await request.app[CLIENTS_KEY].classifier.Classify(
        classifier_pb2.ClassifyRequest(
            alert=alert, mode=request_mode, budget=_duration(budget)
        ),
        timeout=budget + CLASSIFY_MARGIN,
    )
    return web.json_response(
        {
            "fingerprint": alert.fingerprint,
            "mode": mode,
            "classification": convert.classification(response.classification),
        }
    )


async def classify_batch(request: web.Request) -> web.Response:
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    try:
        ids = _occurrence_ids(body)
    except InvalidInputError as exc:
        return json_error(400, str(exc), parameter="ids")

    occurrences, missing = await _fetch_occurrences(request, ids)
    if missing:
        listed = ", ".join(str(i) for i in missing)
        return json_error(404, f"occurrences not found: {listed}", ids=missing)

    mode, request_mode = await _mode(request)
    verdicts = await _classify_occurrences(request, occurrences, request_mode)
    recorded = await _record(request, occurrences, verdicts)
    results = [
        {
            "id": item.id,
            "fingerprint": item.fingerprint,
            "state_change_id": _latest_change(item).id,
            "recorded": _latest_change(item).id in recorded,
            "classification": convert.classification(verdict),
        }
        for item, verdict in zip(occurrences, verdicts, strict=True)
    ]
    return web.json_response({"mode": mode, "results": results})


async def latest_classification(request: web.Request) -> web.Response:
    raw = request.match_info["id"]
    if not raw.isdigit() or int(raw) < 1:
        return json_error(400, "id must be a positive whole number", parameter="id")
    occurrence_id = int(raw)
    response = await request.app[CLIENTS_KEY].history.GetOccurrence(
        history_pb2.GetOccurrenceRequest(id=occurrence_id), timeout=READ_DEADLINE
    )
    item = response.occurrence
    for change in reversed(item.state_changes):
        if change.HasField("classification"):
            return web.json_response(
                {
                    "id": item.id,
                    "fingerprint": item.fingerprint,
                    "state_change_id": change.id,
                    "classification": convert.classification(change.classification),
                }
            )
    return json_error(404, f"occurrence {occurrence_id} has no classification yet")


async def _json_body(request: web.Request) -> Any:
    """Return the decoded JSON body, or a 400 response when it is not JSON."""
    try:
        return await request.json()
    except ValueError as exc:
        return json_error(400, not_json_message(exc))


def _occurrence_ids(body: Any) -> list[int]:
    """Return the distinct occurrence ids of a batch body, in the order sent."""
    ids = body.get("ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not ids:
        raise InvalidInputError(
            'body must be JSON such as {"ids": [1, 2]} with at least one id'
        )
    if len(ids) > MAX_BATCH_IDS:
        raise InvalidInputError(
            f"ids has {len(ids)} entries, more than the maximum of {MAX_BATCH_IDS}"
        )
    for value in ids:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidInputError(
                f"ids must be positive whole numbers, not {str(value)[:40]!r}"
            )
    return list(dict.fromkeys(ids))


async def _fetch_occurrences(
    request: web.Request, ids: list[int]
) -> tuple[list[history_pb2.Occurrence], list[int]]:
    """Return the found occurrences in order and the ids that do not exist."""
    history = request.app[CLIENTS_KEY].history
    slots = asyncio.Semaphore(FETCH_CONCURRENCY)

    async def fetch(occurrence_id: int) -> history_pb2.Occurrence | None:
        async with slots:
            try:
                response = await history.GetOccurrence(
                    history_pb2.GetOccurrenceRequest(id=occurrence_id),
                    timeout=READ_DEADLINE,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                raise
        occurrence: history_pb2.Occurrence = response.occurrence
        return occurrence

    found = await asyncio.gather(*(fetch(i) for i in ids))
    missing = [i for i, item in zip(ids, found, strict=True) if item is None]
    return [item for item in found if item is not None], missing


async def _classify_occurrences(
    request: web.Request,
    occurrences: list[history_pb2.Occurrence],
    request_mode: classifier_pb2.EnrichmentMode,
) -> list[alert_pb2.Classification]:
    settings = request.app[SETTINGS_KEY]
    classifier = request.app[CLIENTS_KEY].classifier
    budget = settings.pipeline_budget_seconds
    alerts = [_alert(item) for item in occurrences]
    verdicts: list[alert_pb2.Classification] = []
    for chunk in split_by_size(
        alerts, settings.grpc_max_message_bytes, settings.classifier_max_batch
    ):
        response = await classifier.BatchClassify(
            classifier_pb2.BatchClassifyRequest(
                alerts=chunk, mode=request_mode, budget=_duration(budget)
            ),
            timeout=budget + CLASSIFY_MARGIN,
        )
        verdicts.extend(response.classifications)
    return verdicts


async def _record(
    request: web.Request,
    occurrences: list[history_pb2.Occurrence],
    verdicts: list[alert_pb2.Classification],
) -> set[int]:
    """Record verdicts for latest state changes without one; return their ids.

    NOTE: the pipeline may record a verdict between the GetOccurrence read and
    this call. History keeps that first verdict, but its id is still returned.
    """
    records = [
        history_pb2.ClassificationRecord(
            state_change_id=_latest_change(item).id, classification=verdict
        )
        for item, verdict in zip(occurrences, verdicts, strict=True)
        if _unclassified(_latest_change(item))
    ]
    if not records:
        return set()
    await request.app[CLIENTS_KEY].history.RecordClassifications(
        history_pb2.RecordClassificationsRequest(records=records),
        timeout=RECORD_DEADLINE,
    )
    return {record.state_change_id for record in records}


def _unclassified(change: history_pb2.StateChange) -> bool:
    return change.id > 0 and not change.HasField("classification")


def _latest_change(item: history_pb2.Occurrence) -> history_pb2.StateChange:
    if not item.state_changes:
        return history_pb2.StateChange()
    return item.state_changes[-1]


def _alert(item: history_pb2.Occurrence) -> alert_pb2.Alert:
    alert = alert_pb2.Alert(
        fingerprint=item.fingerprint,
        status=item.status,
        generator_url=item.generator_url,
    )
    alert.labels.update(item.labels)
    alert.annotations.update(item.annotations)
    alert.starts_at.CopyFrom(item.starts_at)
    if item.HasField("ends_at"):
        alert.ends_at.CopyFrom(item.ends_at)
    return alert


async def _mode(request: web.Request) -> tuple[str, classifier_pb2.EnrichmentMode]:
    mode, _ = await request.app[MODE_KEY].get()
    if mode == "transparent":
        return mode, classifier_pb2.ENRICHMENT_MODE_TRANSPARENT
    return mode, classifier_pb2.ENRICHMENT_MODE_ENRICHED


def _duration(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


def add_routes(app: web.Application) -> None:
    """Register this area's routes on the gateway application."""
    app.router.add_post("/classify", classify)
    app.router.add_post("/classify/batch", classify_batch)
    app.router.add_get("/classification/{id}", latest_classification)
