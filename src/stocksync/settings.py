"""Settings: one typed object read from ``STOCKSYNC_*`` environment variables.

A variable that is not a setting (a typo) or a value that is not valid raises `SettingsError`, one line naming
the variable, before anything starts. ``STOCKSYNC_TEST_*`` is the test suite's own namespace, not settings.
"""

from __future__ import annotations

import difflib
import os
import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

SERVICE_ROLES = ("api", "worker", "relay", "sweeper", "auth", "webhooks")
TEST_PREFIX = "STOCKSYNC_TEST_"
_NATS_URLS = r"^(nats|tls|ws|wss)://[^,\s]+(,(nats|tls|ws|wss)://[^,\s]+)*$"


class SettingsError(ValueError):
    """A ``STOCKSYNC_`` variable that is not a setting, or whose value is not valid."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: Annotated[str, Meta(pattern=r"^postgres(ql)?(\+asyncpg)?://")] | None = None
    nats_url: Annotated[str, Meta(pattern=_NATS_URLS)] | None = None
    nats_replicas: Annotated[int, Meta(ge=1, le=5)] = 1
    http_host: str = "127.0.0.1"
    http_port: Annotated[int, Meta(ge=0, le=65535)] = 8000
    # This process's own /metrics listener (docs/operations.md, "Metrics"); unset: the API port's /metrics in
    # a process with the API role, else 9464.
    metrics_port: Annotated[int, Meta(ge=0, le=65535)] | None = None
    log_format: Literal["console", "json"] = "console"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    home: str = ".stocksync"
    sweep_interval_s: Annotated[float, Meta(gt=0)] = 1.0
    batch_max: Annotated[int, Meta(ge=1, le=10_000)] = 500
    outbox_retention_s: Annotated[int, Meta(ge=0)] = 86400
    # A pass's acknowledgements come back in milliseconds; none within this (JetStream electing a stream leader
    # after a restart answers nothing) and the pass is sent again whole, repeats dropped by Nats-Msg-Id.
    relay_ack_timeout_s: Annotated[float, Meta(gt=0, le=60)] = 3.0
    tracing: Literal["off", "otlp", "console"] = "off"
    webhook_give_up_s: Annotated[float, Meta(gt=0)] = 86400.0
    webhook_timeout_s: Annotated[float, Meta(gt=0, le=300)] = 5.0
    # NATS access (docs/reliability.md, "Access to NATS"). The service user's NKey seed (``SU...``), inline or
    # in a file (a seed file or a ``.creds`` file); without either the service connects without credentials.
    nats_nkey_seed: str | None = None
    nats_creds: str | None = None
    # The account seed (``SA...``) that signs the auth callout's answers; its public key is in the server config.
    nats_auth_issuer_seed: str | None = None
    nats_auth_ttl_s: Annotated[float, Meta(gt=0)] = 60.0  # a key's NATS connection lives this long per grant
    nats_account: str = "STOCKSYNC"
    nats_tls_ca: str | None = None
    nats_tls_cert: str | None = None
    nats_tls_key: str | None = None
    # The live feed (`GET /v1/stream`, docs/staff.md): a comment line at least this often (a client stuck
    # on a send for twice as long is dropped), and how many updates one client may have waiting.
    stream_heartbeat_s: Annotated[float, Meta(gt=0, le=15)] = 15.0
    stream_queue_max: Annotated[int, Meta(ge=1, le=100_000)] = 1000

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        names = {f"STOCKSYNC_{field.upper()}": field for field in cls.__struct_fields__}
        for name in sorted(env):
            if name.startswith("STOCKSYNC_") and name not in names and not name.startswith(TEST_PREFIX):
                close = difflib.get_close_matches(name.lower()[10:], cls.__struct_fields__, n=1, cutoff=0.75)
                hint = f" (did you mean STOCKSYNC_{close[0].upper()}?)" if close else ""
                raise SettingsError(f"{name} is not a setting{hint}; `stocksync --help` lists them")
        raw = {field: env[name] for name, field in names.items() if env.get(name, "") != ""}
        try:
            return msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as error:
            raise SettingsError(_why(error, raw)) from None

    @property
    def embedded(self) -> bool:
        return self.database_url is None or self.nats_url is None


def _why(error: msgspec.ValidationError, raw: dict[str, str]) -> str:
    """``STOCKSYNC_X='value' is not valid: <msgspec's reason>``, from its ``... - at `$.x``` message."""
    reason, _, where = str(error).partition(" - at ")
    found = re.fullmatch(r"`\$\.(\w+)`", where)
    if found is None:
        return f"the settings are not valid: {error}"
    field = found.group(1)
    hint = {
        "database_url": " (a postgresql:// URL)",
        "nats_url": " (nats:// URLs, comma-separated)",
    }.get(field, "")
    return f"STOCKSYNC_{field.upper()}={raw[field]!r} is not valid: {reason}{hint}"


# What `stocksync --help` says of each setting.
HELP: dict[str, str] = {
    "database_url": "PostgreSQL, postgresql://user@host/db[?sslmode=…]; unset: an embedded one",
    "nats_url": "nats-server(s), nats://host:4222[,nats://…]; unset: an embedded one",
    "nats_replicas": "stream replicas, 1 to 5 (3 in compose)",
    "http_host": "the API's listening address",
    "http_port": "the API's port",
    "metrics_port": "this process's own /metrics port (0: any free one, logged); unset: the API's in a process"
    " with the api role, else 9464; set one per process when API processes share a port",
    "log_format": "console or json",
    "log_level": "debug, info, warning or error",
    "home": "where embedded servers keep their data and demo keys",
    "sweep_interval_s": "how often the sweeper expires due reservations",
    "batch_max": "events per worker batch, 1 to 10,000",
    "outbox_retention_s": "how long relayed outbox rows are kept",
    "relay_ack_timeout_s": "how long the relay waits for a pass's acknowledgements before sending it again",
    "tracing": "off, otlp (to OTEL_EXPORTER_OTLP_ENDPOINT) or console: OpenTelemetry spans of each event",
    "webhook_give_up_s": "how long a webhook delivery is retried before it is logged gave_up and passed",
    "webhook_timeout_s": "how long a webhook's receiver has to answer one delivery",
    "nats_nkey_seed": "the service's NATS NKey seed (SU…), inline or a file",
    "nats_creds": "the service's NATS .creds file (instead of a seed)",
    "nats_auth_issuer_seed": "the account seed (SA…) that signs the auth callout's answers",
    "nats_auth_ttl_s": "how long a key's NATS connection lives before it is authorised again",
    "nats_account": "the NATS account of keys and the service",
    "nats_tls_ca": "CA file for TLS to NATS",
    "nats_tls_cert": "client certificate for TLS to NATS",
    "nats_tls_key": "client key for TLS to NATS",
    "stream_heartbeat_s": "seconds between the live feed's heartbeat comments, at most 15",
    "stream_queue_max": "positions and reservation changes one live-feed client may have waiting",
}
