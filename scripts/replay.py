"""Replay every webhook fixture through `alert-history up` and write a report.

    .venv/bin/python scripts/replay.py [--output docs/replay.md]

The run uses the embedded defaults (SQLite in a temporary folder, the
deterministic classifier) and two local targets, a `webhook` and an
`alertmanager` one, served by the test receiver. It posts each body in
tests/fixtures/webhooks to /webhook/proxy in file order, waits until its new
state changes reach the targets, and writes a Markdown page of what was
stored, classified and published. The page contains no times or ports, so a
fresh run reproduces it byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WEBHOOKS = ROOT / "tests" / "fixtures" / "webhooks"
TARGETS = {"local-webhook": "/hook", "local-alertmanager": "/am"}
WAIT_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def request(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    message = urllib.request.Request(url, data=data, method=method)
    message.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(message, timeout=10) as reply:
            return reply.status, json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_for(condition: Any, what: str) -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            value = condition()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


class Run:
    """The receiver and `alert-history up` as child processes."""

    def __init__(self, folder: Path) -> None:
        self.receiver_port = free_port()
        self.http_port = free_port()
        self.children: list[subprocess.Popen[bytes]] = []
        self.log = (folder / "replay.log").open("wb")
        targets = [
            {"name": name, "format": name.split("-", 1)[1], "url": self.receiver(path)}
            for name, path in TARGETS.items()
        ]
        (folder / "targets.yaml").write_text(json.dumps(targets))
        ports = {name: free_port() for name in ("history", "classifier", "publisher")}
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("LLM_", "DATABASE_", "REDIS_"))
        }
        self.env.update(
            {
                "DATA_DIR": str(folder / "data"),
                "PUBLISHING_TARGETS_FILE": str(folder / "targets.yaml"),
                "HTTP_PORT": str(self.http_port),
                "METRICS_PORT": str(free_port()),
                "HISTORY_ADDR": f"127.0.0.1:{ports['history']}",
                "CLASSIFIER_ADDR": f"127.0.0.1:{ports['classifier']}",
                "PUBLISHER_ADDR": f"127.0.0.1:{ports['publisher']}",
                "LOG_LEVEL": "WARNING",
            }
        )

    def receiver(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.receiver_port}{path}"

    def start(self) -> None:
        self._spawn(
            [
                sys.executable,
                "-m",
                "tests.fakes.receiver",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.receiver_port),
            ]
        )
        self._spawn([sys.executable, "-m", "libs.cli", "up"])
        wait_for(lambda: request("GET", self.gateway("/readyz"))[0] == 200, "gateway")

    def _spawn(self, args: list[str]) -> None:
        self.children.append(
            subprocess.Popen(
                args, cwd=ROOT, env=self.env, stdout=self.log, stderr=self.log
            )
        )

    def gateway(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def received(self) -> list[dict[str, Any]]:
        status, body = request("GET", self.receiver("/_control/requests"))
        if status != 200:
            raise RuntimeError(f"receiver returned HTTP {status} for its request list")
        return list(body)

    def stop(self) -> None:
        for child in reversed(self.children):
            child.send_signal(signal.SIGTERM)
        for child in self.children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
        self.log.close()


def replay(run: Run) -> str:
    lines = [
        "# Replay of the webhook fixtures",
        "",
        "Written by `scripts/replay.py`: every body in `tests/fixtures/webhooks`",
        "posted to `POST /webhook/proxy` of `alert-history up` with the embedded",
        "defaults, the deterministic classifier and two local targets",
        f"({', '.join(f'`{name}`' for name in TARGETS)}).",
        "",
    ]
    files = sorted(p for p in WEBHOOKS.glob("*.json") if p.name != "index.json")
    for path in files:
        lines += replay_one(run, path)
    return "\n".join(lines) + "\n"


def replay_one(run: Run, path: Path) -> list[str]:
    before = len(run.received())
    status, answer = request(
        "POST", run.gateway("/webhook/proxy"), json.loads(path.read_bytes())
    )
    new = answer.get("new", 0) if isinstance(answer, dict) else 0
    expected = before + (len(TARGETS) if new else 0)
    received = wait_for(
        lambda: (r := run.received()) and len(r) >= expected and r, path.name
    )
    published = published_fingerprints(received[before:])

    lines = [
        f"## {path.name}",
        "",
        f"Answer: {status}, {new} new, {answer.get('repeat', 0)} repeat.",
        "",
    ]
    lines += [
        "| fingerprint | alertname | status | outcome | severity | confidence "
        "| source | published to |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for alert in answer.get("alerts", []):
        occurrence = fetch_occurrence(run, alert["fingerprint"], alert["status"])
        verdict = latest_classification(occurrence)
        targets = sorted(
            name
            for name, fingerprints in published.items()
            if (alert["fingerprint"], alert["status"]) in fingerprints
        )
        lines.append(
            f"| `{alert['fingerprint']}` "
            f"| {occurrence['labels'].get('alertname', '')} "
            f"| {alert['status']} | {alert['outcome']} "
            f"| {verdict.get('severity', '')} | {verdict.get('confidence', '')} "
            f"| {verdict.get('source', '')} | {', '.join(targets) or 'none'} |"
        )
    return [*lines, ""]


def fetch_occurrence(run: Run, fingerprint: str, status: str) -> dict[str, Any]:
    def classified() -> dict[str, Any] | None:
        _, body = request("GET", run.gateway(f"/history?fingerprint={fingerprint}"))
        for occurrence in body["occurrences"]:
            changes = [c for c in occurrence["state_changes"] if c["status"] == status]
            if changes and all(c["classification"] for c in changes):
                return dict(occurrence)
        return None

    return dict(wait_for(classified, f"classification of {fingerprint}"))


def latest_classification(occurrence: dict[str, Any]) -> dict[str, Any]:
    verdicts = [c["classification"] for c in occurrence["state_changes"]]
    return dict(verdicts[-1]) if verdicts else {}


def published_fingerprints(
    requests: list[dict[str, Any]],
) -> dict[str, set[tuple[str, str]]]:
    """Return the (fingerprint, status) pairs each target received."""
    result: dict[str, set[tuple[str, str]]] = {name: set() for name in TARGETS}
    for item in requests:
        name = next(n for n, p in TARGETS.items() if p == item["path"])
        for alert in item["body"].get("alerts", []):
            result[name].add((alert["fingerprint"], alert["status"]))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "docs" / "replay.md",
        help="where to write the Markdown page (default: docs/replay.md)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="alert-history-replay-") as folder:
        run = Run(Path(folder))
        try:
            run.start()
            page = replay(run)
        finally:
            run.stop()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(page)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
