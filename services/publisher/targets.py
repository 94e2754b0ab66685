"""Publishing targets: the model, its validation and the YAML file source.

`parse_target` turns one decoded mapping into a `Target` whatever its source,
so another discovery source (such as Kubernetes Secrets) only has to produce
the same mappings. Error messages name the target and the key but never
echo a URL or a header value, because both may carry credentials.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from libs.config import ConfigError
from services.publisher.formats import FORMATS

SEVERITIES = ("critical", "warning", "info", "noise")
# Policies of a pagerduty target for alerts classified noise: leave them out,
# or send them with PagerDuty severity "info".
NOISE_POLICIES = ("drop", "info")
# Highest `rate_limit_per_second` accepted.
MAX_RATE_LIMIT_PER_SECOND = 1000.0

# Letters, digits, '.', '_' and '-': names appear in metric labels and logs.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# RFC 9110 field-name token.
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# The publisher sets these itself on every request.
RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "host", "idempotency-key", "transfer-encoding"}
)

_TARGET_KEYS = frozenset(
    {
        "name",
        "format",
        "url",
        "headers",
        "routing_key",
        "enabled",
        "filter",
        "noise_policy",
        "rate_limit_per_second",
    }
)
_FILTER_KEYS = frozenset(
    {"severity", "exclude_noise", "namespaces", "alertname_patterns", "min_confidence"}
)


class TargetConfigError(ConfigError):
    """A publishing target definition or the targets file is invalid."""


@dataclass(frozen=True)
class TargetFilter:
    """Criteria an alert must meet to reach a target; unset ones accept all."""

    severities: frozenset[str] | None = None
    exclude_noise: bool = False
    namespaces: frozenset[str] | None = None
    alertname_patterns: tuple[re.Pattern[str], ...] = ()
    min_confidence: float | None = None


@dataclass(frozen=True)
class Target:
    """One publishing target, independent of where it was configured."""

    name: str
    format: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    routing_key: str | None = None
    enabled: bool = True
    filter: TargetFilter = field(default_factory=TargetFilter)
    # Where the target came from, such as "file".
    source: str = "file"
    # pagerduty only: "drop" leaves noise out, "info" sends it as info.
    noise_policy: str = "drop"
    # Requests per second started at most; None for no limit.
    rate_limit_per_second: float | None = None

    @property
    def endpoint(self) -> str:
        """Scheme, host and port of the URL, without credentials, path or query."""
        return endpoint_of(self.url)

    def __repr__(self) -> str:
        return (
            f"Target(name={self.name!r}, format={self.format!r}, "
            f"endpoint={self.endpoint!r}, enabled={self.enabled})"
        )


class TargetSet:
    """The targets in effect, replaced as a whole when configuration changes."""

    def __init__(self, targets: Sequence[Target] = ()) -> None:
        self._targets: tuple[Target, ...] = ()
        self.replace(targets)

    def replace(self, targets: Sequence[Target]) -> None:
        check_unique_names(targets)
        self._targets = tuple(targets)

    def all(self) -> tuple[Target, ...]:
        return self._targets

    def enabled(self) -> list[Target]:
        return [target for target in self._targets if target.enabled]

    def get(self, name: str) -> Target | None:
        for target in self._targets:
            if target.name == name:
                return target
        return None

    @property
    def metrics_only(self) -> bool:
        """True when no target is configured at all, enabled or not."""
        return not self._targets


def endpoint_of(url: str) -> str:
    """Return scheme://host[:port] of `url`; paths and queries may hold secrets."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}"


def load_targets(path: Path | None) -> list[Target]:
    """Load the targets file; unset or empty means no targets (metrics-only).

    Raises TargetConfigError naming the path when the file is missing or
    cannot be parsed, and naming the target when a definition is invalid.
    """
    if path is None:
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TargetConfigError(
            f"publishing targets file not found: {path} "
            "(set by PUBLISHING_TARGETS_FILE)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TargetConfigError(
            f"cannot read publishing targets file {path}: {exc}"
        ) from None
    return parse_targets_document(text, str(path))


def parse_targets_document(text: str, origin: str) -> list[Target]:
    """Parse a YAML list of target definitions; `origin` names it in errors."""
    try:
        document = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        # The snippet of the line is left out: it may contain a credential.
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise TargetConfigError(
            f"invalid YAML in publishing targets file {origin}{where}: {exc.problem}"
        ) from None
    except yaml.YAMLError as exc:
        raise TargetConfigError(
            f"invalid YAML in publishing targets file {origin}: {type(exc).__name__}"
        ) from None
    if document is None:
        return []
    if not isinstance(document, list):
        raise TargetConfigError(
            f"publishing targets file {origin} must contain a YAML list of targets"
        )
    targets = [
        parse_target(raw, source="file", position=index + 1)
        for index, raw in enumerate(document)
    ]
    check_unique_names(targets)
    return targets


def check_unique_names(targets: Iterable[Target]) -> None:
    """Raise TargetConfigError when two targets share a name."""
    seen: set[str] = set()
    for target in targets:
        if target.name in seen:
            raise TargetConfigError(
                f"duplicate publishing target name {target.name!r}: "
                "each target needs a unique name"
            )
        seen.add(target.name)


def parse_target(raw: Any, *, source: str, position: int) -> Target:
    """Check one target definition and build a Target.

    `position` (counting from 1) names the target in errors when it has no
    valid name.
    """
    label = f"publishing target #{position}"
    if not isinstance(raw, dict):
        raise TargetConfigError(f"{label} must be a mapping of keys to values")
    name = raw.get("name")
    if isinstance(name, str) and _NAME.match(name):
        label = f"publishing target {name!r}"
    elif name is None:
        raise TargetConfigError(f"{label}: name is missing")
    else:
        raise TargetConfigError(
            f"{label}: name must be 1 to 63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    _reject_unknown_keys(raw, _TARGET_KEYS, label)

    url = _parse_url(raw.get("url"), label)
    headers = _parse_headers(raw.get("headers"), label)
    has_userinfo = urlsplit(url).username is not None
    if has_userinfo and any(h.lower() == "authorization" for h in headers):
        # aiohttp would reject every request that sets both.
        raise TargetConfigError(
            f"{label}: url contains credentials and headers set Authorization; "
            "keep only one"
        )
    target_format = _parse_format(raw.get("format"), label)
    routing_key = _optional_string(raw.get("routing_key"), "routing_key", label)
    if target_format == "pagerduty" and not routing_key:
        raise TargetConfigError(
            f"{label}: routing_key is missing; a pagerduty target needs the "
            "integration key of an Events API v2 integration"
        )
    target_filter = _parse_filter(raw.get("filter"), label)
    noise_policy = _parse_noise_policy(raw.get("noise_policy"), target_format, label)
    if noise_policy == "drop" and target_format == "pagerduty":
        target_filter = replace(target_filter, exclude_noise=True)
    return Target(
        name=name,
        format=target_format,
        url=url,
        headers=headers,
        routing_key=routing_key,
        enabled=_parse_bool(raw.get("enabled", True), "enabled", label),
        filter=target_filter,
        source=source,
        noise_policy=noise_policy,
        rate_limit_per_second=_parse_rate_limit(
            raw.get("rate_limit_per_second"), label
        ),
    )


def _parse_noise_policy(value: Any, target_format: str, label: str) -> str:
    if value is None:
        return "drop"
    if target_format != "pagerduty":
        raise TargetConfigError(f"{label}: noise_policy applies to pagerduty only")
    if value not in NOISE_POLICIES:
        raise TargetConfigError(
            f"{label}: noise_policy must be one of {', '.join(NOISE_POLICIES)}"
        )
    return str(value)


def _parse_rate_limit(value: Any, label: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TargetConfigError(f"{label}: rate_limit_per_second must be a number")
    if not 0 < value <= MAX_RATE_LIMIT_PER_SECOND:
        raise TargetConfigError(
            f"{label}: rate_limit_per_second must be above 0 and at most "
            f"{MAX_RATE_LIMIT_PER_SECOND:g}, got {value}"
        )
    return float(value)


def _reject_unknown_keys(
    raw: Mapping[str, Any], allowed: frozenset[str], label: str
) -> None:
    unknown = sorted(str(key) for key in raw if key not in allowed)
    if unknown:
        raise TargetConfigError(
            f"{label}: unknown key {', '.join(map(repr, unknown))}; "
            f"expected keys: {', '.join(sorted(allowed))}"
        )


def _parse_format(value: Any, label: str) -> str:
    if value is None:
        raise TargetConfigError(
            f"{label}: format is missing; expected one of {', '.join(FORMATS)}"
        )
    if not isinstance(value, str):
        raise TargetConfigError(f"{label}: format must be a string")
    if value not in FORMATS:
        raise TargetConfigError(
            f"{label}: unsupported format {value!r}; "
            f"expected one of {', '.join(FORMATS)}"
        )
    return value


def _parse_url(value: Any, label: str) -> str:
    if value is None or value == "":
        raise TargetConfigError(f"{label}: url is missing")
    if not isinstance(value, str):
        raise TargetConfigError(f"{label}: url must be a string")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise TargetConfigError(f"{label}: url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetConfigError(
            f"{label}: url must be an absolute http:// or https:// URL with a host"
        )
    if port == 0 or any(char in value for char in "\r\n\t "):
        raise TargetConfigError(f"{label}: url is not a valid URL")
    return value


def _parse_headers(value: Any, label: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TargetConfigError(
            f"{label}: headers must be a mapping of names to values"
        )
    headers: dict[str, str] = {}
    for name, header_value in value.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise TargetConfigError(f"{label}: invalid header name {str(name)[:64]!r}")
        if name.lower() in {existing.lower() for existing in headers}:
            raise TargetConfigError(
                f"{label}: header {name!r} is given twice (names ignore case)"
            )
        if name.lower() in RESERVED_HEADERS:
            raise TargetConfigError(
                f"{label}: header {name!r} is set by the publisher and cannot be "
                "configured"
            )
        if not isinstance(header_value, str):
            raise TargetConfigError(
                f"{label}: header {name!r} must have a string value (quote numbers)"
            )
        if any(char in header_value for char in "\r\n\0"):
            raise TargetConfigError(
                f"{label}: header {name!r} value contains a line break or NUL"
            )
        headers[name] = header_value
    return headers


def _parse_filter(value: Any, label: str) -> TargetFilter:
    if value is None:
        return TargetFilter()
    if not isinstance(value, dict):
        raise TargetConfigError(f"{label}: filter must be a mapping")
    _reject_unknown_keys(value, _FILTER_KEYS, f"{label} filter")

    severities = _string_list(value.get("severity"), "filter.severity", label)
    if severities is not None:
        invalid = sorted(set(severities) - set(SEVERITIES))
        if invalid:
            raise TargetConfigError(
                f"{label}: filter.severity has unknown value "
                f"{', '.join(map(repr, invalid))}; expected {', '.join(SEVERITIES)}"
            )
    namespaces = _string_list(value.get("namespaces"), "filter.namespaces", label)
    patterns = _string_list(
        value.get("alertname_patterns"), "filter.alertname_patterns", label
    )
    return TargetFilter(
        severities=frozenset(severities) if severities is not None else None,
        exclude_noise=_parse_bool(
            value.get("exclude_noise", False), "filter.exclude_noise", label
        ),
        namespaces=frozenset(namespaces) if namespaces is not None else None,
        alertname_patterns=_compile_patterns(patterns or [], label),
        min_confidence=_parse_confidence(value.get("min_confidence"), label),
    )


def _string_list(value: Any, key: str, label: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TargetConfigError(f"{label}: {key} must be a list of strings")
    if not value:
        # An empty list would silently drop every alert.
        raise TargetConfigError(
            f"{label}: {key} is an empty list; remove the key to accept every alert"
        )
    return list(value)


def _compile_patterns(
    patterns: Sequence[str], label: str
) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise TargetConfigError(
                f"{label}: invalid regular expression {pattern!r} in "
                f"filter.alertname_patterns: {exc}"
            ) from None
    return tuple(compiled)


def _parse_confidence(value: Any, label: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TargetConfigError(f"{label}: filter.min_confidence must be a number")
    if not 0 <= value <= 1:
        raise TargetConfigError(
            f"{label}: filter.min_confidence must be between 0 and 1, got {value}"
        )
    return float(value)


def _parse_bool(value: Any, key: str, label: str) -> bool:
    if not isinstance(value, bool):
        raise TargetConfigError(f"{label}: {key} must be true or false")
    return value


def _optional_string(value: Any, key: str, label: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TargetConfigError(f"{label}: {key} must be a string")
    return value


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    keys: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)  # type: ignore[no-untyped-call]
        if not isinstance(key, str | int | float | bool):
            continue
        if key in keys:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        keys.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)
