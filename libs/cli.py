"""The `alert-history` command: up, serve, migrate, evaluate."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from libs import telemetry, tls
from libs.config import ConfigError, Settings, load_settings
from libs.logs import configure_logging

GRPC_SERVICES = ("history", "classifier", "publisher", "recommender")
SERVICES = ("gateway", *GRPC_SERVICES)
# Services whose database schema `migrate` applies.
MIGRATED_SERVICES = ("history", "publisher", "recommender")
START_ORDER = ("history", "classifier", "publisher", "recommender", "gateway")
STARTUP_TIMEOUT_SECONDS = 60.0

RECEIVER_SNIPPET = """\
# Alertmanager receiver for alert-history:
receivers:
  - name: alert-history
    webhook_configs:
      - url: {url}
        send_resolved: true
        max_alerts: 0
"""


def _settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        print(f"alert-history: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


async def _serve_grpc(name: str, settings: Settings) -> None:
    from libs.grpcserver import run_until_signalled, start_service

    module = importlib.import_module(f"services.{name}.service")
    registry = CollectorRegistry()
    service = module.create_service(settings, registry)
    running = await start_service(
        service,
        settings,
        registry,
        port=settings.grpc_port_for(name),
        metrics_port=settings.metrics_port_for(name),
    )
    await run_until_signalled(running, settings)


def serve(name: str) -> int:
    settings = _settings_or_exit()
    configure_logging(name, settings.log_level)
    try:
        telemetry.configure_tracing(name)
        if name == "gateway":
            from services.gateway.server import serve as serve_gateway

            asyncio.run(serve_gateway(settings))
        else:
            asyncio.run(_serve_grpc(name, settings))
    except ConfigError as exc:
        print(f"alert-history: {exc}", file=sys.stderr)
        return 2
    finally:
        telemetry.shutdown_tracing()
    return 0


def migrate() -> int:
    settings = _settings_or_exit()
    configure_logging("migrate", settings.log_level)

    async def run_all() -> list[tuple[str, int]]:
        results = []
        for name in MIGRATED_SERVICES:
            module = importlib.import_module(f"services.{name}.service")
            results.append((name, await module.run_migrations(settings)))
        return results

    for name, count in asyncio.run(run_all()):
        print(f"{name}: applied {count} migration(s)")
    return 0


def grpc_port_for_up(settings: Settings, name: str) -> int:
    """Return the port `up` gives a service: the one its *_ADDR variable names."""
    address = getattr(settings, f"{name}_addr")
    return int(address.rpartition(":")[2])


def metrics_port_for_up(settings: Settings, name: str) -> int:
    """METRICS_PORT, then +1, +2 and +3 for classifier, publisher and recommender."""
    if settings.metrics_port is None:
        return settings.metrics_port_for(name)
    return settings.metrics_port + GRPC_SERVICES.index(name)


def _child_environment(settings: Settings, name: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("LISTEN_HOST", "127.0.0.1")
    if name != "gateway":
        env["GRPC_PORT"] = str(grpc_port_for_up(settings, name))
        env["METRICS_PORT"] = str(metrics_port_for_up(settings, name))
    else:
        env.pop("GRPC_PORT", None)
        env.pop("METRICS_PORT", None)
    return env


def _wait_for_grpc(address: str, deadline: float, settings: Settings) -> bool:
    with tls.sync_channel(address, settings) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    return False


def _readiness_ssl_context() -> ssl.SSLContext:
    """Return a context for polling the local gateway's /readyz over HTTPS.

    It does not verify the certificate: the poll only asks the child process
    just started on this machine whether it is ready, and the gateway's
    certificate may come from a CA that this process was not given.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _wait_for_http(
    url: str, deadline: float, context: ssl.SSLContext | None = None
) -> bool:
    import urllib.error
    import urllib.request

    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as reply:
                if reply.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return False


def _stop_children(children: dict[str, subprocess.Popen[Any]]) -> None:
    for name in reversed(START_ORDER):
        child = children.get(name)
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children.values():
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()


def up() -> int:
    """Start every service on localhost and wait until one of them stops."""
    settings = _settings_or_exit()
    children: dict[str, subprocess.Popen[Any]] = {}
    stop_requested = False

    def request_stop(signum: int, _: Any) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    host = os.environ.get("LISTEN_HOST", "127.0.0.1")
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    https = settings.http_tls_cert_file is not None
    gateway = f"{'https' if https else 'http'}://{shown_host}:{settings.http_port}"
    try:
        for name in START_ORDER:
            children[name] = subprocess.Popen(
                [sys.executable, "-m", "libs.cli", "serve", name],
                env=_child_environment(settings, name),
            )
            deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
            if name == "gateway":
                ready = _wait_for_http(
                    f"{gateway}/readyz",
                    deadline,
                    _readiness_ssl_context() if https else None,
                )
            else:
                ready = _wait_for_grpc(
                    f"{shown_host}:{grpc_port_for_up(settings, name)}",
                    deadline,
                    settings,
                )
            if not ready:
                print(f"alert-history: {name} did not start", file=sys.stderr)
                return 1

        url = f"{gateway}/webhook/proxy"
        print(f"alert-history is up. Gateway: {gateway}")
        print(RECEIVER_SNIPPET.format(url=url))
        print("Press Ctrl-C to stop.", flush=True)
        while not stop_requested:
            for name, child in children.items():
                if child.poll() is not None:
                    print(
                        f"alert-history: {name} exited with code {child.returncode}",
                        file=sys.stderr,
                    )
                    return 1
            time.sleep(0.5)
        return 0
    finally:
        _stop_children(children)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="alert-history",
        description="Alertmanager webhook proxy that keeps alert history, "
        "classifies alerts and publishes them. Settings come from environment "
        "variables (see the README).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "up",
        help="start every service on localhost with the embedded defaults; "
        "each gRPC service listens on the port its *_ADDR variable names",
    )
    serve_parser = commands.add_parser("serve", help="run one service")
    serve_parser.add_argument("service", choices=SERVICES)
    commands.add_parser("migrate", help="apply database schema migrations")
    _add_evaluate_parser(commands)
    args = parser.parse_args(argv)

    if args.command == "up":
        return up()
    if args.command == "serve":
        return serve(args.service)
    if args.command == "evaluate":
        from services.classifier.evaluate import run as run_evaluation

        return run_evaluation(
            args.rules,
            folds=args.folds,
            seed=args.seed,
            repeats=args.repeats,
            classifier=args.classifier,
            group_by=args.group_by,
        )
    return migrate()


def _add_evaluate_parser(commands: Any) -> None:
    evaluate_parser = commands.add_parser(
        "evaluate",
        help="measure how often the no-model classifier agrees with the "
        "severities of public alerting rules, with the severity label removed",
    )
    evaluate_parser.add_argument(
        "--rules",
        type=Path,
        default=Path("tests/fixtures/rules.jsonl"),
        help="rules in the corpus's JSON-lines format "
        "(default: tests/fixtures/rules.jsonl)",
    )
    evaluate_parser.add_argument(
        "--folds", type=int, default=5, help="cross-validation folds (default: 5)"
    )
    evaluate_parser.add_argument(
        "--seed", type=int, default=1, help="seed that shuffles the folds (default: 1)"
    )
    evaluate_parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="fold splits to pool, with seeds SEED, SEED+1, ... (default: 1)",
    )
    evaluate_parser.add_argument(
        "--classifier",
        choices=("shipped", "keywords", "warning"),
        default="shipped",
        help="classifier whose confusion matrix is printed (default: shipped)",
    )
    evaluate_parser.add_argument(
        "--group-by",
        choices=("alertname", "source"),
        default="alertname",
        help="keep rules with the same alertname, or from the same rules file, "
        "in one fold (default: alertname)",
    )


if __name__ == "__main__":
    sys.exit(main())
