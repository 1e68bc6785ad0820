"""API keys ``ssk_<key_id>_<secret>``: stored as sha256(secret) only, verified through a cache that revocation
empties on every API process at once.

The key id (12 hex characters) finds the row; the secret (32 random bytes, urlsafe base64) proves possession.
The plain key exists only in the answer of `create_key` or `rotate_key`. `revoke_key` and `rotate_key` send
``NOTIFY stocksync_keys, '<key_id>'`` in the transaction that revokes, so each `KeyVerifier` (one per API
process, each LISTENing) forgets the key the moment the revocation commits.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import re
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Literal, NamedTuple, get_args

import structlog
from msgspec import Struct
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from stocksync.adapters import keys as rows
from stocksync.aio import cancel_and_wait
from stocksync.domain.errors import InvalidRequest, NotFound, Unauthorized
from stocksync.domain.events import ID_PATTERN

log = structlog.get_logger("stocksync.keys")

Role = Literal["admin", "ecommerce", "staff", "pos"]
ROLES: tuple[str, ...] = get_args(Role)
SCOPED_ROLES = frozenset({"staff", "pos"})  # act only at the locations the key names

# How long the listener waits for a confirmation before it starts again: a slow answer only lets the lease
# lapse (entries then live fallback_ttl_s), so waiting long costs nothing, and starting over under load
# would only add connections to a busy server.
_PATIENCE_S = 10.0

_KEY = re.compile(r"ssk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_KEY_ID = re.compile(r"[0-9a-f]{12}")
_LOCATION = re.compile(ID_PATTERN)


class ApiKey(Struct, frozen=True, kw_only=True):
    """The principal a verified key stands for."""

    key_id: str
    role: Role
    locations: frozenset[str] = frozenset()


class KeyInfo(Struct, frozen=True, kw_only=True):
    """What `stocksync keys list` shows of a key: never its secret or the secret's hash."""

    key_id: str
    role: Role
    locations: tuple[str, ...]
    label: str | None
    created_at: datetime
    revoked_at: datetime | None


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


async def create_key(
    engine: AsyncEngine, role: str, locations: Sequence[str] = (), label: str | None = None
) -> str:
    """Store a new key and return it in plain: the only time it exists."""
    if role not in ROLES:
        raise InvalidRequest(f"role must be one of {', '.join(ROLES)}", field="role")
    if (role in SCOPED_ROLES) != bool(locations):
        raise InvalidRequest(
            "pos and staff keys name their locations; admin and ecommerce keys none", field="locations"
        )
    if bad := [location for location in locations if not _LOCATION.fullmatch(location)]:
        raise InvalidRequest(f"not a location id: {bad[0]!r}", field="locations")
    async with engine.begin() as conn:
        return await _insert(conn, role, sorted(set(locations)), label)


async def _insert(conn: AsyncConnection, role: str, locations: Sequence[str], label: str | None) -> str:
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    await rows.insert_key(
        conn, key_id=key_id, secret_hash=_digest(secret), role=role, locations=list(locations), label=label
    )
    return f"ssk_{key_id}_{secret}"


def _info(row) -> KeyInfo:
    return KeyInfo(
        key_id=row.key_id,
        role=row.role,
        locations=tuple(row.locations),
        label=row.label,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


async def list_keys(engine: AsyncEngine) -> list[KeyInfo]:
    """Every key, oldest first, revoked ones included (their ``revoked_at`` set)."""
    async with engine.connect() as conn:
        return [_info(row) for row in await rows.public_rows(conn)]


async def revoke_key(engine: AsyncEngine, key_id: str) -> KeyInfo:
    """Revoke ``key_id``: refused over HTTP from the commit on. Revoking twice keeps the first
    ``revoked_at``."""
    async with engine.begin() as conn:
        info, _ = await _revoke(conn, key_id)
        return info


async def rotate_key(engine: AsyncEngine, key_id: str) -> tuple[str, KeyInfo]:
    """A new key with the role, locations and label of ``key_id``, which is revoked at once (no grace: a
    client switches to the new key before the rotation, or retries with it), in one transaction. Returns
    the plain new key and the old key's row. A key revoked already is not rotated: create a new one."""
    async with engine.begin() as conn:
        old, revoked_now = await _revoke(conn, key_id)
        if not revoked_now:
            raise InvalidRequest(f"key {key_id} is revoked already; create a new one", field="key_id")
        return await _insert(conn, old.role, old.locations, old.label), old


async def _revoke(conn: AsyncConnection, key_id: str) -> tuple[KeyInfo, bool]:
    """The key's row after revoking it, and whether this call did; the NOTIFY is delivered at commit."""
    if not _KEY_ID.fullmatch(key_id):
        raise InvalidRequest(
            "not a key id: a key id is the 12 hex characters after ssk_ (see stocksync keys list)",
            field="key_id",
        )
    row = await rows.lock_public_row(conn, key_id)
    if row is None:
        raise NotFound(f"no key {key_id}")
    if row.revoked_at is not None:
        return _info(row), False
    return _info(await rows.revoke(conn, key_id)), True


class _Entry(NamedTuple):
    secret_hash: bytes  # empty for an unknown or revoked key id, so misses are cached too
    key: ApiKey | None
    fetched_at: float


class KeyVerifier:
    """Turns a presented key into its `ApiKey`, or raises `Unauthorized`, with no database round trip for a
    key it has seen.

    A verified row is kept while it is exact: `listen` holds a connection of its own that LISTENs on
    ``stocksync_keys`` and drops each revoked key id from the cache, and confirms every ``lease_s / 4``
    that the connection still answers (a notification committed before a confirmation has arrived
    before it). While the last confirmation is under ``lease_s`` old, an entry lives ``ttl_s``; without
    one (no listener, its connection lost or slow) an entry lives ``fallback_ttl_s``. Either way a
    revoked key is refused within about a second of the commit, on every process.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        ttl_s: float = 60.0,
        fallback_ttl_s: float = 1.0,
        lease_s: float = 1.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._ttl_s = ttl_s
        self._fallback_ttl_s = fallback_ttl_s
        self._lease_s = lease_s
        self._max_entries = max_entries
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        self._loading: dict[str, asyncio.Future[_Entry]] = {}
        self._epoch = 0  # moves on every notification and (re)listen: a load that spans one is not cached
        self._confirmed_at = -math.inf
        self._listener: asyncio.Task[None] | None = None

    async def verify(self, presented: str) -> ApiKey:
        match = _KEY.fullmatch(presented)
        if match is None:
            raise Unauthorized("the API key is malformed")
        key_id, secret = match.groups()
        entry = self._cache.get(key_id)
        if entry is None or not self._fresh(entry):
            entry = await self._load_once(key_id)
        if entry.key is None or not hmac.compare_digest(entry.secret_hash, _digest(secret)):
            raise Unauthorized("the API key is unknown or revoked")
        return entry.key

    @property
    def listening(self) -> bool:
        """Whether every revocation committed more than ``lease_s`` ago has reached this cache."""
        return self._clock() - self._confirmed_at < self._lease_s

    def _fresh(self, entry: _Entry) -> bool:
        age = self._clock() - entry.fetched_at
        return age < (self._ttl_s if self.listening else self._fallback_ttl_s)

    async def _load_once(self, key_id: str) -> _Entry:
        """One read per key however many requests find its entry expired at once: each taking a pooled
        connection for the same row stalled every request in flight, once per ``ttl_s``, under load."""
        loading = self._loading.get(key_id)
        if loading is None:
            loading = self._loading[key_id] = asyncio.ensure_future(self._load(key_id))
            loading.add_done_callback(lambda _: self._loading.pop(key_id, None))
        return await asyncio.shield(loading)

    async def _load(self, key_id: str) -> _Entry:
        epoch, started = self._epoch, self._clock()  # an entry's age counts from before its read
        async with self._engine.connect() as conn:
            row = await rows.live_key(conn, key_id)
        if row is None:
            entry = _Entry(secret_hash=b"", key=None, fetched_at=started)
        else:
            key = ApiKey(key_id=key_id, role=row.role, locations=frozenset(row.locations))
            entry = _Entry(secret_hash=row.secret_hash, key=key, fetched_at=started)
        if epoch != self._epoch:
            return entry  # a revocation arrived while reading: the row read may predate it
        if len(self._cache) >= self._max_entries:
            self._cache.clear()  # only guessed key ids can fill it; starting over is cheap
        self._cache[key_id] = entry
        return entry

    def forget(self, key_id: str) -> None:
        """Drop ``key_id`` (revoked): the next request with it reads its row again."""
        self._epoch += 1
        self._cache.pop(key_id, None)

    async def start(self) -> None:
        """Start listening (the app's start-up): until it has, entries live ``fallback_ttl_s``."""
        if self._listener is None:
            self._listener = asyncio.create_task(self.listen(), name="key-revocations")

    async def stop(self) -> None:
        if self._listener is not None:
            await cancel_and_wait(self._listener)
            self._listener, self._confirmed_at = None, -math.inf

    async def listen(self) -> None:
        """LISTEN for revocations for ever, connecting again when the connection is lost. The connection
        is the engine's (its TLS and credentials), taken out of the pool for good: it is discarded after."""
        interval = self._lease_s / 4
        while True:
            try:
                async with self._engine.connect() as pooled:
                    try:
                        await self._listen_on(pooled, interval)
                    finally:
                        await pooled.invalidate()  # never back in the pool with a LISTEN on it
            except Exception as error:  # the connection lost, or anything else: listen again
                self._confirmed_at = -math.inf
                log.warning("key_listener_lost", error=type(error).__name__)
                await asyncio.sleep(interval)

    async def _listen_on(self, pooled: AsyncConnection, interval: float) -> None:
        conn = (await pooled.get_raw_connection()).driver_connection
        await conn.execute("SET application_name = 'stocksync-keys'")
        await conn.add_listener(
            rows.REVOKED_CHANNEL, lambda _conn, _pid, _channel, key_id: self.forget(key_id)
        )
        self._cache.clear()  # revocations while no one listened were missed
        self._epoch += 1
        while True:
            sent = self._clock()
            await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout=_PATIENCE_S)
            self._confirmed_at = sent
            await asyncio.sleep(interval)
