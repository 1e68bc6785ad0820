"""The NATS connection every stocksync process and client uses: it waits for a NATS that is down or not
started yet, and reconnects for ever after.

Logged through the standard library's ``logging`` (logger ``stocksync_client``), so a client brings no
logging library with it; the server renders these lines like its own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import NoServersError

log = logging.getLogger("stocksync_client")


async def connect(url: str, *, name: str = "stocksync", **options: Any) -> Client:
    """A connection that keeps reconnecting for ever, and keeps trying the first time too: a NATS that is
    down or not started yet is a passing fault, not a reason for a worker to exit. A first connection the
    server refuses (a revoked key, wrong credentials) raises at once: no retry would change the answer.

    ``url``: one server or several, comma-separated; ``options``: nats-py's ``connect`` options (a key's
    are `stocksync_contract.wire.key_options`)."""
    backoff = 0.2
    error_cb = options.pop("error_cb", None)
    connecting = True

    async def on_error(error: Exception) -> None:
        if connecting and "authorization violation" in str(error).lower():
            raise error  # out of nats-py's first-connect loop, which would try for ever
        if error_cb is not None:
            await error_cb(error)
        else:
            log.warning("nats_error url=%s error=%s: %s", url, type(error).__name__, error)

    while True:
        try:
            nc = await nats.connect(
                servers=url.split(","),
                name=name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                connect_timeout=2,
                allow_reconnect=True,
                error_cb=on_error,
                **options,
            )
            connecting = False
            return nc
        except (NoServersError, OSError, TimeoutError) as error:
            log.warning(
                "nats_unreachable url=%s error=%s: %s retry_in_s=%s",
                url,
                type(error).__name__,
                error,
                backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
