"""py-spy on the bench's processes: records them, and reads its raw (collapsed-stack) output into the few numbers
a person needs: where the CPU went.

Each line is ``frame;frame;...;leaf COUNT`` (root first), a frame ``function (path:line)``. py-spy leaves idle
samples out, so ``samples / (seconds * rate)`` is the share of one core the process used.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")
GROUPS = (
    ("stocksync", "stocksync (product code)"),
    ("sqlalchemy", "SQLAlchemy"),
    ("asyncpg", "asyncpg"),
    ("nats", "nats-py"),
    ("msgspec", "msgspec"),
    ("structlog", "structlog / logging"),
    ("logging", "structlog / logging"),
    ("prometheus_client", "prometheus-client"),
    ("asyncio", "asyncio event loop"),
    ("selectors", "asyncio event loop"),
)


def short(path: str) -> str:
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return path


def frame_name(frame: str, with_line: bool = False) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    where = short(match["path"])
    return f"{match['fn']} ({where}{':' + match['line'] if with_line and match['line'] else ''})"


def group_of(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    path = match["path"] if match else frame
    for needle, name in GROUPS:
        if f"/{needle}/" in path or path.startswith(f"{needle}/") or f"{needle}.py" in path:
            return name
    return "other"


_PLUMBING = (
    "BaseEventLoop.",
    "Runner.run",
    "run (asyncio/runners.py)",
    "_run_module_as_main",
    "_run_code",
    "<module>",
    "main (stocksync/cli.py)",
    "Handle._run",
    "Task.__step",
    "greenlet_spawn",
    "_serve (stocksync/cli.py)",
    "serve (stocksync/server.py)",
)


def summarize(path: Path, top: int = 15) -> dict:
    tasks: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    # the product frame a sample is spent under (the deepest stocksync frame on its stack)
    under_product: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        own[frame_name(frames[-1])] += n
        groups[group_of(frames[-1])] += n
        for name in {frame_name(f) for f in frames}:
            if not name.startswith(_PLUMBING):
                inclusive[name] += n
        # the coroutine or callback the event loop was running: the frame right under Handle._run
        names = [frame_name(f) for f in frames]
        runs = [i for i, name in enumerate(names) if name.startswith("Handle._run")]
        tasks[names[runs[0] + 1] if runs and runs[0] + 1 < len(names) else names[-1]] += n
        product = [f for f in frames if "stocksync/" in f]
        under_product[
            frame_name(product[-1], with_line=True) if product else "(outside stocksync frames)"
        ] += n

    def share(counter: Counter[str], most: int = top) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(most)] if total else []

    return {
        "samples": total,
        "self": share(own),
        "inclusive": share(inclusive, 25),
        "tasks": share(tasks),
        "groups": share(groups),
        "deepest_product_frame": share(under_product),
    }


def _py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


def record(pids: dict[str, int], log_dir: Path, tag: str, seconds: float):
    """py-spy record (100 Hz, raw collapsed stacks) on each process for ``seconds``; None without py-spy."""
    spy = _py_spy()
    if spy is None:
        return None
    running = []
    for role, pid in pids.items():
        out = log_dir / f"profile-{tag}-{role}.txt"
        process = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, int(seconds))),
                "--rate",
                "100",
                "--format",
                "raw",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        running.append((role, process, out, seconds))
    return running


async def collect(running, results, suffix: str) -> None:
    """When the recordings are done, their summaries join ``results.profile`` (keyed by role and ``suffix``)."""
    found = {}
    for role, process, out, seconds in running:
        await asyncio.to_thread(process.wait)
        if out.exists():
            found[f"{role}{suffix}"] = {**summarize(out), "seconds": seconds}
    results.profile = (results.profile or {}) | found
