"""Settings: one typed object read from ``STOCKSYNC_*`` environment variables."""

from __future__ import annotations

import os
from typing import Literal

import msgspec

SERVICE_ROLES = ("api", "worker", "relay", "sweeper", "auth")


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str | None = None
    nats_url: str | None = None
    nats_replicas: int = 1
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    log_format: Literal["console", "json"] = "console"
    log_level: str = "info"
    home: str = ".stocksync"
    sweep_interval_s: float = 1.0
    batch_max: int = 500
    outbox_retention_s: int = 86400
    # NATS access (docs/reliability.md, "Access to NATS"). The service user's NKey seed (``SU...``), inline or
    # in a file (a seed file or a ``.creds`` file); without either the service connects without credentials.
    nats_nkey_seed: str | None = None
    nats_creds: str | None = None
    # The account seed (``SA...``) that signs the auth callout's answers; its public key is in the server config.
    nats_auth_issuer_seed: str | None = None
    nats_auth_ttl_s: float = 60.0  # how long a key's NATS connection lives before it is authorised again
    nats_account: str = "STOCKSYNC"
    nats_tls_ca: str | None = None
    nats_tls_cert: str | None = None
    nats_tls_key: str | None = None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        raw = {
            field: env[f"STOCKSYNC_{field.upper()}"]
            for field in cls.__struct_fields__
            if f"STOCKSYNC_{field.upper()}" in env and env[f"STOCKSYNC_{field.upper()}"] != ""
        }
        return msgspec.convert(raw, cls, strict=False)

    @property
    def embedded(self) -> bool:
        return self.database_url is None or self.nats_url is None
