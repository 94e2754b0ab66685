"""Kubernetes Secret templates that define a publishing target.

The keys are those `discovery.secret_definition` reads. A template uses
`stringData`, so values are written as plain text; the API server stores
them base64-encoded in `data`, which is what discovery decodes. Every
placeholder value is valid as written, so an applied template defines a
working target once the URL and credentials are replaced.
"""

from __future__ import annotations

from services.publisher.formats import FORMATS

DISCOVERY_LABEL = "publishing-target"

# Per format: the URL key, an example URL, and the credential lines.
_FORMAT_KEYS: dict[str, tuple[str, str, list[str]]] = {
    "pagerduty": (
        "url",
        "https://events.pagerduty.com/v2/enqueue",
        [
            "  # Integration key of an Events API v2 integration.",
            "  routing-key: REPLACE_WITH_INTEGRATION_KEY",
        ],
    ),
    "slack": (
        "webhook-url",
        "https://hooks.slack.com/services/REPLACE/WITH/WEBHOOK",
        ["  # The incoming webhook URL is the credential; no other is needed."],
    ),
    "rootly": (
        "url",
        "https://webhooks.rootly.com/webhooks/incoming/generic_webhooks",
        [
            "  # Sent as Authorization: Bearer <token>.",
            "  token: REPLACE_WITH_ROOTLY_WEBHOOK_SECRET",
        ],
    ),
    "webhook": (
        "url",
        "https://hooks.example.com/alerts",
        [
            "  # Sent as the Authorization header as it stands. Alternatives:",
            "  # token (sent as Bearer <token>), api-key (sent as X-API-Key).",
            "  auth-header: Bearer REPLACE_WITH_TOKEN",
            "  # Any header-<Name> key sends the header <Name>.",
            "  header-X-Team: oncall",
        ],
    ),
    "alertmanager": (
        "url",
        "http://alertmanager-receiver.example:9093/webhook",
        [
            "  # Optional: sent as the Authorization header as it stands.",
            "  # auth-header: Basic REPLACE_WITH_BASE64_CREDENTIALS",
        ],
    ),
}


def template_formats() -> list[str]:
    """Return the formats a template exists for, sorted."""
    return sorted(name for name in FORMATS if name in _FORMAT_KEYS)


def secret_template(target_format: str) -> str:
    """Return a Secret manifest (YAML) for a target of `target_format`.

    Raises KeyError for a format without a template.
    """
    url_key, url, credentials = _FORMAT_KEYS[target_format]
    name = f"alert-history-{target_format}"
    lines = [
        f"# A publishing target of format {target_format} for alert-history.",
        "# Create it in a namespace listed in TARGET_DISCOVERY_NAMESPACES; the",
        f"# publisher reads Secrets labelled {DISCOVERY_LABEL}=true.",
        "apiVersion: v1",
        "kind: Secret",
        "metadata:",
        f"  name: {name}",
        "  labels:",
        f'    {DISCOVERY_LABEL}: "true"',
        "type: Opaque",
        "stringData:",
        f"  target-name: {name}",
        f"  format: {target_format}",
        f"  {url_key}: {url}",
        *credentials,
        '  enabled: "true"',
        "  # Filter: remove a key to accept every alert. Severities are the",
        "  # final verdict: critical, warning, info or noise.",
        "  filter-severity: critical,warning",
        "  filter-namespaces: production,staging",
        "  # One regular expression per line, matched against the whole alertname.",
        "  filter-alertname-patterns: |",
        "    Kube.*",
        "    Node.*",
        '  exclude-noise: "true"',
        '  min-confidence: "0.6"',
    ]
    return "\n".join(lines) + "\n"
