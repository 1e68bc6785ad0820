"""The staff page in a real browser (Playwright driving Debian's headless Chromium) against the running
service: what a shop assistant sees and does, and numbers that move when a till sells over NATS.

Chromium is installed on demand (``apt-get install -y chromium``; Playwright's own browser download is not
reachable here). ``STOCKSYNC_TEST_SCREENSHOTS=1`` also writes the page's screenshots to ``docs/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from tests.support import run_sql
from tests.support_live import Served, sell_over_nats, served, unique  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("STOCKSYNC_TEST_CHROMIUM", "/usr/bin/chromium"))
AVAILABLE = "#position [data-field=available]"


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, installed with apt when it is missing (the tests install what they need)."""
    as_root = [] if os.geteuid() == 0 or not shutil.which("sudo") else ["sudo", "-n"]
    install, update = [*as_root, "apt-get", "install", "-y", "chromium"], [*as_root, "apt-get", "update"]
    for command in (install, update, install):  # the package lists may be missing or stale the first time
        if CHROMIUM.exists():
            break
        done = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False)
    assert CHROMIUM.exists(), (
        f"no {CHROMIUM}: `apt-get install -y chromium` did not provide it: {done.stderr}"
    )
    return CHROMIUM


@pytest.fixture(scope="module")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(chromium), headless=True)
        yield launched
        await launched.close()


class Shop:
    """A store with stock of one sku, two pickup stores near it and one far, and a staff key for it."""

    def __init__(self, served: Served) -> None:
        self.store = served.store(name="Amsterdam Centraal", lat=52.3791, lon=4.9003)
        self.near = served.store(name="Dam Square", lat=52.3731, lon=4.8926)
        self.far = served.store(name="Utrecht Station", lat=52.0894, lon=5.1101)
        self.sku = unique("SKU-JEANS")
        for location_id, qty in ((self.store, 10), (self.near, 4), (self.far, 9)):
            served.post_event("receipt", location_id, [{"sku": self.sku, "qty": qty}])
        self.key = served.key("staff", self.store)
        self.till = served.key("pos", self.store)  # the NATS token of the store's tills


async def _signed_in(
    browser: Browser, served: Served, key: str, width: int = 360
) -> tuple[BrowserContext, Page]:
    context = await browser.new_context(viewport={"width": width, "height": 900})
    page = await context.new_page()
    await page.goto(f"{served.base}/staff")
    await page.fill("#key", key)
    await page.keyboard.press("Enter")
    await expect(page.locator("#live")).to_have_text("Live", timeout=15_000)
    return context, page


async def _look_up(page: Page, sku: str) -> None:
    await page.fill("#lookup-sku", sku)
    await page.locator("#lookup-sku").press("Enter")
    await expect(page.locator("#position .sku")).to_have_text(sku)
    await expect(page.locator("#live")).to_have_text("Live", timeout=15_000)  # watching the sku now


async def _numbers(page: Page) -> dict[str, str]:
    fields = ("available", "on_hand", "reserved", "damaged")
    return {f: await page.locator(f"#position [data-field={f}]").inner_text() for f in fields}


async def test_sign_in_look_up_reserve_and_collect(served: Served, browser: Browser, tmp_path: Path) -> None:
    shop = Shop(served)
    context = await browser.new_context(viewport={"width": 360, "height": 900})
    page = await context.new_page()
    await page.goto(f"{served.base}/staff")
    await page.fill("#key", "ssk_0000_not-a-key")
    await page.keyboard.press("Enter")
    await expect(page.locator("#sign-in-problem")).to_contain_text("not valid")
    await page.fill("#key", shop.key)
    await page.keyboard.press("Enter")
    await expect(page.locator("#store-name")).to_have_text("Amsterdam Centraal")
    assert shop.key not in page.url
    assert await page.evaluate("JSON.stringify(localStorage) + document.cookie") == "{}"
    (session,) = [c for c in await context.cookies() if c["name"] == "stocksync_session"]
    assert (session["httpOnly"], session["sameSite"]) == (True, "Strict")

    await _look_up(page, shop.sku)
    assert await _numbers(page) == {"available": "10", "on_hand": "10", "reserved": "0", "damaged": "0"}
    nearby = await page.locator(".nearby li").all_inner_texts()
    assert [" ".join(text.split()) for text in nearby] == [
        "Dam Square 0.8 km 4 available",
        "Utrecht Station 35.2 km 9 available",
    ]

    await page.locator(".use-sku").click()  # fills the reservation's first line
    await page.locator(".line-qty").first.fill("3")
    await page.fill("#reference", "Mrs Jansen")
    await page.locator("#reference").press("Enter")
    await expect(page.locator("#reserve-result")).to_contain_text(f"Reserved for Mrs Jansen: 3 × {shop.sku}")
    await expect(page.locator(AVAILABLE)).to_have_text("7")  # live, from the feed
    held = page.locator(".reservation", has_text="Mrs Jansen")
    await expect(held.locator(".countdown")).to_contain_text("h 59 min left")
    await expect(held.locator(".tag")).to_have_text("In store")
    await _screenshots(page, browser, served, shop.key, shop.sku, tmp_path)

    await expect(page.locator(".line-sku").first).to_have_value("")  # the form is ready for the next customer
    await page.locator(".line-sku").first.fill(shop.sku)
    await page.locator(".line-qty").first.fill("100")
    await page.fill("#reference", "Mr Bakker")
    await page.locator("#reserve").click()
    await expect(page.locator("#reserve-result")).to_contain_text("Not enough stock to hold this")
    await expect(page.locator("#reserve-result")).to_contain_text(
        f"{shop.sku}: asked for 100, only 7 available"
    )

    page.once("dialog", lambda dialog: dialog.accept())
    await held.locator(".collect").click()
    await expect(page.locator("#settle-result")).to_contain_text("Mrs Jansen: Handed over")
    await expect(page.locator("#no-reservations")).to_be_visible()
    await expect(page.locator("#position [data-field=on_hand]")).to_have_text("7")
    assert await _numbers(page) == {"available": "7", "on_hand": "7", "reserved": "0", "damaged": "0"}
    assert served.position(shop.store, shop.sku)["on_hand"] == 7

    await page.locator("#sign-out").click()
    await expect(page.locator("#key")).to_be_visible()
    assert not [c for c in await context.cookies() if c["name"] == "stocksync_session" and c["value"]]
    await context.close()


async def test_a_sale_over_nats_changes_the_number_on_two_pages_within_two_seconds(
    served: Served, browser: Browser
) -> None:
    shop = Shop(served)
    opened = [await _signed_in(browser, served, shop.key, width) for width in (360, 1280)]
    for _, page in opened:
        await _look_up(page, shop.sku)
        await expect(page.locator(AVAILABLE)).to_have_text("10")
    sold_at = time.monotonic()
    await sell_over_nats(served, shop.till, shop.store, shop.sku, 2)
    for _, page in opened:
        left_ms = max(1.0, (2.0 - (time.monotonic() - sold_at)) * 1000)
        await expect(page.locator(AVAILABLE)).to_have_text("8", timeout=left_ms)
    assert time.monotonic() - sold_at < 2.0
    for context, _ in opened:
        await context.close()


async def test_the_page_shows_a_web_order_live_and_catches_up_after_the_connection_drops(
    served: Served, browser: Browser
) -> None:
    shop = Shop(served)
    context, page = await _signed_in(browser, served, shop.key)
    await _look_up(page, shop.sku)
    web = httpx.post(
        f"{served.base}/v1/reservations",
        headers={"Authorization": f"Bearer {served.key('ecommerce')}"},
        json={
            "location_id": shop.store,
            "channel": "ecommerce",
            "reference": "web-1234",
            "lines": [{"sku": shop.sku, "qty": 1}],
        },
    )
    assert web.status_code == 201, web.text
    order = page.locator(".reservation", has_text="web-1234")
    await expect(order.locator(".tag")).to_have_text("Website click & collect")
    await expect(page.locator(AVAILABLE)).to_have_text("9")

    with served.nats_down():
        await expect(page.locator("#live")).to_have_text("Offline", timeout=15_000)
        await expect(page.locator("#offline")).to_be_visible()
        served.post_event("receipt", shop.store, [{"sku": shop.sku, "qty": 5}])  # while the page is away
    await expect(page.locator("#live")).to_have_text("Live", timeout=30_000)
    await expect(page.locator("#offline")).to_be_hidden()
    await expect(page.locator(AVAILABLE)).to_have_text("14", timeout=10_000)

    _due_now(served, web.json()["reservation_id"])  # as if its hold time had passed: the sweeper expires it
    await expect(order).to_have_count(0, timeout=10_000)
    await expect(page.locator(AVAILABLE)).to_have_text("15")
    await context.close()


def _due_now(served: Served, reservation_id: str) -> None:
    """Move a hold's expiry to a second ago (the shortest hold is a minute: too long to wait for here)."""
    database_url = served.env["STOCKSYNC_DATABASE_URL"]
    run_sql(
        database_url,
        "UPDATE reservations SET expires_at = now() - interval '1 second' "
        f"WHERE reservation_id = '{reservation_id}'",
    )


def test_the_page_refuses_writes_from_elsewhere_and_fragments_without_a_session(served: Served) -> None:
    shop = Shop(served)
    signed_in = httpx.Client(base_url=served.base, cookies={"stocksync_session": shop.key})
    form = {"sku": shop.sku, "qty": "1", "hold_minutes": "120"}
    from_elsewhere = signed_in.post("/staff/reservations", data=form)  # a form on another site: no HX-Request
    from_page = signed_in.post("/staff/reservations", data=form, headers={"HX-Request": "true"})
    bad_qty = signed_in.post(
        "/staff/reservations", data=form | {"qty": "lots"}, headers={"HX-Request": "true"}
    )
    signed_out = httpx.get(f"{served.base}/staff/lookup", params={"sku": shop.sku})
    pos_key = httpx.post(f"{served.base}/staff/sign-in", data={"key": served.key("pos", shop.store)})
    assert from_elsewhere.status_code == 400 and "from the staff page" in from_elsewhere.text
    assert from_page.status_code == 200 and "Reserved" in from_page.text
    assert bad_qty.status_code == 400
    assert "each quantity is a whole number from 1 to 100,000" in bad_qty.text
    assert (signed_out.status_code, signed_out.headers["HX-Redirect"]) == (401, "/staff")
    assert pos_key.status_code == 403 and "needs a staff key" in pos_key.text
    assert served.position(shop.store, shop.sku)["reserved"] == 1
    signed_in.close()


async def test_a_look_up_sent_before_the_scripts_have_loaded_still_shows_the_position(
    served: Served, browser: Browser
) -> None:
    """A scanner's Enter can beat the scripts (the form then submits itself): the page answers in full."""
    shop = Shop(served)
    context = await browser.new_context(java_script_enabled=False)
    page = await context.new_page()
    await page.goto(f"{served.base}/staff")
    await page.fill("#key", shop.key)
    await page.keyboard.press("Enter")
    await expect(page.locator("#store-name")).to_have_text("Amsterdam Centraal")
    await page.fill("#lookup-sku", shop.sku)
    await page.locator("#lookup-sku").press("Enter")
    await expect(page.locator("#position .sku")).to_have_text(shop.sku)
    await expect(page.locator(AVAILABLE)).to_have_text("10")
    await expect(page.locator("#lookup-sku")).to_have_value(shop.sku)
    await page.fill("#lookup-sku", "not a sku!")
    await page.locator("#lookup-sku").press("Enter")
    await expect(page.locator("#lookup-result [role=alert]")).to_contain_text("a sku is letters, digits")
    await context.close()


async def _screenshots(page: Page, browser: Browser, served: Served, key: str, sku: str, out: Path) -> None:
    """The page at 360 px (nothing wider than the screen) and on a desktop; into docs/ when asked for."""
    assert await page.evaluate("document.documentElement.scrollWidth") <= 360
    await page.screenshot(path=out / "staff-360.png", full_page=True)
    context, desktop = await _signed_in(browser, served, key, width=1280)
    await _look_up(desktop, sku)
    await expect(desktop.locator(".reservation").first).to_be_visible()
    await desktop.screenshot(path=out / "staff-desktop.png", full_page=True)
    await context.close()
    if os.environ.get("STOCKSYNC_TEST_SCREENSHOTS"):
        for name in ("staff-360.png", "staff-desktop.png"):
            shutil.copy(out / name, ROOT / "docs" / name)


def test_a_key_for_two_stores_chooses_which_one_the_page_is_for(served: Served) -> None:
    first, second = sorted([served.store(name="Store One"), served.store(name="Store Two")])
    page = httpx.Client(
        base_url=served.base, cookies={"stocksync_session": served.key("staff", first, second)}
    )
    before = page.get("/staff")
    page.post("/staff/store", data={"store": second})
    after = page.get("/staff")
    page.post("/staff/store", data={"store": unique("not-mine")})
    not_mine = page.get("/staff")
    page.close()
    assert 'id="store-choice"' in before.text and f'data-store="{first}"' in before.text
    assert f'data-store="{second}"' in after.text
    assert f'data-store="{first}"' in not_mine.text, "a store the key may not act at is never chosen"
