"""Running the services, fakes and Alertmanager as real processes for tests.

Every process listens on 127.0.0.1 on a port picked free at start, writes its
output to a log file under the test's temporary folder, and is stopped by its
process id when the test ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")
GRPC_SERVICES = ("history", "classifier", "publisher", "recommender")


# Ports free_port() returned, so that it never returns one twice: the kernel
# may offer a closed port again before the server that was meant to take it
# has started.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """Return a port on 127.0.0.1 that was free and not returned before.

    NOTE: another process may still take the port before the server binds it.
    """
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_until(
    condition: Callable[[], Any], timeout: float, interval: float = 0.1
) -> Any:
    """Poll `condition` until it returns a true value; raise on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)


def http_json(
    method: str,
    url: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any]:
    """Send a request and return the status code and the decoded JSON body."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            raw = reply.read()
            status = reply.status
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        status = exc.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


class Process:
    """One child process with its log file."""

    def __init__(
        self, name: str, args: list[str], env: Mapping[str, str], log_dir: Path
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            args,
            env=dict(env),
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.popen.pid, signum)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after `timeout`; return the exit code."""
        self.signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            code = self.popen.wait()
        self._log.close()
        return code

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait()
        self._log.close()

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")


def start_fake(module: str, log_dir: Path, *extra: str) -> tuple[Process, int]:
    """Start `python -m module --port N` and return it with its port."""
    port = free_port()
    process = Process(
        module.rsplit(".", 1)[-1],
        [
            sys.executable,
            "-m",
            module,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *extra,
        ],
        os.environ,
        log_dir,
    )
    wait_until(lambda: _port_open(port) or not process.alive(), 20)
    if not process.alive():
        raise RuntimeError(f"{module} exited:\n{process.output()}")
    return process, port


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def grpc_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class Mesh:
    """The four services as real processes, configured through environment."""

    def __init__(self, log_dir: Path, env: Mapping[str, str]) -> None:
        self.log_dir = log_dir
        self.ports = {name: free_port() for name in GRPC_SERVICES}
        self.metrics_ports = {name: free_port() for name in GRPC_SERVICES}
        self.http_port = free_port()
        self.env = {
            **os.environ,
            "LISTEN_HOST": "127.0.0.1",
            "LOG_LEVEL": "DEBUG",
            "SHUTDOWN_DELAY_SECONDS": "0.2",
            "SHUTDOWN_GRACE_SECONDS": "5",
            "HTTP_PORT": str(self.http_port),
            "HISTORY_ADDR": f"127.0.0.1:{self.ports['history']}",
            "CLASSIFIER_ADDR": f"127.0.0.1:{self.ports['classifier']}",
            "PUBLISHER_ADDR": f"127.0.0.1:{self.ports['publisher']}",
            "RECOMMENDER_ADDR": f"127.0.0.1:{self.ports['recommender']}",
            **env,
        }
        self.processes: dict[str, Process] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def start(self, *names: str) -> None:
        for name in names or (*GRPC_SERVICES, "gateway"):
            self.start_one(name)

    def start_one(self, name: str, **env: str) -> Process:
        process_env = {**self.env, **env}
        if name != "gateway":
            process_env["GRPC_PORT"] = str(self.ports[name])
            process_env["METRICS_PORT"] = str(self.metrics_ports[name])
        process = Process(
            name,
            [sys.executable, "-m", "libs.cli", "serve", name],
            process_env,
            self.log_dir,
        )
        self.processes[name] = process
        if name == "gateway":
            ready = lambda: self._http_ready() or not process.alive()  # noqa: E731
        else:
            address = self.address(name)
            ready = lambda: grpc_serving(address) or not process.alive()  # noqa: E731
        wait_until(ready, 30, 0.2)
        if not process.alive():
            raise RuntimeError(f"{name} exited:\n{process.output()[-4000:]}")
        return process

    def _http_ready(self) -> bool:
        try:
            status, _ = http_json("GET", f"{self.url}/readyz", timeout=1)
        except OSError:
            return False
        return status == 200

    def stop(self) -> None:
        for name in ("gateway", "recommender", "publisher", "classifier", "history"):
            process = self.processes.get(name)
            if process is not None and process.alive():
                process.stop()

    def logs(self) -> str:
        return "\n".join(
            f"--- {name}\n{process.output()[-3000:]}"
            for name, process in self.processes.items()
        )


def alertmanager_binary() -> str | None:
    for name in ALERTMANAGER_BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Alertmanager:
    """A real Alertmanager on loopback that sends its webhooks to `webhook_url`."""

    def __init__(self, log_dir: Path, webhook_url: str, **route: str) -> None:
        binary = alertmanager_binary()
        if binary is None:
            raise RuntimeError("Alertmanager is not installed")
        self.port = free_port()
        folder = log_dir / f"alertmanager-{self.port}"
        folder.mkdir()
        config = {
            "route": {
                "receiver": "alert-history",
                "group_by": ["alertname"],
                "group_wait": route.get("group_wait", "1s"),
                "group_interval": route.get("group_interval", "1s"),
                "repeat_interval": route.get("repeat_interval", "1h"),
            },
            "receivers": [
                {
                    "name": "alert-history",
                    "webhook_configs": [{"url": webhook_url, "send_resolved": True}],
                }
            ],
        }
        (folder / "alertmanager.yml").write_text(json.dumps(config))
        self.process = Process(
            "alertmanager",
            [
                binary,
                f"--config.file={folder / 'alertmanager.yml'}",
                f"--storage.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            os.environ,
            log_dir,
        )
        wait_until(lambda: self._ready() or not self.process.alive(), 30, 0.2)
        if not self.process.alive():
            raise RuntimeError(f"alertmanager exited:\n{self.process.output()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _ready(self) -> bool:
        try:
            status, _ = http_json("GET", f"{self.url}/-/ready", timeout=1)
        except OSError:
            return False
        return status == 200

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        status, body = http_json("POST", f"{self.url}/api/v2/alerts", alerts)
        if status != 200:
            raise RuntimeError(f"alertmanager rejected alerts: {status} {body}")

    def stop(self) -> None:
        self.process.stop()


def create_database(admin_url: str, name: str) -> str:
    """Create an empty PostgreSQL database and return its URL."""
    import asyncio

    import asyncpg

    async def create() -> None:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()

    asyncio.run(create())
    return f"{admin_url.rpartition('/')[0]}/{name}"


def drop_database(admin_url: str, name: str) -> None:
    import asyncio

    import asyncpg

    async def drop() -> None:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(drop())
