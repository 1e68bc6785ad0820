"""NATS access with the API keys: the auth callout that authorises each connection, and the server
configuration (``stocksync nats config``) that sends every connection to it.

A client connects with its API key as the token. nats-server asks on ``$SYS.REQ.USER.AUTH``; the callout
verifies the key and answers with a user JWT, signed by the issuer account key, that carries the key's
subjects (`wire.nats_permissions`) and expires after ``nats_auth_ttl_s``. The server drops a
connection whose JWT expired; its reconnect is authorised again, so a revoked key loses its connection within
that time. The service's own processes connect as an NKey user listed in ``auth_users``: never asked about.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import ssl
import time
from pathlib import Path
from typing import Any

import nkeys
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync import metrics
from stocksync.adapters.locations import pickup_location_ids
from stocksync.domain.errors import StocksyncError
from stocksync.logs import outline
from stocksync.service.keys import KeyVerifier
from stocksync.settings import Settings
from stocksync.wire import NatsPermissions, nats_permissions

log = structlog.get_logger("stocksync.nats_auth")

# JetStream fsyncs every 2 minutes by default; once a second bounds what a machine crash can take to what the
# tills' spools still hold (docs/reliability.md). "always" costs ten times the throughput here.
JETSTREAM_CONFIG = 'jetstream {\n  sync_interval: "1s"\n}\n'

AUTH_SUBJECT = "$SYS.REQ.USER.AUTH"
AUTH_QUEUE = "stocksync-auth"
_HEADER = base64.urlsafe_b64encode(b'{"typ":"JWT","alg":"ed25519-nkey"}').rstrip(b"=").decode()
_SEED_LINE = re.compile(r"^\s*(S[UA][A-Z2-7]{56})\s*$", re.MULTILINE)


# --- keys and JWTs ----------------------------------------------------------------------------------------


def new_seed(kind: str) -> str:
    """A fresh NKey seed: ``"user"`` (``SU...``, the service user) or ``"account"`` (``SA...``, issuer)."""
    prefix = {"user": nkeys.PREFIX_BYTE_USER, "account": nkeys.PREFIX_BYTE_ACCOUNT}[kind]
    return nkeys.encode_seed(os.urandom(32), prefix).decode()


def public_key(seed: str) -> str:
    return nkeys.from_seed(bytearray(seed.strip().encode())).public_key.decode()


def encode_jwt(claims: dict[str, Any], issuer_seed: str) -> str:
    """A NATS JWT: jti is the base32 sha256 of the claims, signed ed25519 by the issuer's seed."""
    claims = {**claims, "jti": ""}
    digest = hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    signed = f"{_HEADER}.{body}"
    signature = nkeys.from_seed(bytearray(issuer_seed.encode())).sign(signed.encode())
    return f"{signed}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def decode_jwt(token: str) -> dict[str, Any]:
    """The claims of a JWT (the server's request; the signature is not checked: only the server and the
    service's own users may publish on the auth subject)."""
    body = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def user_jwt(
    *,
    user_nkey: str,
    name: str,
    account: str,
    permissions: NatsPermissions,
    ttl_s: float,
    issuer_seed: str,
) -> str:
    now = int(time.time())
    claims = {
        "iat": now,
        "exp": now + max(1, round(ttl_s)),
        "iss": public_key(issuer_seed),
        "sub": user_nkey,
        "name": name,
        "aud": account,
        "nats": {
            "pub": {"allow": list(permissions.publish)},
            "sub": {"allow": list(permissions.subscribe)},
            "subs": -1,
            "data": -1,
            "payload": -1,
            "type": "user",
            "version": 2,
        },
    }
    return encode_jwt(claims, issuer_seed)


def authorization_response(
    *, user_nkey: str, server_id: str, issuer_seed: str, jwt: str | None = None, error: str | None = None
) -> str:
    answer: dict[str, Any] = {"type": "authorization_response", "version": 2}
    answer.update({"jwt": jwt} if jwt else {"error": error or "not authorised"})
    claims = {
        "iat": int(time.time()),
        "iss": public_key(issuer_seed),
        "sub": user_nkey,
        "aud": server_id,
        "nats": answer,
    }
    return encode_jwt(claims, issuer_seed)


# --- the service's own connection ---------------------------------------------------------------------------


def service_seed(settings: Settings) -> str | None:
    """The service user's seed: inline, or read from a seed or ``.creds`` file."""
    if settings.nats_nkey_seed:
        return settings.nats_nkey_seed.strip()
    if settings.nats_creds:
        found = _SEED_LINE.search(Path(settings.nats_creds).read_text())
        if found is None:
            raise ValueError(f"no NKey seed in {settings.nats_creds}")
        return found.group(1)
    return None


def service_options(settings: Settings) -> dict[str, Any]:
    """nats-py ``connect`` options of the service's processes: their NKey, and TLS when configured."""
    options: dict[str, Any] = {}
    if (seed := service_seed(settings)) is not None:
        options["nkeys_seed_str"] = seed
    if settings.nats_tls_ca or settings.nats_tls_cert:
        context = ssl.create_default_context(cafile=settings.nats_tls_ca)
        if settings.nats_tls_cert:
            context.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key)
        options["tls"] = context
    return options


# --- the server configuration -------------------------------------------------------------------------------


def server_config(settings: Settings, *, jetstream: str = JETSTREAM_CONFIG) -> str:
    """The nats-server configuration that enforces the access rules, from the settings alone. Without an
    issuer seed or a service user, only ``jetstream``: an open server (development and tests)."""
    seed = service_seed(settings)
    if settings.nats_auth_issuer_seed is None or seed is None:
        return jetstream
    service = public_key(seed)
    account = settings.nats_account
    tls = ""
    if settings.nats_tls_cert:
        lines = [f"  cert_file: {json.dumps(settings.nats_tls_cert)}"]
        lines.append(f"  key_file: {json.dumps(settings.nats_tls_key or '')}")
        if settings.nats_tls_ca:
            lines.append(f"  ca_file: {json.dumps(settings.nats_tls_ca)}")
        tls = "tls {\n" + "\n".join(lines) + "\n}\n"
    return (
        jetstream
        + tls
        + f"# Every connection but the service user's is authorised by stocksync (auth role of `serve`)\n"
        f"accounts {{\n"
        f"  {account} {{\n"
        f"    jetstream: enabled\n"
        f"    users: [ {{ nkey: {service} }} ]\n"
        f"  }}\n"
        f"}}\n"
        f"authorization {{\n"
        f"  auth_callout {{\n"
        f"    issuer: {public_key(settings.nats_auth_issuer_seed)}\n"
        f"    account: {account}\n"
        f"    auth_users: [ {service} ]\n"
        f"  }}\n"
        f"}}\n"
    )


# --- the callout ---------------------------------------------------------------------------------------


class AuthCallout:
    """Answers the server's authorization requests; several may run (a queue group shares the requests)."""

    def __init__(self, nc: Client, engine: AsyncEngine, settings: Settings, *, verifier_ttl_s: float = 1.0):
        assert settings.nats_auth_issuer_seed is not None
        self.nc = nc
        self.engine = engine
        self.issuer_seed = settings.nats_auth_issuer_seed
        self.account = settings.nats_account
        self.ttl_s = settings.nats_auth_ttl_s
        # a short cache: a revoked key is refused at its next (re)connect within about a second
        self.verifier = KeyVerifier(engine, ttl_s=verifier_ttl_s)

    async def run(self, stop: asyncio.Event) -> None:
        sub = await self.nc.subscribe(AUTH_SUBJECT, queue=AUTH_QUEUE, cb=self._answer)
        log.info("nats_auth_callout_ready", account=self.account, ttl_s=self.ttl_s)
        try:
            await stop.wait()
        finally:
            await sub.unsubscribe()

    async def _answer(self, msg: Msg) -> None:
        try:
            request = decode_jwt(msg.data.decode())["nats"]
            user_nkey, server_id = request["user_nkey"], request["server_id"]["id"]
        except (ValueError, KeyError, IndexError, TypeError, UnicodeError):
            log.warning("nats_auth_request_unreadable")
            return  # the server times the request out and refuses the connection
        token = (request.get("connect_opts") or {}).get("auth_token") or ""
        try:
            jwt, error, outcome = await self._user_jwt(token, user_nkey), None, "authorised"
        except StocksyncError as refused:  # never the token itself in the log: only why
            log.info("nats_key_refused", reason=str(refused))
            jwt, error, outcome = None, str(refused), "refused"
        except Exception as failure:  # database down: refuse now, the client retries
            log.error("nats_auth_failed", exception=outline(failure))  # frames and types, as http.errors
            jwt, error, outcome = None, "the key could not be checked now", "failed"
        metrics.NATS_AUTH.labels(outcome).inc()
        answer = authorization_response(
            user_nkey=user_nkey, server_id=server_id, issuer_seed=self.issuer_seed, jwt=jwt, error=error
        )
        await msg.respond(answer.encode())

    async def _user_jwt(self, token: str, user_nkey: str) -> str:
        key = await self.verifier.verify(token)
        pickup = await pickup_location_ids(self.engine) if key.role == "ecommerce" else []
        permissions = nats_permissions(key.role, key.locations, key_id=key.key_id, pickup_locations=pickup)
        log.info("nats_key_authorised", key_id=key.key_id, role=key.role)
        return user_jwt(
            user_nkey=user_nkey,
            name=key.key_id,
            account=self.account,
            permissions=permissions,
            ttl_s=self.ttl_s,
            issuer_seed=self.issuer_seed,
        )
