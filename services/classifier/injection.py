"""Detection of alert text that reads like instructions to a model.

Labels and annotations come from rule files and from the monitored systems
themselves (pod names, log lines), so an attacker who controls such a value
can try to steer the model. A match only adds the `instruction_like_text`
flag: the verdict is still protected by the JSON encoding of the prompt and
by the severity floor. The patterns favour recall, so a harmless text such as
"failed to respond with a valid certificate" is flagged too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# Only the first characters of each value are scanned, to bound the work.
MAX_SCANNED_CHARS = 8192

INSTRUCTION_PATTERNS: tuple[re.Pattern[str], ...] = (
    # Attempts to cancel or replace the prompt.
    re.compile(
        r"\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+|the\s+|your\s+)*"
        r"(?:previous|prior|above|earlier|preceding|system|original)\b",
        re.IGNORECASE,
    ),
    re.compile(r"\bnew\s+(?:instructions?|rules?|task)\b", re.IGNORECASE),
    re.compile(r"\byou\s+are\s+now\b", re.IGNORECASE),
    # Chat roles written as message headers: "SYSTEM:" anywhere, or
    # "system:" at the start of a line.
    re.compile(r"\b(?:SYSTEM|ASSISTANT|DEVELOPER)\s*:"),
    re.compile(r"^\s*(?:system|assistant|developer)\s*:", re.IGNORECASE | re.MULTILINE),
    # Requests for a particular verdict.
    re.compile(r"\b(?:respond|reply|answer)\s+(?:only\s+)?with\b", re.IGNORECASE),
    re.compile(
        r"\bclassify\s+(?:this\s+|it\s+|the\s+alert\s+|me\s+)?as\b", re.IGNORECASE
    ),
    re.compile(r"\bset\s+(?:the\s+)?severity\s+to\b", re.IGNORECASE),
    re.compile(r"\{\s*\\?[\"']severity\\?[\"']\s*:", re.IGNORECASE),
    # Look-alikes of prompt delimiters and chat-template tokens.
    re.compile(
        r"\b(?:end|begin|start)\s+of\s+(?:the\s+)?"
        r"(?:alert|data|input|instructions?|prompt|context)\b",
        re.IGNORECASE,
    ),
    re.compile(r"</?\s*(?:alert|data|system|instructions?)[\w-]*\s*>", re.IGNORECASE),
    re.compile(r"<\|[a-z_]+\|>", re.IGNORECASE),
    re.compile(r"\[/?INST\]"),
    re.compile(
        r"```|<<<|>>>|^\s*#{2,}\s*(?:instruction|system)", re.IGNORECASE | re.MULTILINE
    ),
)


def has_instruction_like_text(
    labels: Mapping[str, str], annotations: Mapping[str, str]
) -> bool:
    """Return whether any label or annotation name or value reads like a prompt."""
    for mapping in (labels, annotations):
        for name, value in mapping.items():
            if _matches(name) or _matches(value[:MAX_SCANNED_CHARS]):
                return True
    return False


def _matches(text: str) -> bool:
    return any(pattern.search(text) for pattern in INSTRUCTION_PATTERNS)
