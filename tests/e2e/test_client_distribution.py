"""The stocksync-client distribution installs alone: its wheel, built from client/, needs nats-py, httpx and
msgspec and nothing else, and its packages import in a fresh virtualenv where no ``stocksync`` exists."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client's wheel and those of its dependencies (from the indexes pip is configured with)."""
    out = tmp_path_factory.mktemp("client-wheels")
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(out), str(ROOT / "client")]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    return out


def test_the_wheel_requires_exactly_nats_py_httpx_and_msgspec(wheels: Path) -> None:
    [wheel] = wheels.glob("stocksync_client-0.1.0-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        [metadata] = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        fields = Parser().parsestr(archive.read(metadata).decode())
        packages = {name.split("/")[0] for name in archive.namelist() if "dist-info" not in name}
    required = {
        requirement.split(">")[0].split("=")[0].strip() for requirement in fields.get_all("Requires-Dist")
    }
    assert fields["Name"] == "stocksync-client"
    assert required == {"nats-py", "httpx", "msgspec"}
    assert packages == {"stocksync_client", "stocksync_contract"}


def test_the_clients_import_in_a_virtualenv_without_the_server(wheels: Path, tmp_path: Path) -> None:
    venv.create(tmp_path / "venv", with_pip=True)
    python = str(tmp_path / "venv" / "bin" / "python")
    install = [python, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheels)]
    subprocess.run([*install, "stocksync-client"], check=True, capture_output=True, timeout=300)
    probe = (
        "import importlib.util, stocksync_client, stocksync_contract.wire;"
        "from stocksync_client import PosClient, EcommerceClient, ApiError;"
        "print(importlib.util.find_spec('stocksync') is None, stocksync_contract.wire.IN_STREAM)"
    )
    answer = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.split() == ["True", "STOCKSYNC_IN"]
    listed = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True)
    installed = {line.split("==")[0].lower() for line in listed.stdout.split()}
    assert "stocksync" not in installed and not {"litestar", "sqlalchemy", "structlog"} & installed
