"""The load generator (``benchmarks/publisher.py``) run from the bench: its messages generated before any clock
starts, the process, and the part of its answer a scenario keeps."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from benchmarks.infra import Infra, run_module
from benchmarks.workload import WorkloadSpec


async def prepare_messages(spec: WorkloadSpec, stock_file: Path, log_dir: Path) -> Path:
    """The workload's messages, generated here (before any clock starts) for the publisher to load."""
    from benchmarks.publisher import save_messages
    from benchmarks.workload import generate

    stock = {tuple(k.split("|", 1)): v for k, v in json.loads(stock_file.read_text()).items()}
    messages_file = log_dir / f"messages-{spec.prefix}.msgpack"
    save_messages(await asyncio.to_thread(generate, spec, stock), messages_file)
    return messages_file


async def publish(
    infra: Infra,
    spec: WorkloadSpec,
    messages_file: Path,
    log_dir: Path,
    *,
    rate: float = 0,
    latency: bool = False,
    wait: float = 60,
) -> dict:
    out = log_dir / f"publisher-{spec.prefix}.json"
    args = [
        "--spec",
        spec.to_json(),
        "--nats",
        infra.nats_url,
        "--out",
        str(out),
        "--messages",
        str(messages_file),
        "--rate",
        str(rate),
        "--wait",
        str(wait),
    ]
    if latency:
        args.append("--latency")
    log = log_dir / f"publisher-{spec.prefix}.log"
    code = await run_module("benchmarks.publisher", args, log)
    if code != 0:
        raise RuntimeError(f"the publisher failed ({code}): {log.read_text()[-2000:]}")
    return json.loads(out.read_text())


def publisher_summary(published: dict) -> dict:
    return {
        k: published[k]
        for k in (
            "messages",
            "unique",
            "duplicates_with_msg_id",
            "duplicates_without_msg_id",
            "acks",
            "publish_seconds",
            "publish_rate",
            "offered_rate",
        )
    }
