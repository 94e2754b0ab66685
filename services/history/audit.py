"""The audit log of changes made through the gateway's API.

The history service serves `alerthistory.audit.v1.AuditService` next to its
own service and keeps the events in its database, in a table with its own
migrations (component "audit").
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from datetime import UTC, datetime

import grpc

from alerthistory.audit.v1 import audit_pb2, audit_pb2_grpc
from libs.alerts import datetime_to_timestamp, timestamp_to_datetime
from libs.db import Database, Migration
from libs.errors import InvalidInputError
from libs.grpcserver import abort_with

logger = logging.getLogger(__name__)

COMPONENT = "audit"
SERVICE_NAME = "alerthistory.audit.v1.AuditService"
MAX_LIST_LIMIT = 1000
MAX_DETAIL_CHARACTERS = 2000

MIGRATIONS = [
    Migration(
        1,
        "audit events",
        (
            "CREATE TABLE audit_events ("
            " id {id},"
            " occurred_at TIMESTAMPTZ NOT NULL,"
            " actor TEXT NOT NULL,"
            " action TEXT NOT NULL,"
            " path TEXT NOT NULL,"
            " status_code INTEGER NOT NULL,"
            " detail TEXT NOT NULL)",
            "CREATE INDEX audit_events_actor ON audit_events (actor, id)",
        ),
    )
]


def _now() -> datetime:
    return datetime.now(UTC)


class AuditStore:
    """Reads and writes the audit_events table."""

    def __init__(self, db: Database, clock: Callable[[], datetime] = _now) -> None:
        self.db = db
        self._clock = clock

    async def record(self, event: audit_pb2.Event) -> audit_pb2.Event:
        if not event.actor or not event.action:
            raise InvalidInputError("an audit event needs an actor and an action")
        occurred_at = (
            timestamp_to_datetime(event.occurred_at)
            if event.HasField("occurred_at")
            else self._clock()
        )
        row_id = await self.db.fetchval(
            "INSERT INTO audit_events"
            " (occurred_at, actor, action, path, status_code, detail)"
            " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            occurred_at,
            event.actor[:200],
            event.action[:200],
            event.path[:500],
            event.status_code,
            event.detail[:MAX_DETAIL_CHARACTERS],
        )
        stored = audit_pb2.Event()
        stored.CopyFrom(event)
        stored.id = int(row_id)
        stored.occurred_at.CopyFrom(datetime_to_timestamp(occurred_at))
        return stored

    async def list(
        self, limit: int, cursor: str = "", actor: str = ""
    ) -> tuple[list[audit_pb2.Event], str]:
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidInputError(f"limit must be from 1 to {MAX_LIST_LIMIT}")
        conditions: list[str] = []
        params: list[object] = []
        if cursor:
            params.append(_decode_cursor(cursor))
            conditions.append(f"id < ${len(params)}")
        if actor:
            params.append(actor)
            conditions.append(f"actor = ${len(params)}")
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = await self.db.fetch(
            f"SELECT * FROM audit_events{where}"
            f" ORDER BY id DESC LIMIT ${len(params) + 1}",
            *params,
            limit + 1,
        )
        events = [
            audit_pb2.Event(
                id=row["id"],
                occurred_at=datetime_to_timestamp(row["occurred_at"]),
                actor=row["actor"],
                action=row["action"],
                path=row["path"],
                status_code=row["status_code"],
                detail=row["detail"],
            )
            for row in rows[:limit]
        ]
        next_cursor = _encode_cursor(events[-1].id) if len(rows) > limit else ""
        return events, next_cursor


def _encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"audit:{last_id}".encode()).decode()


def _decode_cursor(cursor: str) -> int:
    try:
        prefix, _, value = base64.urlsafe_b64decode(cursor).decode().partition(":")
        if prefix != "audit":
            raise ValueError(prefix)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInputError("cursor is invalid: pass a next_cursor") from None


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """gRPC front of the audit store."""

    def __init__(self, store: AuditStore) -> None:
        self.store = store

    async def RecordEvent(
        self,
        request: audit_pb2.RecordEventRequest,
        context: grpc.aio.ServicerContext,
    ) -> audit_pb2.RecordEventResponse:
        try:
            event = await self.store.record(request.event)
        except Exception as exc:
            await abort_with(context, exc)
        logger.info(
            "audit event recorded",
            extra={"actor": event.actor, "action": event.action},
        )
        return audit_pb2.RecordEventResponse(event=event)

    async def ListEvents(
        self,
        request: audit_pb2.ListEventsRequest,
        context: grpc.aio.ServicerContext,
    ) -> audit_pb2.ListEventsResponse:
        try:
            events, next_cursor = await self.store.list(
                request.limit, request.cursor, request.actor
            )
        except Exception as exc:
            await abort_with(context, exc)
        return audit_pb2.ListEventsResponse(events=events, next_cursor=next_cursor)
