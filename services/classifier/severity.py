"""The severity classes a verdict assigns."""

from __future__ import annotations

from enum import StrEnum


class Severity(StrEnum):
    """The four classes a verdict assigns, as the model names them."""

    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"
    NOISE = "noise"
