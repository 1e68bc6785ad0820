"""Pull requests to a JetStream consumer, without nats-py's ``fetch``: it costs ≈ 22 µs of CPU a message (a
``wait_for`` per message), a subscription callback appending to a list ≈ 4 (benchmarks/profiling.md).

One request is open at a time, asked by `Pull.fetch`, which waits for it to end: ``{"batch": n, "expires":
ns, "no_wait": true}``, for which the server waits for a first message (up to ``expires``), then sends what the
stream holds and ends the request (404). So a message that arrives alone is handed over at once, and what
arrives while a batch is applied stays in the stream until the next fetch takes it in one delivery: a request
left open during the apply would have delivered each message as it came, each its own wakeup and socket read
here and its own write in nats-server (benchmarks/profiling.md). With messages already in hand a fetch asks
without ``expires``, for what the stream holds now. No idle heartbeat. Each request has its own reply subject, so a late status of
an older request (its 408) cannot end the current one; a message (it comes on its stream subject) of an older
one is kept as any other.

A request ends when it has delivered its batch, on a status that ends a pull (404 no messages, 408 expired,
409 leadership change, max waiting exceeded, consumer deleted), or at its expiry: a reconnect, a NATS restart
or a lost consumer leader drops it without a status, and the next `Pull.fetch` asks again. Any other status
(503: no consumer; 400) raises `APIError`, and the worker binds again after a pause.
"""

from __future__ import annotations

import asyncio

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import APIError

from stocksync.aio import quietly

_ENDS_A_PULL = frozenset({"404", "408", "409"})
_HEARTBEAT = "100"


class Pull:
    """The messages of ``consumer`` on ``stream`` for this process, up to ``batch`` a `fetch`."""

    def __init__(self, nc: Client, stream: str, consumer: str, batch: int) -> None:
        self.nc = nc
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.batch = batch
        self.inbox = nc.new_inbox()
        self.msgs: list[Msg] = []  # delivered, not yet handed over
        self.first_at = 0.0  # loop time the oldest of ``msgs`` arrived (about: one time per batch)
        self.waited = 0.0  # how long the batch `fetch` handed over last had waited here
        self._sub: Subscription | None = None
        self._requests = 0
        self._reply = ""  # the open request's reply subject
        self._owed = 0  # messages the open request may still deliver
        self._until = 0.0  # the open request's expiry, in loop time
        self._waiter: asyncio.Future[None] | None = None
        self._failure: Msg | None = None

    async def __aenter__(self) -> Pull:
        self._sub = await self.nc.subscribe(f"{self.inbox}.*", cb=self._received)
        return self

    async def __aexit__(self, *_: object) -> None:
        """Unsubscribe; what was delivered but not handed over goes back to the consumer at once rather than
        after ``ack_wait``."""
        if self._sub is not None:
            await quietly(self._sub.unsubscribe())
        for msg in self.msgs:
            await quietly(msg.nak())
        self.msgs = []

    async def fetch(self, timeout: float) -> list[Msg]:
        """What the stream holds for us now, up to ``batch``; if nothing, what arrives first within
        ``timeout`` (or nothing)."""
        loop = asyncio.get_running_loop()
        if len(self.msgs) < self.batch:
            await self._ask(timeout, wait=not self.msgs)
            await self._wait(loop, self._until - loop.time())
        if self._failure is not None:
            failure, self._failure = self._failure, None
            APIError.from_msg(failure)
        taken, self.msgs = self.msgs[: self.batch], self.msgs[self.batch :]
        now = loop.time()
        self.waited, self.first_at = now - self.first_at, now  # the rest arrived before now: a lower bound
        return taken

    async def _ask(self, expires_s: float, wait: bool) -> None:
        """A new request, unless one is open: for what the stream holds now, and if it holds nothing and
        ``wait``, for the first message to come within ``expires_s`` (``no_wait`` with ``expires``)."""
        now = asyncio.get_running_loop().time()
        if self._open(now):
            return
        wanted = self.batch - len(self.msgs)
        self._requests += 1
        self._reply = f"{self.inbox}.{self._requests}"
        self._owed, self._until = wanted, now + expires_s
        if wait:
            body = b'{"batch":%d,"expires":%d,"no_wait":true}' % (wanted, int(expires_s * 1e9))
        else:
            body = b'{"batch":%d,"no_wait":true}' % wanted
        await self.nc.publish(self.subject, body, reply=self._reply)

    def _open(self, now: float) -> bool:
        return self._owed > 0 and now < self._until

    async def _wait(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        """Until the open request ends (its batch delivered, a status, a failure) or ``seconds`` pass (a bare
        future: a cancellation is never lost, as it may be in Python 3.11's ``wait_for``)."""
        if not self._open(loop.time()):
            return
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(max(seconds, 0.0), _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    async def _received(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:  # its subject is the stream's: counted against the open request, whichever it was
            if not self.msgs:
                self.first_at = asyncio.get_running_loop().time()
            self.msgs.append(msg)
            self._owed -= 1
        elif status == _HEARTBEAT or msg.subject != self._reply:
            return  # a heartbeat is never asked for; an older request's end does not end this one
        elif status in _ENDS_A_PULL:
            self._owed = 0
        else:
            self._failure = msg
        if self._waiter is not None and (self._owed <= 0 or self._failure is not None):
            _wake(self._waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
