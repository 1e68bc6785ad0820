"""API keys ``ssk_<key_id>_<secret>``: stored as sha256(secret) only, verified through a short-lived cache.

The key id (12 hex characters) finds the row; the secret (32 random bytes, urlsafe base64) proves possession.
A verified row is cached for ``ttl_s`` seconds so thousands of reads per second cost no database round trip,
which also bounds how long a revoked key keeps working. The plain key exists only in `create_key`'s answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple, get_args

from msgspec import Struct
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync.adapters import tables as t
from stocksync.domain.errors import InvalidRequest, Unauthorized
from stocksync.domain.events import ID_PATTERN

Role = Literal["admin", "ecommerce", "staff", "pos"]
ROLES: tuple[str, ...] = get_args(Role)
SCOPED_ROLES = frozenset({"staff", "pos"})  # act only at the locations the key names

_KEY = re.compile(r"ssk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_LOCATION = re.compile(ID_PATTERN)


class ApiKey(Struct, frozen=True, kw_only=True):
    """The principal a verified key stands for."""

    key_id: str
    role: Role
    locations: frozenset[str] = frozenset()


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
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    async with engine.begin() as conn:
        await conn.execute(
            insert(t.api_keys).values(
                key_id=key_id,
                secret_hash=_digest(secret),
                role=role,
                locations=sorted(set(locations)),
                label=label,
            )
        )
    return f"ssk_{key_id}_{secret}"


class _Entry(NamedTuple):
    secret_hash: bytes  # empty for an unknown or revoked key id, so misses are cached too
    key: ApiKey | None
    fetched_at: float


class KeyVerifier:
    """Turns a presented key into its `ApiKey`, or raises `Unauthorized`."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        ttl_s: float = 15.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        self._loading: dict[str, asyncio.Future[_Entry]] = {}

    async def verify(self, presented: str) -> ApiKey:
        match = _KEY.fullmatch(presented)
        if match is None:
            raise Unauthorized("the API key is malformed")
        key_id, secret = match.groups()
        entry = self._cache.get(key_id)
        if entry is None or self._clock() - entry.fetched_at > self._ttl_s:
            entry = await self._load_once(key_id)
        if entry.key is None or not hmac.compare_digest(entry.secret_hash, _digest(secret)):
            raise Unauthorized("the API key is unknown or revoked")
        return entry.key

    async def _load_once(self, key_id: str) -> _Entry:
        """One read per key however many requests find its entry expired at once: each taking a pooled
        connection for the same row stalled every request in flight, once per ``ttl_s``, under load."""
        loading = self._loading.get(key_id)
        if loading is None:
            loading = self._loading[key_id] = asyncio.ensure_future(self._load(key_id))
            loading.add_done_callback(lambda _: self._loading.pop(key_id, None))
        return await asyncio.shield(loading)

    async def _load(self, key_id: str) -> _Entry:
        k = t.api_keys.c
        query = select(k.secret_hash, k.role, k.locations).where(k.key_id == key_id, k.revoked_at.is_(None))
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            entry = _Entry(secret_hash=b"", key=None, fetched_at=self._clock())
        else:
            key = ApiKey(key_id=key_id, role=row.role, locations=frozenset(row.locations))
            entry = _Entry(secret_hash=row.secret_hash, key=key, fetched_at=self._clock())
        if len(self._cache) >= self._max_entries:
            self._cache.clear()  # only guessed key ids can fill it; starting over is cheap
        self._cache[key_id] = entry
        return entry
