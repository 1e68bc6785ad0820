"""The relay's publish pipeline (adapters.pipeline) against a real nats-server: acknowledgements come back as
the stream's, and a connection that drops while some are outstanding fails them at once, as a lost connection,
instead of leaving the relay's pass waiting its whole acknowledgement timeout (the updates it holds kept back
from every channel for that long after NATS comes back)."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js.api import PubAck, StreamConfig

from stocksync.adapters.pipeline import Pipeline

TIMEOUT_S = 60.0  # far longer than the test may take: an error before it can only be the lost connection


async def test_acknowledgements_are_the_streams_and_a_dropped_connection_fails_the_outstanding_at_once(
    nats_server_factory,
) -> None:
    server = nats_server_factory()
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        await nc.jetstream().add_stream(StreamConfig(name="PIPELINE", subjects=["stored.>"]))
        await nc.subscribe("unanswered.>")  # a listener that never answers: its publishes wait for ever
        pipeline = Pipeline(nc)
        stored = [await pipeline.publish(f"stored.{n}", b"x", {"Nats-Msg-Id": f"m{n}"}) for n in range(3)]
        again = await pipeline.publish("stored.0", b"x", {"Nats-Msg-Id": "m0"})
        acks = await pipeline.acknowledged([*stored, again], TIMEOUT_S)
        waiting = [await pipeline.publish(f"unanswered.{n}", b"x", {}) for n in range(2)]
        answers = asyncio.create_task(pipeline.acknowledged(waiting, TIMEOUT_S))
        await asyncio.sleep(0.5)
        assert not answers.done()
        server.stop()
        lost = await asyncio.wait_for(answers, TIMEOUT_S / 2)
    finally:
        await nc.close()
    assert [(a.stream, a.seq, a.duplicate) for a in acks if isinstance(a, PubAck)] == [
        ("PIPELINE", 1, None),
        ("PIPELINE", 2, None),
        ("PIPELINE", 3, None),
        ("PIPELINE", 1, True),  # a repeat: the stored message's sequence
    ]
    assert [type(error) for error in lost] == [ConnectionError, ConnectionError]
    with pytest.raises(ConnectionError, match="2 acknowledgements outstanding"):
        raise lost[0]
