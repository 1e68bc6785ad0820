"""`stocksync migrate` against a JetStream cluster still forming: it waits for the peers, as compose starts it
once every node answers /healthz, which can be before the nodes agree on their peers (seen on CI: "no suitable
peers for placement, peer offline")."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest

from stocksync.messaging.topology import migrate_topology
from stocksync.wire import IN_STREAM, OUT_STREAM
from tests.support_cluster import NatsCluster


@pytest.fixture
def cluster(tmp_path: Path):
    nodes = NatsCluster(tmp_path / "nats")
    yield nodes
    nodes.stop()


async def test_migrate_waits_for_a_cluster_whose_third_peer_is_not_up_yet(cluster: NatsCluster) -> None:
    """Two of three nodes: no placement for three replicas (and, until the two agree, no answer at all)."""
    first, second, third = cluster.nodes
    for node in (first, second):
        cluster._spawn(node)
    migrating = asyncio.create_task(migrate_topology(f"{first.url},{second.url}", 3, settle_s=120))
    await asyncio.sleep(3)
    assert not migrating.done()  # refused, or not answered, and trying again: not failed
    await asyncio.to_thread(cluster.start_node, third)
    await asyncio.wait_for(migrating, 120)

    nc = await nats.connect(cluster.url.split(","))
    try:
        for stream in (IN_STREAM, OUT_STREAM):
            info = await nc.jetstream().stream_info(stream)
            assert info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2
    finally:
        await nc.close()
