"""The container image's install steps and entrypoint, without a Docker engine.

The Dockerfile runs `scripts/install.sh --image VENV` (a fresh venv, then
`pip install .`) and then `alert-history`. These tests repeat that from a
copy of exactly the files that .dockerignore sends to the build, and run the
command from that venv with a clean environment, so nothing is imported from
the source tree.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.harness import ROOT, Process, free_port, grpc_serving, wait_until

pytestmark = pytest.mark.e2e

INSTALL_TIMEOUT_SECONDS = 300


def docker_context_paths() -> list[str]:
    """Paths .dockerignore lets through: it excludes everything, then re-includes."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line[1:].rstrip("/") for line in lines if line.startswith("!")]


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_SECONDS,
        check=False,
    )


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment set up by the image's install step."""
    work = tmp_path_factory.mktemp("image")
    source = work / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in docker_context_paths():
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, source / name)

    # The Dockerfile's build step, run on the same files.
    environment = work / "venv"
    installed = run(
        ["bash", "scripts/install.sh", "--image", str(environment)],
        source,
        env={"PATH": "/usr/bin:/bin", "HOME": str(work), "PYTHON": sys.executable},
    )
    assert installed.returncode == 0, installed.stderr[-4000:]
    return environment


def clean_env(venv: Path, home: Path, **extra: str) -> dict[str, str]:
    """An environment like the image's: the venv first on PATH, no PYTHONPATH."""
    return {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home), **extra}


def test_entrypoint_help(venv, tmp_path):
    result = run(
        [str(venv / "bin" / "alert-history"), "--help"],
        tmp_path,
        env=clean_env(venv, tmp_path),
    )

    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout
    assert "migrate" in result.stdout


def test_packages_import_from_venv(venv, tmp_path):
    code = (
        "import alerthistory.history.v1.history_pb2_grpc, libs.cli, "
        "services.history.service as s; print(s.__file__)"
    )
    result = run(
        [str(venv / "bin" / "python"), "-c", code],
        tmp_path,
        env=clean_env(venv, tmp_path),
    )

    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(venv)


def test_migrate_from_venv(venv, tmp_path):
    env = clean_env(venv, tmp_path, DATA_DIR=str(tmp_path / "data"))

    result = run([str(venv / "bin" / "alert-history"), "migrate"], tmp_path, env=env)

    assert result.returncode == 0, result.stderr
    assert "history: applied" in result.stdout


def test_serve_history_from_venv(venv, tmp_path):
    grpc_port, metrics_port = free_port(), free_port()
    env = clean_env(
        venv,
        tmp_path,
        DATA_DIR=str(tmp_path / "data"),
        LISTEN_HOST="127.0.0.1",
        GRPC_PORT=str(grpc_port),
        METRICS_PORT=str(metrics_port),
        SHUTDOWN_DELAY_SECONDS="0.2",
        SHUTDOWN_GRACE_SECONDS="2",
    )
    process = Process(
        "history",
        [str(venv / "bin" / "alert-history"), "serve", "history"],
        env,
        tmp_path,
    )
    try:
        address = f"127.0.0.1:{grpc_port}"
        wait_until(lambda: grpc_serving(address) or not process.alive(), 60, 0.2)
        assert process.alive(), process.output()[-4000:]
        assert grpc_serving(address)
        with urllib.request.urlopen(
            f"http://127.0.0.1:{metrics_port}/metrics", timeout=5
        ) as reply:
            metrics = reply.read().decode()
        assert "alert_history_grpc_server_handled_total" in metrics
        assert (tmp_path / "data" / "history.db").exists()
    finally:
        code = process.stop()

    assert code == 0, process.output()[-4000:]


def test_dockerfile_copies_from_context():
    dockerfile = (ROOT / "Dockerfile").read_text()
    allowed = set(docker_context_paths())

    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            *sources, _ = line.split()[1:]
            assert set(sources) <= allowed, line


def test_dockerfile_final_stage():
    dockerfile = (ROOT / "Dockerfile").read_text()
    final = dockerfile.split("\nFROM ")[-1]

    assert "build-essential" not in final
    assert "apt-get install" not in final
    assert re.search(r"^USER 10001:10001$", final, flags=re.M)
    assert 'ENTRYPOINT ["alert-history"]' in final
    assert 'CMD ["serve", "gateway"]' in final


def test_dockerfile_exposes_ports():
    dockerfile = (ROOT / "Dockerfile").read_text()
    (line,) = [line for line in dockerfile.splitlines() if line.startswith("EXPOSE ")]

    assert set(line.split()[1:]) == {
        "8080", "50051", "50052", "50053", "50054", "9101", "9102", "9103", "9104",
    }  # fmt: skip
