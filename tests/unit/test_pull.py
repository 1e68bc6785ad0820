"""The worker's pull requests (`stocksync.messaging.pull`) against a fake connection: what a request asks for,
that what it delivers is handed over whole when it ends, which status ends a request, which is ignored, which
fails, and that a request lost without a status is asked again."""

from __future__ import annotations

import asyncio
import json

import pytest
from nats.aio.msg import Msg
from nats.js.errors import APIError

from stocksync.messaging.pull import Pull


class FakeClient:
    """Records the pull requests; `deliver` plays the server's side on a request's reply subject."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []
        self.acks: list[tuple[str, bytes]] = []
        self.cb = None

    def new_inbox(self) -> str:
        return "_INBOX.test"

    async def subscribe(self, subject: str, cb):
        assert subject == "_INBOX.test.*"
        self.cb = cb
        return self

    async def unsubscribe(self) -> None:
        self.cb = None

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "") -> None:
        if subject.startswith("$JS.API."):
            self.requests.append((reply, json.loads(payload)))
        else:
            self.acks.append((subject, payload))

    async def deliver(self, reply: str, data: bytes = b"{}", status: str | None = None) -> None:
        """A status comes on the request's reply subject, a message on its stream subject."""
        if status:
            await self.cb(Msg(self, subject=reply, data=b"", headers={"Status": status, "Description": "t"}))
        else:
            ack, headers = f"$JS.ACK.{len(data)}", {"Nats-Msg-Id": "x"}
            await self.cb(Msg(self, "stocksync.in.x", reply=ack, data=data, headers=headers))


@pytest.fixture
async def pull():
    nc = FakeClient()
    async with Pull(nc, "S", "C", 10) as pull:
        yield nc, pull


async def test_a_request_asks_for_what_the_stream_holds_and_hands_it_over_when_it_ends(pull) -> None:
    """``no_wait`` with ``expires``: the server waits for a first message, sends what the stream holds then,
    and ends the request (404): what came in between is handed over in one batch, not one by one."""
    nc, pull = pull
    fetching = asyncio.create_task(pull.fetch(1.0))
    await asyncio.sleep(0)
    [(reply, body)] = nc.requests
    assert body == {"batch": 10, "expires": 1_000_000_000, "no_wait": True}
    for n in range(3):
        await nc.deliver(reply, b"%d" % n)
        await asyncio.sleep(0)
        assert not fetching.done()
    await nc.deliver(reply, status="404")
    assert [m.data for m in await fetching] == [b"0", b"1", b"2"]
    assert (
        len(nc.requests) == 1
    )  # none open while the batch is applied: the stream keeps what comes meanwhile


async def test_messages_in_hand_ask_only_for_what_the_stream_holds_now() -> None:
    nc = FakeClient()
    async with Pull(nc, "S", "C", 2) as pull:
        fetching = asyncio.create_task(pull.fetch(1.0))
        await asyncio.sleep(0)
        for n in range(3):  # one more than asked for: a message of an older request, say
            await nc.deliver(nc.requests[0][0], b"%d" % n)
        assert len(await fetching) == 2
        fetching = asyncio.create_task(pull.fetch(1.0))
        await asyncio.sleep(0)
        assert nc.requests[-1][1] == {"batch": 1, "no_wait": True}  # no wait for a first: one is in hand
        await nc.deliver(nc.requests[-1][0], status="404")
        assert [m.data for m in await fetching] == [b"2"]


async def test_a_status_that_ends_a_pull_lets_the_next_fetch_ask_again(pull) -> None:
    nc, pull = pull
    for status in ("404", "408", "409"):
        fetching = asyncio.create_task(pull.fetch(5.0))
        await asyncio.sleep(0)
        await nc.deliver(nc.requests[-1][0], status=status)
        assert await fetching == []
    assert len(nc.requests) == 3  # one each


async def test_a_late_status_of_an_older_request_and_a_heartbeat_end_nothing(pull) -> None:
    nc, pull = pull
    await pull.fetch(0.01)  # nothing came: the request is left to expire
    await asyncio.sleep(0.02)
    fetching = asyncio.create_task(pull.fetch(5.0))
    await asyncio.sleep(0)
    (old, _), (current, _) = nc.requests[0], nc.requests[-1]
    asked = len(nc.requests)
    await nc.deliver(old, status="408")
    await nc.deliver(current, status="100")
    await nc.deliver(old, b"late")  # a message of the older request is kept...
    await asyncio.sleep(0)
    assert not fetching.done()  # ...and neither it nor those statuses ended the current request
    await nc.deliver(current, b"1")
    await nc.deliver(current, status="404")
    assert [m.data for m in await fetching] == [b"late", b"1"]
    assert len(nc.requests) == asked


async def test_a_request_that_delivered_its_batch_is_followed_by_the_next_at_once(pull) -> None:
    nc, pull = pull
    fetching = asyncio.create_task(pull.fetch(1.0))
    await asyncio.sleep(0)
    for n in range(10):
        await nc.deliver(nc.requests[0][0], b"%d" % n)
    assert len(await fetching) == 10
    assert [body["batch"] for _, body in nc.requests] == [10]


async def test_any_other_status_fails_the_fetch(pull) -> None:
    nc, pull = pull
    fetching = asyncio.create_task(pull.fetch(5.0))
    await asyncio.sleep(0)
    await nc.deliver(nc.requests[0][0], status="400")
    with pytest.raises(APIError):
        await fetching


async def test_messages_not_handed_over_are_given_back_when_the_pull_ends() -> None:
    nc = FakeClient()
    async with Pull(nc, "S", "C", 2) as pull:
        fetching = asyncio.create_task(pull.fetch(1.0))
        await asyncio.sleep(0)
        for n in range(3):
            await nc.deliver(nc.requests[0][0], b"%d" % n)
        assert len(await fetching) == 2
    assert nc.acks == [("$JS.ACK.1", b"-NAK")]


async def test_a_fetch_can_be_cancelled_while_it_waits(pull) -> None:
    _, pull = pull
    fetching = asyncio.create_task(pull.fetch(5.0))
    await asyncio.sleep(0)
    fetching.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fetching
