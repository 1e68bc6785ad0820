"""Small asyncio helpers shared by the long-running parts (worker, relay, sweeper, API): the clients' own, one
definition in the client distribution (`stocksync_client.aio`), and `Gathering`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from stocksync_client.aio import cancel_and_wait, pause, quietly

__all__ = ["Gathering", "cancel_and_wait", "pause", "quietly", "settle"]

Asked = TypeVar("Asked")
Answer = TypeVar("Answer")


class Gathering(Generic[Asked, Answer]):
    """Requests that arrive while a group of them is being served gather and are served together next (a
    group commit, a shared read): under load one round trip serves many, alone a request goes at once.
    ``serve`` answers every future of its group; an error it raises is the answer of each one it left
    unanswered. A group holds requests of at most ``limit`` in ``size`` in all, or one larger request alone.
    Cancelled (the process stopping), no request waits for ever."""

    def __init__(
        self,
        serve: Callable[[list[tuple[Asked, asyncio.Future[Answer]]]], Awaitable[None]],
        size: Callable[[Asked], int],
        limit: int,
    ) -> None:
        self._serve, self._size, self.limit = serve, size, limit
        self._waiting: list[tuple[Asked, asyncio.Future[Answer]]] = []
        self._server: asyncio.Task | None = None

    async def __call__(self, asked: Asked) -> Answer:
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting.append((asked, future))
        if self._server is None or self._server.done():
            self._server = asyncio.create_task(self._serve_waiting())
        return await future

    async def _serve_waiting(self) -> None:
        while self._waiting:
            group = self._take_group()
            try:
                await self._serve(group)
            except asyncio.CancelledError:
                for _, future in [*group, *self._waiting]:
                    future.cancel()
                raise
            except Exception as error:
                for _, future in group:
                    settle(future, error)

    def _take_group(self) -> list[tuple[Asked, asyncio.Future[Answer]]]:
        size, taken = 0, 0
        while taken < len(self._waiting):
            more = self._size(self._waiting[taken][0])
            if taken and size + more > self.limit:
                break
            size, taken = size + more, taken + 1
        group, self._waiting = self._waiting[:taken], self._waiting[taken:]
        return group


def settle(future: asyncio.Future, outcome: object) -> None:
    """A gathered request's answer, or the error it met; one whose caller went away is left alone."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
