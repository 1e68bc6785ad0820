"""Small asyncio helpers shared by the long-running parts (worker, relay, sweeper): the clients' own, one
definition in the client distribution (`stocksync_client.aio`)."""

from __future__ import annotations

from stocksync_client.aio import cancel_and_wait, pause, quietly

__all__ = ["cancel_and_wait", "pause", "quietly"]
