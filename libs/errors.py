"""One exception hierarchy for every service.

Servicers map these to gRPC status codes (`libs.grpcserver`) and the gateway
maps gRPC codes to HTTP statuses; nothing else translates errors. Each error
states whether a retry can help and carries a short, bounded reason code.
"""

from __future__ import annotations


class AlertHistoryError(Exception):
    """Base of every error the product raises on purpose."""

    retryable = False
    reason = "internal"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class InvalidInputError(AlertHistoryError):
    """The input can never be valid; retrying it cannot help."""

    reason = "invalid_input"


class NotFoundError(AlertHistoryError):
    """The named object does not exist."""

    reason = "not_found"


class UnavailableError(AlertHistoryError):
    """A dependency (database, cache, peer service) cannot be reached now."""

    retryable = True
    reason = "unavailable"


class DeadlineError(AlertHistoryError):
    """An operation ran out of its time budget."""

    retryable = True
    reason = "deadline_exceeded"
