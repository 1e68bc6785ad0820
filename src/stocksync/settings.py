"""Settings: one typed object read from ``STOCKSYNC_*`` environment variables."""

from __future__ import annotations

import os
from typing import Literal

import msgspec

SERVICE_ROLES = ("api", "worker", "relay", "sweeper")


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
