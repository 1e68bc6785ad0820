"""NATS access with the API keys (spec section 3, "Access to NATS"), against a real nats-server running the
configuration `stocksync nats config` prints, and `serve` running the auth callout, worker and relay.

What is refused shows as the server's permission violation (nats-py's error callback) and as the message
missing from the stream; what is allowed is in the stream. The callout's user JWTs live 2 s here.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
import nats
import pytest
from nats.aio.client import Client

import stocksync
from stocksync.adapters.database import create_engine
from stocksync.adapters.locations import upsert_locations
from stocksync.aio import cancel_and_wait
from stocksync.domain.access import EVENT_GRANTS
from stocksync.domain.events import INBOUND_TYPES, QtyLine, encode
from stocksync.domain.model import Location
from stocksync.embedded.nats import nats_server_binary
from stocksync.embedded.processes import free_port
from stocksync.messaging.nats_auth import new_seed, server_config, service_options
from stocksync.messaging.topology import migrate_topology
from stocksync.migrate import migrate_database_async
from stocksync.server import serve
from stocksync.service.keys import create_key
from stocksync.settings import Settings
from stocksync.wire import IN_STREAM, key_options
from stocksync_client.connection import connect
from stocksync_client.ecommerce import EcommerceClient
from stocksync_client.pos import PosClient
from tests.support import NatsServer
from tests.support_ledger import receipt
from tests.support_nats import fetch, wait_until

TTL_S = 2.0
PICKUP, OTHER = "store-a", "store-b"  # store-a is a pickup store, store-b is not
SERVICE_ONLY = ("stocksync.out.availability.x.y", "stocksync.dlq.x", "$KV.stocksync_availability.x.y")


@dataclass
class Secured:
    nats_url: str
    database_url: str
    settings: Settings
    keys: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
async def secured(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> AsyncIterator[Secured]:
    access = Settings(
        database_url=database_url,
        nats_nkey_seed=new_seed("user"),
        nats_auth_issuer_seed=new_seed("account"),
        nats_auth_ttl_s=TTL_S,
        http_port=free_port(),
    )
    server = NatsServer(tmp_path_factory.mktemp("nats-secured"), access=access)
    server.start()
    settings = msgspec.structs.replace(access, nats_url=server.url)
    await migrate_database_async(database_url)
    await migrate_topology(server.url, **service_options(settings))
    engine = create_engine(database_url, pool_size=1)
    try:
        await upsert_locations(
            engine,
            [
                Location(location_id=PICKUP, kind="store", name=PICKUP, pickup_enabled=True),
                Location(location_id=OTHER, kind="store", name=OTHER, pickup_enabled=False),
            ],
        )
        keys = {
            "pos": await create_key(engine, "pos", [PICKUP]),
            "staff": await create_key(engine, "staff", [PICKUP]),
            "ecommerce": await create_key(engine, "ecommerce"),
            "admin": await create_key(engine, "admin"),
        }
    finally:
        await engine.dispose()
    task = asyncio.create_task(serve(settings, ("api", "worker", "relay", "auth")))
    try:
        yield Secured(server.url, database_url, settings, keys)
        assert not task.done(), f"serve stopped: {task.exception()!r}"
    finally:
        await cancel_and_wait(task)
        for signum in (signal.SIGINT, signal.SIGTERM):  # serve leaves its handlers installed
            asyncio.get_running_loop().remove_signal_handler(signum)
        server.stop()


@dataclass
class KeyConnection:
    nc: Client
    errors: list[str] = field(default_factory=list)
    disconnects: int = 0

    def refused(self, subject: str) -> bool:
        subject = subject.lower()
        return any(subject in error.lower() and "permission" in error.lower() for error in self.errors)

    async def refusals(self, subjects: list[str]) -> None:
        """Wait for the server's violations of these subjects (nats-py reports them in tasks of their own),
        after a round trip that comes after every earlier publish."""
        await self.nc.flush()
        await wait_until(lambda: _true(all(self.refused(subject) for subject in subjects)), timeout=30)


@asynccontextmanager
async def connected(url: str, api_key: str | None, **options) -> AsyncIterator[KeyConnection]:
    holder: list[KeyConnection] = []

    async def on_error(error: Exception) -> None:
        holder[0].errors.append(str(error))

    async def on_disconnect() -> None:
        holder[0].disconnects += 1

    holder.append(KeyConnection(nc=None))  # type: ignore[arg-type]
    holder[0].nc = await nats.connect(
        url,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        connect_timeout=5,
        **key_options(api_key),
        **options,
    )
    try:
        yield holder[0]
    finally:
        await holder[0].nc.close()


async def refused_to_connect(url: str, token: str | None) -> bool:
    options = {"token": token} if token else {}
    try:
        nc = await nats.connect(
            url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5, **options
        )
    except nats.errors.Error as error:
        return "authorization" in str(error).lower()
    await nc.close()
    return False


async def in_stream(secured: Secured, subject: str) -> int:
    nc = await connect(secured.nats_url, **service_options(secured.settings))
    try:
        info = await nc.jetstream().stream_info(IN_STREAM, subjects_filter=subject)
        return sum((info.state.subjects or {}).values())
    finally:
        await nc.close()


def may_publish(role: str, location: str, kind: str) -> bool:
    if role == "admin":
        return True
    kinds, where = EVENT_GRANTS[role]
    return kind in kinds and location == PICKUP  # pos and staff keys are at PICKUP, the only pickup store


async def test_readiness_reports_the_auth_callout(secured: Secured) -> None:
    url = f"http://127.0.0.1:{secured.settings.http_port}/health/ready"
    async with httpx.AsyncClient() as http:
        answer = await wait_until(lambda: _answered(http, url), timeout=60)
    assert answer.status_code == 200 and answer.json()["serves"]["auth"] is True, answer.text


async def _answered(http: httpx.AsyncClient, url: str) -> httpx.Response | None:
    try:
        return await http.get(url)
    except httpx.TransportError:
        return None


async def test_no_unknown_malformed_or_revoked_key_connects(secured: Secured) -> None:
    engine = create_engine(secured.database_url, pool_size=1)
    try:
        revoked = await create_key(engine, "pos", [PICKUP])
    finally:
        await engine.dispose()
    await revoke(secured, revoked)
    unknown = "ssk_000000000000_" + "A" * 43
    for token in (None, unknown, "not-a-key", revoked):
        assert await refused_to_connect(secured.nats_url, token), token
    for key in secured.keys.values():
        assert not await refused_to_connect(secured.nats_url, key)


@pytest.mark.parametrize("role", ["pos", "staff", "ecommerce", "admin"])
async def test_each_key_publishes_only_its_own_event_subjects(secured: Secured, role: str) -> None:
    subjects = {
        f"stocksync.in.{loc}.{kind}": may_publish(role, loc, kind)
        for loc in (PICKUP, OTHER)
        for kind in INBOUND_TYPES
    }
    before = {subject: await in_stream(secured, subject) for subject in subjects}
    async with connected(secured.nats_url, secured.keys[role]) as conn:
        for subject in subjects:
            await conn.nc.publish(subject, b"{}", headers={"Nats-Msg-Id": f"{role}-{subject}-{id(conn)}"})
        await conn.refusals([subject for subject, allowed in subjects.items() if not allowed])
        for subject, allowed in subjects.items():
            assert conn.refused(subject) is not allowed, (role, subject, conn.errors)
    for subject, allowed in subjects.items():
        assert await in_stream(secured, subject) == before[subject] + allowed, (role, subject)


@pytest.mark.parametrize("role", ["pos", "staff", "ecommerce"])
async def test_only_admin_writes_the_service_subjects_or_manages_streams(secured: Secured, role: str) -> None:
    async with connected(secured.nats_url, secured.keys[role]) as conn:
        for subject in SERVICE_ONLY:
            await conn.nc.publish(subject, b"{}")
        with pytest.raises(nats.errors.Error):  # refused: never answered
            await conn.nc.request(f"$JS.API.STREAM.DELETE.{IN_STREAM}", b"", timeout=1)
        await conn.refusals([*SERVICE_ONLY, f"$JS.API.STREAM.DELETE.{IN_STREAM}"])
    assert await in_stream(secured, ">") > 0  # the stream is still there


async def test_admin_may_write_service_subjects_and_call_the_jetstream_api(secured: Secured) -> None:
    async with connected(secured.nats_url, secured.keys["admin"]) as conn:
        ack = await conn.nc.jetstream().publish("stocksync.out.availability.x.y", b"{}", timeout=5)
        assert ack.stream == "STOCKSYNC_OUT"
        assert IN_STREAM in [info.config.name for info in await conn.nc.jetstream().streams_info()]
        assert conn.errors == []


async def test_a_pos_key_reads_its_own_store_only(secured: Secured) -> None:
    async with connected(secured.nats_url, secured.keys["pos"]) as conn:
        await conn.nc.subscribe(f"stocksync.out.outcome.{PICKUP}")
        await conn.nc.subscribe(f"stocksync.out.outcome.{OTHER}")
        await conn.nc.subscribe("stocksync.out.reservation.>")
        await conn.nc.subscribe("_INBOX.>")  # another connection's replies
        await conn.refusals([f"stocksync.out.outcome.{OTHER}", "stocksync.out.reservation.>", "_INBOX.>"])
        assert not conn.refused(f"stocksync.out.outcome.{PICKUP}")
        # a consumer named for its own outcomes but reading another store's: the server refuses it
        config = {"name": "c1", "filter_subject": f"stocksync.out.outcome.{OTHER}", "ack_policy": "none"}
        answer = await conn.nc.request(
            f"$JS.API.CONSUMER.CREATE.STOCKSYNC_OUT.c1.stocksync.out.outcome.{PICKUP}",
            json.dumps({"stream_name": "STOCKSYNC_OUT", "config": config}).encode(),
            timeout=10,
        )
        assert "error" in json.loads(answer.data), answer.data


async def test_a_revoked_keys_open_connection_is_dropped_and_stays_out(secured: Secured) -> None:
    engine = create_engine(secured.database_url, pool_size=1)
    try:
        key = await create_key(engine, "pos", [PICKUP])
    finally:
        await engine.dispose()
    async with connected(secured.nats_url, key, reconnect_time_wait=0.2, max_reconnect_attempts=-1) as conn:
        assert conn.nc.is_connected
        await revoke(secured, key)
        # the server closes it when its authorisation expires (nats-py does not reconnect after that)
        await wait_until(lambda: _true(conn.nc.is_closed), timeout=30)
        assert "authentication expired" in str(conn.nc.last_error)
        assert await refused_to_connect(secured.nats_url, key)  # and a new connection is refused


async def test_a_valid_keys_connection_is_authorised_again_after_it_expires(secured: Secured) -> None:
    async with await EcommerceClient.open(secured.nats_url, api_key=secured.keys["ecommerce"]) as shop:
        first = shop.nc
        await wait_until(lambda: _true(first.is_closed), timeout=30)  # expired after TTL_S
        answer = await shop.reserve(PICKUP, [QtyLine(sku="SKU-NONE", qty=1)], timeout_s=30)
        assert shop.nc is not first and answer.status == "rejected"


async def revoke(secured: Secured, key: str) -> None:
    query = "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1"
    await fetch(secured.database_url, query, key.split("_")[1])


async def test_a_till_with_its_key_sells_through_the_locked_server(secured: Secured, tmp_path: Path) -> None:
    """Past the TTL too: the till connects again when its authorisation expires."""
    async with await PosClient.open(
        secured.nats_url, PICKUP, "till-1", tmp_path / "spool.sqlite3", api_key=secured.keys["pos"]
    ) as till:
        first = await till.sell([QtyLine(sku="SKU-1", qty=1)])
        await till.wait_until_drained(timeout=60)
        connection = till._nc
        await wait_until(lambda: _true(connection is not None and connection.is_closed), timeout=30)
        second = await till.sell([QtyLine(sku="SKU-1", qty=1)])
        await till.wait_until_drained(timeout=60)
    for event_id in (first, second):
        query = "SELECT outcome FROM processed_events WHERE event_id = $1"
        assert len(await fetch(secured.database_url, query, event_id)) == 1, event_id


async def test_the_web_shop_reserves_at_a_pickup_store_with_its_key(secured: Secured) -> None:
    async with await EcommerceClient.open(secured.nats_url, api_key=secured.keys["ecommerce"]) as shop:
        answer = await shop.reserve(PICKUP, [QtyLine(sku="SKU-NONE", qty=1)], timeout_s=30)
    assert answer.status == "rejected" and answer.shortages  # applied by the service: nothing in stock


def test_stocksync_nats_config_prints_a_config_nats_server_accepts(tmp_path: Path) -> None:
    """From the settings alone: no NATS runs at the URL it is given."""
    service, issuer = new_seed("user"), new_seed("account")
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(stocksync.__file__).parents[1]),
        "STOCKSYNC_NATS_URL": "nats://nowhere.invalid:4222",
        "STOCKSYNC_NATS_NKEY_SEED": service,
        "STOCKSYNC_NATS_AUTH_ISSUER_SEED": issuer,
    }
    printed = subprocess.run(
        [sys.executable, "-m", "stocksync.cli", "nats", "config"], env=env, capture_output=True, text=True
    )
    assert printed.returncode == 0, printed.stderr
    assert service not in printed.stdout and issuer not in printed.stdout  # public keys only
    assert server_config(Settings(nats_nkey_seed=service, nats_auth_issuer_seed=issuer)) == printed.stdout
    path = tmp_path / "nats.conf"
    path.write_text(printed.stdout)
    command = [str(nats_server_binary()), "-t", "-c", str(path)]
    checked = subprocess.run(command, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr + checked.stdout


async def _true(value: bool) -> bool:
    return value


async def test_a_client_with_a_revoked_key_is_told_at_once(secured: Secured) -> None:
    engine = create_engine(secured.database_url, pool_size=1)
    try:
        key = await create_key(engine, "ecommerce")
    finally:
        await engine.dispose()
    await revoke(secured, key)
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await asyncio.wait_for(EcommerceClient.open(secured.nats_url, api_key=key), timeout=30)


async def test_staff_receives_stock_and_the_web_shop_watches_it_from_the_bucket(secured: Secured) -> None:
    arrival = receipt(PICKUP, [("SKU-WATCHED", 5)])
    async with connected(secured.nats_url, secured.keys["staff"]) as staff:
        await staff.nc.jetstream().publish(
            f"stocksync.in.{PICKUP}.receipt", encode(arrival), headers={"Nats-Msg-Id": arrival.event_id}
        )
    async with await EcommerceClient.open(secured.nats_url, api_key=secured.keys["ecommerce"]) as shop:
        async with aclosing(shop.watch(PICKUP, "SKU-WATCHED")) as changes:
            seen = await asyncio.wait_for(anext(changes), timeout=60)
    assert (seen.location_id, seen.sku, seen.on_hand) == (PICKUP, "SKU-WATCHED", 5)


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1 signed by it (openssl): ca.pem, cert.pem, key.pem."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=ca")
    openssl("req", *curve, "-keyout", "key.pem", "-out", "cert.csr", "-subj", "/CN=127.0.0.1")
    (directory / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509", "-req", "-in", "cert.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "cert.pem", "-days", "1", "-extfile", "ext",
    )  # fmt: skip
    return directory / "ca.pem", directory / "cert.pem", directory / "key.pem"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make certificates")
async def test_the_service_speaks_tls_to_nats_with_its_ca(tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path)
    settings = Settings(
        nats_nkey_seed=new_seed("user"),
        nats_auth_issuer_seed=new_seed("account"),
        nats_tls_ca=str(ca),
        nats_tls_cert=str(cert),
        nats_tls_key=str(key),
    )
    server = NatsServer(tmp_path / "nats", access=settings)  # `nats config` adds the tls block
    server.start()
    try:
        await migrate_topology(server.url, **service_options(settings))
        with pytest.raises(ssl.SSLCertVerificationError):  # a client that does not trust the CA
            await nats.connect(server.url, allow_reconnect=False, max_reconnect_attempts=0)
    finally:
        server.stop()


@pytest.mark.parametrize("role", ["pos", "staff", "ecommerce", "admin"])
async def test_only_the_web_shop_and_admin_place_orders_and_read_channels(
    secured: Secured, role: str
) -> None:
    allowed = role in ("ecommerce", "admin")
    subject = f"stocksync.in._order.web-{role}.place"
    before = await in_stream(secured, subject)
    async with connected(secured.nats_url, secured.keys[role]) as conn:
        await conn.nc.publish(subject, b"{}")
        await conn.nc.subscribe("stocksync.out.order.>")
        await conn.nc.subscribe("stocksync.out.channel.>")
        if allowed:
            await conn.nc.flush()
            kv = await conn.nc.jetstream().key_value("stocksync_channel_availability")
            with pytest.raises(nats.js.errors.KeyNotFoundError):
                await kv.get("web.none")
            await asyncio.sleep(0.5)  # a violation would have come back by now
            assert conn.errors == [], conn.errors
        else:
            await conn.refusals([subject, "stocksync.out.order.>", "stocksync.out.channel.>"])
    assert await in_stream(secured, subject) == before + allowed
