"""Channels and orders on NATS (spec section 7): channel availability on the out stream and in its bucket,
following the sales at the stores it sums, and orders placed, shipped and refused over NATS."""

from __future__ import annotations

import msgspec

from stocksync.adapters.channels import put_channel
from stocksync.adapters.database import create_engine
from stocksync.domain.channels import Channel
from stocksync.messages import ChannelAvailabilityMessage, OrderBody
from stocksync.wire import CHANNEL_BUCKET, DLQ_STREAM, OUT_STREAM, DeadLetter, order_inbound_subject
from tests.support_ledger import receipt, return_, sale, unique
from tests.support_nats import (  # noqa: F401  (stack: a fixture)
    Stack,
    _no_service_process_left_running,
    decode_availability,
    in_process,
    jetstream,
    prepare,
    publish_events,
    read_stream,
    stack,
    stop_service_processes,
    wait_until,
)


async def define(database_url: str, channel: Channel) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        await put_channel(engine, channel)
    finally:
        await engine.dispose()


def channel_body(data: bytes) -> ChannelAvailabilityMessage:
    return msgspec.json.decode(data, type=ChannelAvailabilityMessage)


async def entry(js, channel_id: str, sku: str) -> ChannelAvailabilityMessage | None:
    kv = await js.key_value(CHANNEL_BUCKET)
    try:
        return channel_body((await kv.get(f"{channel_id}.{sku}")).value)
    except Exception:
        return None


async def test_a_sale_at_a_store_moves_every_channel_it_is_in_on_the_stream_and_in_the_bucket(stack: Stack):
    wh, ams, rot, sku = unique("wh"), unique("ams"), unique("rot"), unique("SKU")
    await prepare(stack.database_url, stack.nats_url, [wh, ams, rot])
    await define(stack.database_url, Channel(channel_id="web", name="Web", locations=(wh, ams), buffer=1))
    await define(stack.database_url, Channel(channel_id="app", name="App", locations=(ams, rot)))

    async with jetstream(stack.nats_url) as (_, js), in_process(stack.database_url, stack.nats_url):
        await publish_events(js, [receipt(wh, {sku: 5}), receipt(ams, {sku: 3}), receipt(rot, {sku: 10})])

        async def web_is(n: int):
            found = await entry(js, "web", sku)
            return found if found is not None and found.available == n else None

        await wait_until(lambda: web_is(7), what="web: 5 + 3 - 1")
        assert (await entry(js, "app", sku)).available == 13
        before = await entry(js, "web", sku)
        await publish_events(js, [sale(ams, {sku: 2}, at=1)])
        after = await wait_until(lambda: web_is(5), what="web after the sale at ams")

        assert after.version > before.version
        app = await wait_until(
            lambda: _when(entry(js, "app", sku), lambda e: e.available == 11), what="app after the sale"
        )
        assert app.available == 11
        # The same on the out stream, in increasing version, and the position's own message after it.
        web_msgs = await read_stream(js, OUT_STREAM, f"stocksync.out.channel.web.{sku}")
        bodies = [channel_body(m.data) for m in web_msgs]
        assert [b.available for b in bodies][-1] == 5
        assert [b.version for b in bodies] == sorted({b.version for b in bodies})
        position_msgs = await read_stream(js, OUT_STREAM, f"stocksync.out.availability.{ams}.{sku}")
        sold = next(m for m in position_msgs if decode_availability(m.data).on_hand == 1)
        reflected = next(m for m in web_msgs if channel_body(m.data).available == 5)
        assert reflected.metadata.sequence.stream < sold.metadata.sequence.stream


async def _when(found, check):
    value = await found
    return value if value is not None and check(value) else None


async def test_a_channel_defined_over_a_location_the_relay_knew_in_no_channel_follows_its_sales(stack: Stack):
    """The relay reads which locations channels sum once, and again after a refresh: a store it relayed while
    no channel summed it gets its channel entry from the refresh, and every change after moves the entry."""
    ams, sku, web = unique("ams"), unique("SKU"), unique("web")
    await prepare(stack.database_url, stack.nats_url, [ams])
    async with jetstream(stack.nats_url) as (_, js), in_process(stack.database_url, stack.nats_url):
        await publish_events(js, [receipt(ams, {sku: 3})])
        subject = f"stocksync.out.availability.{ams}.{sku}"
        await wait_until(lambda: read_stream(js, OUT_STREAM, subject), what="the receipt relayed")
        assert await entry(js, web, sku) is None
        await define(stack.database_url, Channel(channel_id=web, name="Web", locations=(ams,)))
        await wait_until(
            lambda: _when(entry(js, web, sku), lambda e: e.available == 3), what="3 by the refresh"
        )
        await publish_events(js, [sale(ams, {sku: 1}, at=1)])
        await wait_until(
            lambda: _when(entry(js, web, sku), lambda e: e.available == 2), what="2 after the sale"
        )


async def test_redefining_a_channel_publishes_it_again_without_the_location_it_lost(stack: Stack):
    wh, ams, sku = unique("wh"), unique("ams"), unique("SKU")
    await prepare(stack.database_url, stack.nats_url, [wh, ams])
    await define(stack.database_url, Channel(channel_id="web", name="Web", locations=(wh, ams)))

    async with jetstream(stack.nats_url) as (_, js), in_process(stack.database_url, stack.nats_url):
        await publish_events(js, [receipt(wh, {sku: 5}), receipt(ams, {sku: 3})])
        await wait_until(lambda: _when(entry(js, "web", sku), lambda e: e.available == 8), what="8")
        await define(stack.database_url, Channel(channel_id="web", name="Web", locations=(wh,), buffer=2))
        await wait_until(lambda: _when(entry(js, "web", sku), lambda e: e.available == 3), what="3: wh alone")


async def test_orders_over_nats_are_allocated_shipped_and_refused_with_their_reasons(stack: Stack):
    wh, ams, sku = unique("wh"), unique("ams"), unique("SKU")
    await prepare(stack.database_url, stack.nats_url, [wh, ams])
    await define(stack.database_url, Channel(channel_id="web", name="Web", locations=(wh, ams)))
    order = {"order_id": "o-1", "channel_id": "web", "lines": [{"sku": sku, "qty": 4}]}

    async with jetstream(stack.nats_url) as (_, js), in_process(stack.database_url, stack.nats_url):
        await publish_events(js, [receipt(wh, {sku: 2}), receipt(ams, {sku: 5})])
        await wait_until(lambda: _when(entry(js, "web", sku), lambda e: e.available == 7), what="7")

        async def last_order(order_id: str, status: str):
            msgs = await read_stream(js, OUT_STREAM, f"stocksync.out.order.{order_id}")
            bodies = [msgspec.json.decode(m.data, type=OrderBody) for m in msgs]
            return next((b for b in reversed(bodies) if b.status == status), None)

        await js.publish(order_inbound_subject("web", "place"), msgspec.json.encode(order))
        placed = await wait_until(lambda: last_order("o-1", "allocated"), what="o-1 allocated")
        assert [(a.location_id, a.lines[0].qty) for a in placed.allocations] == [(ams, 4)]
        await wait_until(lambda: _when(entry(js, "web", sku), lambda e: e.available == 3), what="3 left")

        await js.publish(order_inbound_subject("web", "ship"), b'{"order_id": "o-1"}')
        await wait_until(lambda: last_order("o-1", "shipped"), what="o-1 shipped")
        # The customer brings one back to the warehouse's counter: restocked there, and the channel follows.
        brought = return_(wh, {sku: 1}, at=2, order_id="o-1")
        await publish_events(js, [brought])
        await wait_until(lambda: _when(entry(js, "web", sku), lambda e: e.available == 4), what="4 after")
        short = {**order, "order_id": "o-2", "lines": [{"sku": sku, "qty": 9}]}
        await js.publish(order_inbound_subject("web", "place"), msgspec.json.encode(short))
        refused = await wait_until(lambda: last_order("o-2", "rejected"), what="o-2 refused")
        assert (refused.error, [(s.requested, s.available) for s in refused.shortages]) == (
            "insufficient_stock",
            [(9, 4)],
        )
        await js.publish(
            order_inbound_subject("nope", "place"),
            msgspec.json.encode({**order, "order_id": "o-3", "channel_id": "nope"}),
        )
        unknown = await wait_until(lambda: last_order("o-3", "rejected"), what="o-3 refused")
        assert unknown.error == "unknown_channel"
        await js.publish(order_inbound_subject("web", "ship"), b'{"order_id": "o-1"}')  # again: the same
        await js.publish(order_inbound_subject("web", "cancel"), b'{"order_id": "o-1"}')
        late = await wait_until(lambda: last_order("o-1", "shipped"), what="o-1 still shipped")
        assert late.status == "shipped"
        await js.publish(order_inbound_subject("web", "place"), b'{"order_id": "o-4"}')  # no lines
        await js.publish(
            order_inbound_subject("app", "place"), msgspec.json.encode({**order, "order_id": "o-5"})
        )

        async def letters():
            msgs = await read_stream(js, DLQ_STREAM, "stocksync.dlq.>")
            found = [msgspec.json.decode(m.data, type=DeadLetter) for m in msgs]
            return found if len(found) == 2 else None

        dead = await wait_until(letters, what="two dead letters")
        assert sorted(letter.error for letter in dead) == ["invalid_order", "subject_mismatch"]
        refusal = await wait_until(
            lambda: _when(last_order("o-1", "shipped"), lambda b: b.error == "order_not_allocated"),
            what="the cancel of a shipped order refused",
        )
        assert refusal.status == "shipped"
