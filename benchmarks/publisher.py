"""The load generator: a process of its own that publishes the workload over NATS and times what comes back.

``python -m benchmarks.publisher --spec JSON --nats URL --out FILE [--rate N] [--latency] [--stock FILE]``

- ``--rate 0`` publishes as fast as it can (pipelined: up to ``--window`` publishes awaiting their JetStream ack);
  ``--rate N`` offers N events/s on a fixed schedule (a late tick sends what is due, so the offered rate holds
  even when one tick slips; the rate actually reached is reported).
- ``--latency`` subscribes to ``stocksync.out.outcome.>`` before publishing and matches each outcome to its event
  by ``event_id``: latency = outcome received - publish issued, both on this process's monotonic clock. The
  relay publishes an event's outcome in the same pass as, and after, the availability update of the same
  transaction (outbox order), so this is publish-to-visible. It also subscribes to the availability subject of
  each position that only one event of the run touches, and times that event to its availability message as
  well (the message on that subject is then its own: the ``fresh`` probe, every event a receipt of a sku of
  its own, is timed that way throughout). Not to ``stocksync.out.availability.>``: a delivery of every other
  position's messages would cost this process and nats-server CPU on the cores the pipeline runs on.
The events are generated beforehand (``--messages``, from `save_messages`), so the publisher's time and CPU are
spent publishing; the result is one JSON object written to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import time
from pathlib import Path

import msgspec
import nats

from benchmarks.workload import Outbound, WorkloadSpec, generate
from stocksync.wire import availability_subject


def save_messages(messages: list[Outbound], path: Path) -> None:
    path.write_bytes(
        msgspec.msgpack.encode([(m.subject, m.event_id, m.body, m.msg_id, m.duplicate) for m in messages])
    )


def load_messages(path: Path) -> list[Outbound]:
    return [Outbound(*row) for row in msgspec.msgpack.decode(path.read_bytes())]


class _OutcomeId(msgspec.Struct):
    event_id: str


class _Line(msgspec.Struct):
    sku: str


class _Event(msgspec.Struct):
    event_id: str
    location_id: str
    lines: list[_Line] = []


def own_positions(messages: list[Outbound]) -> dict[str, str]:
    """Availability subject -> the event that is the only one of the run at that position (an event of one
    line; collects and cancels name no position and are left out)."""
    decode = msgspec.json.Decoder(_Event).decode
    owners: dict[str, str | None] = {}
    for message in messages:
        if message.duplicate:
            continue
        event = decode(message.body)
        subjects = {availability_subject(event.location_id, line.sku) for line in event.lines}
        for subject in subjects:
            owners[subject] = event.event_id if len(subjects) == 1 and subject not in owners else None
    return {subject: event_id for subject, event_id in owners.items() if event_id is not None}


def percentiles(values: list[float], qs=(50, 95, 99)) -> dict[str, float]:
    if not values:
        return {f"p{q}": float("nan") for q in qs} | {"max": float("nan"), "mean": float("nan")}
    ordered = sorted(values)  # nearest rank
    out = {f"p{q}": ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] for q in qs}
    out["max"] = ordered[-1]
    out["mean"] = sum(ordered) / len(ordered)
    return out


async def run(args: argparse.Namespace) -> dict:
    spec = WorkloadSpec.from_json(args.spec)
    if args.messages:
        messages = load_messages(Path(args.messages))
    else:
        stock = None
        if args.stock:
            stock = {tuple(k.split("|", 1)): v for k, v in json.loads(Path(args.stock).read_text()).items()}
        messages = generate(spec, stock)
    unique = sum(1 for m in messages if not m.duplicate)

    nc = await nats.connect(
        args.nats, name="stocksync-bench-publisher", max_reconnect_attempts=-1, pending_size=64 * 1024 * 1024
    )
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    seen: set[str] = set()
    all_seen = asyncio.Event()
    decoder = msgspec.json.Decoder(_OutcomeId)
    traces: list[tuple[str, float, float]] = []
    trace_every = max(1, unique // 3000)
    offset = time.time() - time.perf_counter()

    def wall_of(perf: float) -> float:
        return perf + offset

    async def on_outcome(msg) -> None:
        now = time.perf_counter()
        event_id = decoder.decode(msg.data).event_id
        if event_id in seen:
            return
        started = sent_at.get(event_id)
        if started is None:
            return
        seen.add(event_id)
        latencies.append((now - started) * 1000)
        if len(seen) % trace_every == 0:  # for the stage breakdown: wall clock, comparable with the ledger's
            traces.append((event_id, wall_of(started), wall_of(now)))
        if len(seen) == unique:
            all_seen.set()

    owned = own_positions(messages) if args.latency else {}
    availability: list[float] = []

    async def on_availability(msg) -> None:
        now = time.perf_counter()
        event_id = owned.pop(msg.subject, None)  # the first message on the subject only
        if event_id is not None and (started := sent_at.get(event_id)) is not None:
            availability.append((now - started) * 1000)

    if args.latency:
        timed = [("stocksync.out.outcome.>", on_outcome), *((subject, on_availability) for subject in owned)]
        for subject, callback in timed:
            await nc.subscribe(
                subject, cb=callback, pending_msgs_limit=10_000_000, pending_bytes_limit=1024 * 1024 * 1024
            )
        await nc.flush()

    # JetStream publishes pipelined (publish_async): each gets its PubAck later, at most --window outstanding.
    acks = {"ok": 0, "duplicate": 0, "error": 0}
    js = nc.jetstream(publish_async_max_pending=args.window)

    def acked(future: asyncio.Future) -> None:
        if future.cancelled() or future.exception() is not None:
            acks["error"] += 1
        else:
            acks["duplicate" if future.result().duplicate else "ok"] += 1

    async def send(message: Outbound) -> None:
        headers = {"Nats-Msg-Id": message.event_id} if message.msg_id else None
        if not message.duplicate:
            sent_at[message.event_id] = time.perf_counter()
        future = await js.publish_async(message.subject, message.body, headers=headers)
        future.add_done_callback(acked)

    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_start = usage.ru_utime + usage.ru_stime
    wall_start = time.time()
    start = time.perf_counter()
    if args.rate <= 0:
        for message in messages:
            await send(message)
    else:
        tick = 0.005
        sent = 0
        while sent < len(messages):
            due = min(len(messages), int((time.perf_counter() - start) * args.rate) + 1)
            while sent < due:
                await send(messages[sent])
                sent += 1
            next_at = start + sent / args.rate
            await asyncio.sleep(max(0.0, min(tick, next_at - time.perf_counter())))
    try:
        await asyncio.wait_for(js.publish_async_completed(), timeout=120)
    except TimeoutError:
        acks["error"] += js.publish_async_pending()
    publish_seconds = time.perf_counter() - start
    wall_end = time.time()

    if args.latency and unique:
        try:
            await asyncio.wait_for(all_seen.wait(), timeout=args.wait)
        except TimeoutError:
            pass
    await nc.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu_start,
        "spec": json.loads(args.spec),
        "messages": len(messages),
        "unique": unique,
        "duplicates_with_msg_id": sum(1 for m in messages if m.duplicate and m.msg_id),
        "duplicates_without_msg_id": sum(1 for m in messages if m.duplicate and not m.msg_id),
        "acks": acks,
        "offered_rate": args.rate,
        "publish_seconds": publish_seconds,
        "publish_rate": len(messages) / publish_seconds if publish_seconds else 0.0,
        "wall_start": wall_start,
        "wall_end": wall_end,
        "outcomes_matched": len(seen),
        "latency_ms": percentiles(latencies) if args.latency else None,
        "availability_timed": len(availability),
        "availability_latency_ms": percentiles(availability) if availability else None,
        "traces": traces,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True)
    parser.add_argument("--nats", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--messages", help="the messages, as written by save_messages (else generated here)")
    parser.add_argument("--stock", help="JSON {'location|sku': qty}: the seeded stock (else recomputed)")
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--window", type=int, default=2000)
    parser.add_argument("--latency", action="store_true")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the last outcomes")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
