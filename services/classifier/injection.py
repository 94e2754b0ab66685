"""Detection of alert text that reads like instructions to a model.

Labels and annotations come from rule files and from the monitored systems
themselves (pod names, log lines), so an attacker who controls such a value
can try to steer the model. A match only adds the `instruction_like_text`
flag: the verdict is still protected by the JSON encoding of the prompt and
by the severity floor. The patterns favour recall, so a harmless text such as
"failed to respond with a valid certificate" is flagged too.

Text is normalised before matching: NFKC folds fullwidth and other
compatibility forms (fullwidth "SYSTEM" becomes ASCII), invisible format
characters such as zero-width spaces are removed, and Cyrillic and Greek
letters that look like Latin ones are mapped to them. Look-alikes outside
that table, such as mathematical alphanumerics that NFKC does not fold, are
not caught.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Mapping

# Only the first characters of each value are scanned, to bound the work.
MAX_SCANNED_CHARS = 8192

# Cyrillic and Greek letters that render like Latin ones in common fonts,
# as code points, each string paired position by position with its Latin
# letters.
_LOOKALIKES = (
    ("\u0410\u0412\u0415\u0405\u0406\u0408\u041a\u041c", "ABESIJKM"),
    ("\u041d\u041e\u0420\u0421\u0422\u0425\u0423", "HOPCTXY"),
    ("\u0430\u0435\u0456\u0458\u043e\u0440\u0441", "aeijopc"),
    ("\u0445\u0443\u0455\u0501\u04bb\u04cf", "xysdhl"),
    ("\u0391\u0392\u0395\u0396\u0397\u0399\u039a", "ABEZHIK"),
    ("\u039c\u039d\u039f\u03a1\u03a4\u03a5\u03a7", "MNOPTYX"),
    ("\u03b1\u03b5\u03b9\u03ba\u03bd\u03bf\u03c1", "aeikvop"),
    ("\u03c4\u03c5\u03c7", "tux"),
)
CONFUSABLES = str.maketrans(
    "".join(source for source, _ in _LOOKALIKES),
    "".join(latin for _, latin in _LOOKALIKES),
)

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
    # A "severity" key of a JSON object, escaped or not, first or later.
    re.compile(r"[{,]\s*\\?[\"']severity\\?[\"']\s*:", re.IGNORECASE),
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


def normalize(text: str) -> str:
    """Fold compatibility forms, drop format characters and map look-alikes."""
    if text.isascii():
        # NFKC leaves ASCII as it is, and ASCII has no format characters and
        # no look-alikes from the table.
        return text
    folded = unicodedata.normalize("NFKC", text)
    visible = "".join(ch for ch in folded if unicodedata.category(ch) != "Cf")
    return visible.translate(CONFUSABLES)


def _scoped(pattern: re.Pattern[str]) -> str:
    """Return `pattern` as a group that carries its own flags."""
    flags = ""
    if pattern.flags & re.IGNORECASE:
        flags += "i"
    if pattern.flags & re.MULTILINE:
        flags += "m"
    return f"(?{flags}:{pattern.pattern})"


# All patterns in one expression, so each text is scanned once, not once per
# pattern. It matches where any of INSTRUCTION_PATTERNS matches.
_ANY_INSTRUCTION = re.compile("|".join(_scoped(p) for p in INSTRUCTION_PATTERNS))


# Label values and annotations repeat from alert to alert (alertnames,
# namespaces, rule summaries), so recent results are kept.
@functools.lru_cache(maxsize=2048)
def _matches(text: str) -> bool:
    return _ANY_INSTRUCTION.search(normalize(text)) is not None
