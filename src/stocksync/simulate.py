"""`stocksync pos simulate`: a till ringing up random sales (and the odd return) at a steady pace, for demos.

It drives the real `PosClient`, so stopping NATS mid-run shows the spool filling and then draining.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from stocksync.adapters.locations import stocked_skus
from stocksync.domain.events import QtyLine
from stocksync.messages import OutcomeMessage
from stocksync.settings import Settings
from stocksync_client.pos import PosClient

RETURN_SHARE = 0.1


def basket(rng: random.Random, skus: Sequence[str]) -> list[QtyLine]:
    """One to three different skus, mostly one unit each."""
    chosen = rng.sample(list(skus), k=min(len(skus), rng.choice((1, 1, 1, 2, 3))))
    return [QtyLine(sku=sku, qty=rng.choice((1, 1, 1, 2))) for sku in chosen]


async def drive(
    pos: PosClient,
    skus: Sequence[str],
    *,
    count: int,
    rate: float,
    rng: random.Random,
    on_recorded: Callable[[], object] = lambda: None,
) -> Counter[str]:
    """Ring up ``count`` transactions at ``rate`` a second (it never waits for NATS); counts by type."""
    loop = asyncio.get_running_loop()
    started, kinds = loop.time(), Counter[str]()
    for n in range(count):
        if rng.random() < RETURN_SHARE:
            await pos.return_(basket(rng, skus), reference=f"sim-return-{n}")
            kinds["return"] += 1
        else:
            await pos.sell(basket(rng, skus), reference=f"sim-receipt-{n}")
            kinds["sale"] += 1
        on_recorded()
        await asyncio.sleep(max(0.0, started + (n + 1) / rate - loop.time()))
    return kinds


def demo_key(home: Path, location_id: str) -> str | None:
    """The key `stocksync demo` saved for tills: its pos key at that store, else its admin key."""
    try:
        demo = json.loads((home / "demo-keys.json").read_text())
    except (OSError, ValueError):
        return None
    keys = demo.get("keys", {})
    return keys.get("pos") if demo.get("store") == location_id else keys.get("admin")


async def simulate(
    settings: Settings,
    *,
    location_id: str,
    till_id: str,
    rate: float,
    count: int,
    spool: Path | None,
    skus: Sequence[str],
    wait_s: float,
    console: Console,
    api_key: str | None = None,
) -> int:
    """Run the till, then print what was sent and which outcomes came back; 0 when none is still pending."""
    assert settings.nats_url is not None
    if not skus:
        assert settings.database_url is not None
        skus = await stocked_skus(settings.database_url, location_id)
    if not skus:
        console.print(f"[red]no sku has stock at {location_id}: run stocksync demo, or pass --sku[/red]")
        return 2
    spool = spool or Path(settings.home) / "pos" / f"{location_id}-{till_id}.sqlite3"
    outcomes: Counter[str] = Counter()
    with Progress(console=console) as progress:
        recording = progress.add_task(f"ringing up at {location_id} till {till_id}", total=count)
        answered = progress.add_task("outcomes received", total=None)

        def received(outcome: OutcomeMessage) -> None:
            outcomes[outcome.outcome] += 1
            progress.advance(answered)

        pos = await PosClient.open(
            settings.nats_url,
            location_id,
            till_id,
            spool,
            api_key=api_key or demo_key(Path(settings.home), location_id),
            on_outcome=received,
        )
        try:
            progress.update(answered, total=count + pos.pending())  # with what an earlier run left behind
            kinds = await drive(
                pos,
                skus,
                count=count,
                rate=rate,
                rng=random.Random(),
                on_recorded=lambda: progress.advance(recording),
            )
            try:
                await pos.wait_until_drained(wait_s)
            except TimeoutError:
                pass
            pending = pos.pending()
        finally:
            await pos.close()
    Console().print(_summary(kinds, outcomes, pending, spool))
    return 0 if pending == 0 else 1


def _summary(kinds: Counter[str], outcomes: Counter[str], pending: int, spool: Path) -> Table:
    table = Table(title="till summary", show_header=False)
    table.add_row("sent", f"{sum(kinds.values())} ({kinds['sale']} sales, {kinds['return']} returns)")
    for kind in ("applied", "duplicate", "rejected"):
        table.add_row(kind, str(outcomes[kind]))
    table.add_row("pending", f"{pending}" + (f" (still in {spool})" if pending else ""))
    return table
