"""The `stocksync` command line (spec section 5). Adapters only: each command translates to a service call."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import uvloop
from rich.console import Console
from rich.progress import Progress

from stocksync import __version__
from stocksync.adapters.database import create_engine
from stocksync.embedded import NotInstalled, embedded_services
from stocksync.logs import configure_logging
from stocksync.settings import HELP, SERVICE_ROLES, Settings, SettingsError

if TYPE_CHECKING:
    from stocksync.service.keys import KeyInfo

console = Console(stderr=True)
KEY_ROLES = ("admin", "ecommerce", "staff", "pos")


EXAMPLES = """examples:
  stocksync migrate                                  schema and NATS streams, safe to repeat
  stocksync serve                                    everything in one process (embedded servers if unset)
  stocksync serve --role api --role sweeper          the API and the sweeper only
  stocksync keys create --role pos --location store-1 --label "till 3"
  stocksync keys list --json
  stocksync reconcile --counts counts.csv --report findings.json
  stocksync nats config > nats-server.conf
  stocksync health --role worker                     exit 0 if this machine's worker answers (HEALTHCHECK)
"""


def _epilog() -> str:
    width = max(len(f"STOCKSYNC_{field.upper()}") for field in HELP)
    lines = [f"  {f'STOCKSYNC_{field.upper()}':<{width}}  {text}" for field, text in HELP.items()]
    return (
        EXAMPLES + "\nenvironment (any other STOCKSYNC_ variable is refused as a typo):\n" + "\n".join(lines)
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stocksync",
        description="The real-time stock ledger.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"stocksync {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="bring the schema (and NATS topology) to the current version")
    serve = commands.add_parser("serve", help="run the HTTP API and background parts")
    serve.add_argument(
        "--role", action="append", choices=SERVICE_ROLES, help="run only this part (repeatable); default: all"
    )
    health = commands.add_parser(
        "health",
        help="exit 0 when the `serve` of these settings and roles answers here: the API's /health/ready,"
        " else the process's /metrics (a container's HEALTHCHECK; needs no curl)",
    )
    health.add_argument("--role", action="append", choices=SERVICE_ROLES, help="as given to serve")
    keys = commands.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create an API key and print it once")
    create.add_argument("--role", required=True, choices=KEY_ROLES)
    create.add_argument("--location", action="append", default=[], help="a location the key may act on")
    create.add_argument("--label", help="who the key is for")
    listing = keys.add_parser("list", help="every key: role, locations, label, created, revoked (no secrets)")
    listing.add_argument("--json", action="store_true", help="a JSON array, for scripts")
    revoke = keys.add_parser("revoke", help="revoke a key: refused over HTTP within a second")
    revoke.add_argument("key_id", metavar="KEY_ID", help="the 12 hex characters after ssk_")
    rotate = keys.add_parser("rotate", help="print a new key of the same role and scope; revoke the old one")
    rotate.add_argument("key_id", metavar="KEY_ID", help="the 12 hex characters after ssk_")
    commands.add_parser("demo", help="seed demo locations, skus, stock and keys, and print the keys")
    nats = commands.add_parser("nats", help="NATS").add_subparsers(dest="nats_command", required=True)
    nats.add_parser(
        "config", help="print the nats-server configuration that enforces the access rules (needs no NATS)"
    )
    _pos_simulate_arguments(
        commands.add_parser("pos", help="a till").add_subparsers(dest="pos_command", required=True)
    )
    _reconcile_arguments(
        commands.add_parser(
            "reconcile",
            help="the nightly reconciliation: prove the ledger whole, true it against store counts",
            description="Exit 0 clean, 1 discrepancies found, 2 could not run. See docs/operations.md.",
        )
    )
    return parser


def _reconcile_arguments(reconcile: argparse.ArgumentParser) -> None:
    def report(value: str) -> Path:
        if not value.lower().endswith((".json", ".csv")):
            raise argparse.ArgumentTypeError(f"{value!r}: a report is FILE.json or FILE.csv")
        return Path(value)

    reconcile.add_argument(
        "--counts",
        type=Path,
        metavar="FILE.csv",
        help="store counts: location_id,sku,counted,counted_at[,cost] with a header row",
    )
    reconcile.add_argument("--apply", action="store_true", help="post the count differences as count events")
    reconcile.add_argument(
        "--repair",
        action="store_true",
        help="expire overdue reservations, re-relay stuck "
        "outbox rows, rewrite stale bucket entries (never edits movements)",
    )
    reconcile.add_argument(
        "--pos-journal",
        type=Path,
        metavar="FILE.jsonl",
        help="a POS spool, one event per line: each must have an outcome",
    )
    reconcile.add_argument(
        "--report",
        type=report,
        action="append",
        default=[],
        metavar="FILE.json|FILE.csv",
        help="write one row per finding for machines (repeatable)",
    )
    reconcile.add_argument(
        "--grace-seconds",
        type=float,
        default=300.0,
        metavar="N",
        help="leave what changed in the last N seconds alone: it may be in flight (300)",
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        return _refused("stocksync", error)
    configure_logging(settings.log_format, settings.log_level)
    if args.command == "nats":  # from the settings alone: no servers to start
        return _nats_config(settings)
    if args.command == "health":  # asks the running process: no servers to start
        return _health(settings, args.role or SERVICE_ROLES)
    command: Callable[[Settings, argparse.Namespace], Awaitable[int]] = {
        "migrate": _migrate,
        "serve": _serve,
        "keys": _keys,
        "demo": _demo,
        "pos": _pos_simulate,
        "reconcile": _reconcile,
    }[args.command]
    if getattr(args, "local", False):  # works on local files only: no servers to start
        return _pos_journal(args)
    try:
        with embedded_services(settings) as resolved:
            # uvloop: measured 20-30% more HTTP requests/s than asyncio's loop (benchmarks/profiling.md)
            return uvloop.run(command(resolved, args))
    except KeyboardInterrupt:
        return 130
    except NotInstalled as error:
        return _refused(f"stocksync {args.command}", error)
    except Exception as error:
        if not _unreachable_server(error):
            raise  # a defect: its traceback is what is needed
        return _refused(f"stocksync {args.command}", _unreachable(error))


def _refused(who: str, why: object) -> int:
    """One line on stderr, exit 2: how every misuse of the command line ends."""
    from rich.markup import escape

    console.print(f"[red]{who}:[/red] {escape(str(why))}", soft_wrap=True)
    return 2


def _unreachable_server(error: BaseException) -> bool:
    """A server a command needs is not there (refused, gone, timed out), as the worker judges faults."""
    from nats.errors import NoServersError

    from stocksync.adapters.faults import passing_fault

    return isinstance(error, (NoServersError, TimeoutError)) or passing_fault(error)


def _unreachable(error: BaseException) -> str:
    """Which server did not answer, and how (a command that cannot reach its servers is not a crash)."""
    from nats.errors import Error as NatsError
    from sqlalchemy.exc import DBAPIError

    what = (
        "NATS" if isinstance(error, NatsError) else "the database" if isinstance(error, DBAPIError) else None
    )
    cause = f"{type(getattr(error, 'orig', None) or error).__name__}: {error}".splitlines()[0][:300]
    if what is None:  # a bare OSError: the database is the first server every command uses
        what = "the database or NATS"
    return f"could not reach {what} ({cause}); is it up, and is its STOCKSYNC_ URL right?"


async def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from nats.js.errors import APIError

    from stocksync.messaging.nats_auth import service_options
    from stocksync.messaging.topology import migrate_topology
    from stocksync.migrate import migrate_database_async

    await migrate_database_async(settings.database_url)
    console.print("[green]database schema is current[/green]")
    try:
        await migrate_topology(settings.nats_url, settings.nats_replicas, **service_options(settings))
    except APIError as error:  # a cluster that never formed, or a config it refuses: say what it said
        return _refused(
            "stocksync migrate", f"NATS refused the streams: {error.description} ({error.err_code})"
        )
    console.print("[green]NATS streams, consumer and bucket are current[/green]")
    return 0


async def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from stocksync.server import CannotListen, serve

    try:
        await serve(settings, args.role or SERVICE_ROLES)
    except CannotListen as error:
        return _refused("stocksync serve", error)
    return 0


async def _keys(settings: Settings, args: argparse.Namespace) -> int:
    """Each keys command; a misuse (bad role or scope, unknown or malformed key id) is one line and exit 2."""
    from sqlalchemy.exc import DBAPIError

    from stocksync.domain.errors import StocksyncError
    from stocksync.service import keys

    engine = create_engine(settings.database_url, pool_size=1)
    try:
        if args.keys_command == "create":
            print(await keys.create_key(engine, args.role, args.location, args.label))
        elif args.keys_command == "list":
            _print_keys(await keys.list_keys(engine), as_json=args.json)
        elif args.keys_command == "revoke":
            revoked = await keys.revoke_key(engine, args.key_id)
            console.print(f"key {revoked.key_id} revoked at {revoked.revoked_at:%Y-%m-%d %H:%M:%S} UTC")
        else:
            key, old = await keys.rotate_key(engine, args.key_id)
            console.print(f"key {old.key_id} revoked; its {old.role} replacement:")
            print(key)
    except StocksyncError as error:
        return _refused(f"keys {args.keys_command}", error.detail)
    except (OSError, DBAPIError) as error:
        cause = type(getattr(error, "orig", None) or error).__name__
        why = f"the database could not be used ({cause}): is it up, and migrated (stocksync migrate)?"
        return _refused(f"keys {args.keys_command}", why)
    finally:
        await engine.dispose()
    return 0


def _print_keys(rows: list[KeyInfo], *, as_json: bool) -> None:
    if as_json:
        import msgspec

        print(msgspec.json.encode(rows).decode())
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table()
    for column in ("key_id", "role", "locations", "label", "created_at (UTC)", "revoked_at (UTC)"):
        table.add_column(column, no_wrap=column not in ("locations", "label"))
    for row in rows:
        table.add_row(
            row.key_id,
            row.role,
            ", ".join(row.locations),
            escape(row.label or ""),
            f"{row.created_at:%Y-%m-%d %H:%M}",
            f"{row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "",
            style="dim" if row.revoked_at else None,
        )
    Console().print(table)


async def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from stocksync.service.demo import LOCATIONS, demo_receipts, demo_skus, seed_demo
    from stocksync.service.keys import create_key
    from stocksync.service.ledger_service import LedgerService

    engine = create_engine(settings.database_url, pool_size=2)
    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("stocking the demo retailer", total=len(demo_receipts(demo_skus())))
            skus = await seed_demo(
                engine, LedgerService(engine), progress=lambda n: progress.advance(task, n)
            )
        store = next(location.location_id for location in LOCATIONS if location.kind == "store")
        keys = {
            "admin": await create_key(engine, "admin", (), "demo admin"),
            "ecommerce": await create_key(engine, "ecommerce", (), "demo web shop"),
            "staff": await create_key(engine, "staff", (store,), f"demo staff at {store}"),
            "pos": await create_key(engine, "pos", (store,), f"demo tills at {store}"),
        }
    finally:
        await engine.dispose()
    home = Path(settings.home)
    home.mkdir(parents=True, exist_ok=True)
    (home / "demo-keys.json").write_text(json.dumps({"keys": keys, "store": store, "sku": skus[0]}, indent=2))
    console.print(f"[green]demo retailer ready:[/green] {len(LOCATIONS)} locations, {len(skus)} skus")
    for role, key in keys.items():
        print(f"{role:<10} {key}")
    return 0


def _nats_config(settings: Settings) -> int:
    """From the settings alone; for the embedded NATS (no ``STOCKSYNC_NATS_URL``) its secrets in the home."""
    from stocksync.embedded import with_nats_secrets
    from stocksync.messaging.nats_auth import server_config

    if settings.nats_url is None:
        settings = with_nats_secrets(settings, Path(settings.home).expanduser().resolve())
    elif not settings.nats_auth_issuer_seed or not (settings.nats_nkey_seed or settings.nats_creds):
        console.print(
            "[yellow]no STOCKSYNC_NATS_AUTH_ISSUER_SEED and service NKey: this server would be open[/yellow]"
        )
    print(server_config(settings), end="")
    return 0


def _health(settings: Settings, roles: list[str] | tuple[str, ...]) -> int:
    """Exit 0 when the local process answers 200, else 1 (what Docker's HEALTHCHECK reads). The API's
    readiness checks the database; a process without the API answers on its metrics port while it runs."""
    import http.client

    from stocksync.metrics import DEFAULT_PORT

    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # listening on all: ask loopback
    host = wildcard.get(settings.http_host, settings.http_host)
    port, path = (
        (settings.http_port, "/health/ready")
        if "api" in roles
        else (settings.metrics_port or DEFAULT_PORT, "/metrics")
    )
    url = f"http://{host}:{port}{path}"
    connection = http.client.HTTPConnection(host, port, timeout=5)  # not urllib: no HTTP(S)_PROXY detour
    try:
        connection.request("GET", path)
        status = connection.getresponse().status
    except OSError as error:
        console.print(f"[red]stocksync health:[/red] {url} does not answer ({error})", soft_wrap=True)
        return 1
    finally:
        connection.close()
    console.print(f"stocksync health: {url} {status}", soft_wrap=True)
    return 0 if status == 200 else 1


async def _reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from stocksync.domain.reconciliation import BadInput
    from stocksync.messaging.nats_auth import service_options
    from stocksync.messaging.relay import relay_all
    from stocksync.service.reconciliation import CouldNotRun, ReconcileOptions, reconcile
    from stocksync.service.reconciliation.terminal import RichProgress, render

    if args.apply and not args.counts:
        console.print("[red]--apply needs --counts FILE.csv[/red]")
        return 2
    options = ReconcileOptions(
        counts=args.counts,
        apply=args.apply,
        repair=args.repair,
        pos_journal=args.pos_journal,
        reports=tuple(args.report),
        grace_seconds=args.grace_seconds,
        home=Path(settings.home),
    )
    try:
        with RichProgress(console) as progress:
            summary = await reconcile(
                settings.database_url,
                settings.nats_url,
                options,
                progress=progress,
                nats_options=service_options(settings),
                relay_all=relay_all,
            )
    except (BadInput, CouldNotRun) as error:
        return _refused("reconcile could not run", error)
    except Exception:  # exit 1 means discrepancies: a crash must not read as one
        console.print_exception()
        return 2
    render(summary, Console())
    return summary.exit_code


def _pos_simulate_arguments(pos: argparse._SubParsersAction) -> None:
    simulate = pos.add_parser("simulate", help="drive a till with random sales and returns, for demos")
    simulate.add_argument("--location", required=True, help="the store the till is in")
    simulate.add_argument("--till", required=True, help="the till's id")
    simulate.add_argument("--rate", type=float, default=5.0, help="transactions per second (5)")
    simulate.add_argument("--count", type=int, default=100, help="transactions to ring up (100)")
    simulate.add_argument(
        "--spool", type=Path, help="the till's spool (default: <home>/pos/<location>-<till>.sqlite3)"
    )
    simulate.add_argument(
        "--sku",
        action="append",
        default=[],
        help="a sku to sell (repeatable; default: those with stock at the location)",
    )
    simulate.add_argument(
        "--wait", type=float, default=30.0, help="seconds to wait for the last outcomes (30)"
    )
    simulate.add_argument(
        "--key", help="the store's pos key, the NATS token (default: the key `stocksync demo` saved)"
    )
    journal = pos.add_parser("journal", help="write a till's journal (30 days) as JSON lines for reconcile")
    journal.add_argument("--spool", type=Path, required=True, help="the till's spool file (till closed)")
    journal.add_argument("--out", type=Path, help="the JSONL file to write (default: standard output)")
    journal.set_defaults(local=True)


async def _pos_simulate(settings: Settings, args: argparse.Namespace) -> int:
    from stocksync.simulate import simulate

    return await simulate(
        settings,
        location_id=args.location,
        till_id=args.till,
        rate=args.rate,
        count=args.count,
        spool=args.spool,
        skus=args.sku,
        wait_s=args.wait,
        console=console,
        api_key=args.key,
    )


def _pos_journal(args: argparse.Namespace) -> int:
    import sqlite3

    from stocksync_client.spool import export_journal

    try:
        if args.out is None:
            export_journal(args.spool, sys.stdout)
            return 0
        with args.out.open("w") as out:
            written = export_journal(args.spool, out)
    except sqlite3.DatabaseError as error:
        why = "not a till's spool" if "not a database" in str(error) else f"cannot be read ({error})"
        return _refused("stocksync pos journal", f"{args.spool}: {why}")
    except OSError as error:
        return _refused("stocksync pos journal", f"{error.filename}: {error.strerror}")
    console.print(f"{written} events written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
