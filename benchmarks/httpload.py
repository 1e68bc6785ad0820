"""A small HTTP/1.1 load generator on raw asyncio streams (keep-alive, no client library in the hot path, so the
generator's own cost stays small on a 2-core machine that also runs the server).

``python -m benchmarks.httpload --port P --key K --requests FILE --out FILE [--concurrency C] [--duration S]
[--rate R]``

- closed loop (no ``--rate``): C connections, each sends its next request as soon as the previous answer is in;
  requests/s is the server's capacity at that concurrency;
- fixed rate (``--rate R``): requests are due at start + i/R, spread over at most C connections; a request's
  latency runs from when it was due, not from when a free connection sent it (no coordinated omission).
``FILE`` holds a JSON list of ``{"method", "path", "body"?}``, sent in a cycle. The answer is JSON on ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from collections import Counter
from pathlib import Path

import uvloop

from benchmarks.publisher import percentiles


def encode_requests(items: list[dict], host: str, key: str) -> list[bytes]:
    encoded = []
    for item in items:
        body = json.dumps(item["body"]).encode() if item.get("body") is not None else b""
        head = (
            f"{item['method']} {item['path']} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            f"Accept: application/json\r\n"
        )
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        encoded.append(head.encode() + b"\r\n" + body)
    return encoded


async def read_response(reader: asyncio.StreamReader) -> int:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status = int(status_line.split(b" ", 2)[1])
    length = 0
    chunked = False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readline()).strip().split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def run(args: argparse.Namespace) -> dict:
    items = json.loads(Path(args.requests).read_text())
    requests = encode_requests(items, f"{args.host}:{args.port}", args.key)
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    errors = Counter()
    counter = iter(range(10**12))
    start = time.perf_counter() + 0.05
    end = start + args.duration

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(args.host, args.port)
        try:
            while True:
                i = next(counter)
                due = start + i / args.rate if args.rate else time.perf_counter()
                if due >= end:
                    return
                if args.rate:
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    sent = due
                else:
                    sent = time.perf_counter()
                if sent < start:
                    await asyncio.sleep(start - sent)
                    sent = start
                writer.write(requests[i % len(requests)])
                try:
                    status = await read_response(reader)
                except (ConnectionError, asyncio.IncompleteReadError) as error:
                    errors[type(error).__name__] += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(args.host, args.port)
                    continue
                done = time.perf_counter()
                if done <= end:
                    statuses[status] += 1
                    latencies.append((done - sent) * 1000)
        finally:
            writer.close()

    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_start = usage.ru_utime + usage.ru_stime
    await asyncio.gather(*(connection() for _ in range(args.concurrency)))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    seconds = args.duration
    ok = sum(n for status, n in statuses.items() if 200 <= status < 300)
    return {
        "mode": f"fixed rate {args.rate:g}/s"
        if args.rate
        else f"closed loop, {args.concurrency} connections",
        "concurrency": args.concurrency,
        "offered_rate": args.rate,
        "seconds": seconds,
        "requests": sum(statuses.values()),
        "ok": ok,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": dict(errors),
        "rps": sum(statuses.values()) / seconds,
        "ok_rps": ok / seconds,
        "latency_ms": percentiles(latencies),
        "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu_start,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--requests", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=0.0)
    args = parser.parse_args()
    # uvloop, as the API runs: the generator shares the cores it measures, so its own CPU per request counts
    Path(args.out).write_text(json.dumps(uvloop.run(run(args))))


if __name__ == "__main__":
    main()
