"""docs/integration.md runs as written: each ```python block, a whole script, is run in its own process, in
the guide's order, against the running service, with the names the guide says the operator gives; then the
ledger holds what the guide's story did to it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support_live import Served, served, unique

__all__ = ["served"]  # the fixture, imported for pytest
GUIDE = Path(__file__).resolve().parents[2] / "docs" / "integration.md"
STOCK = 10


def examples() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", GUIDE.read_text(), re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("served", ["process"], indirect=True)
def test_every_example_of_the_integration_guide_runs_against_the_service(
    served: Served, tmp_path: Path
) -> None:
    store, sku, channel = served.store(lat=52.37, lon=4.89), unique("SKU"), unique("web")
    served.post_event("receipt", store, [{"sku": sku, "qty": STOCK}])
    answer = served.admin.put(f"/v1/channels/{channel}", json={"name": "Web", "locations": [store]})
    assert answer.status_code == 200, answer.text
    env = {key: value for key, value in os.environ.items() if not key.startswith("STOCKSYNC_")}
    env |= {
        "API_URL": served.base,
        "NATS_URL": served.nats_url,
        "POS_KEY": served.key("pos", store),
        "SHOP_KEY": served.key("ecommerce"),
        "STORE": store,
        "SKU": sku,
        "CHANNEL": channel,
    }
    scripts = examples()
    assert len(scripts) >= 5 and all("asyncio.run(main())" in script for script in scripts)
    for number, script in enumerate(scripts, 1):
        run = subprocess.run(
            [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, f"example {number} of {GUIDE.name}:\n{script}\n{run.stdout}\n{run.stderr}"

    # The till sold 2 and took 1 back, a pickup of 2 was collected, an order of 1 shipped; the rest was
    # released again.
    position = served.position(store, sku)
    assert (position["on_hand"], position["reserved"]) == (STOCK - 2 + 1 - 2 - 1, 0)
