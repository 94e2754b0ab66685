"""The `alert-history` command: up, serve, migrate."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from libs.config import ConfigError, Settings, load_settings
from libs.logs import configure_logging

GRPC_SERVICES = ("history", "classifier", "publisher")
SERVICES = ("gateway", *GRPC_SERVICES)
# Services whose database schema `migrate` applies.
MIGRATED_SERVICES = ("history", "publisher")
START_ORDER = ("history", "classifier", "publisher", "gateway")
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
    if name == "gateway":
        from services.gateway.server import serve as serve_gateway

        asyncio.run(serve_gateway(settings))
    else:
        asyncio.run(_serve_grpc(name, settings))
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
    """The port `up` gives a service: the one its *_ADDR variable names."""
    address = getattr(settings, f"{name}_addr")
    return int(address.rpartition(":")[2])


def metrics_port_for_up(settings: Settings, name: str) -> int:
    """METRICS_PORT, +1 and +2 for history, classifier, publisher when set."""
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


def _wait_for_grpc(address: str, deadline: float) -> bool:
    with grpc.insecure_channel(address) as channel:
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


def _wait_for_http(url: str, deadline: float) -> bool:
    import urllib.error
    import urllib.request

    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
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
    try:
        for name in START_ORDER:
            children[name] = subprocess.Popen(
                [sys.executable, "-m", "libs.cli", "serve", name],
                env=_child_environment(settings, name),
            )
            deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
            if name == "gateway":
                ready = _wait_for_http(
                    f"http://{shown_host}:{settings.http_port}/readyz", deadline
                )
            else:
                ready = _wait_for_grpc(
                    f"{shown_host}:{grpc_port_for_up(settings, name)}", deadline
                )
            if not ready:
                print(f"alert-history: {name} did not start", file=sys.stderr)
                return 1

        url = f"http://{shown_host}:{settings.http_port}/webhook/proxy"
        print(f"alert-history is up. Gateway: http://{shown_host}:{settings.http_port}")
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
    args = parser.parse_args(argv)

    if args.command == "up":
        return up()
    if args.command == "serve":
        return serve(args.service)
    return migrate()


if __name__ == "__main__":
    sys.exit(main())
