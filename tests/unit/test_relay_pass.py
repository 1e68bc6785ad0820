"""What one relay pass publishes (conflation) and the bounded memory of the positions channels sum."""

from types import SimpleNamespace

from stocksync.adapters.channels import ChannelStock
from stocksync.domain.model import Position
from stocksync.messaging.relay import conflated
from stocksync.wire import CHANNEL_REFRESH


def _row(subject: str, kv_key: str | None = None, version: int | None = None) -> SimpleNamespace:
    return SimpleNamespace(subject=subject, kv_key=kv_key, version=version)


def test_a_pass_publishes_a_positions_newest_version_once_ahead_of_the_outcomes_it_includes():
    rows = [
        _row("avail.a", "a", 1),
        _row("outcome.1"),
        _row("avail.b", "b", 4),
        _row("avail.a", "a", 3),
        _row("outcome.2"),
        _row(CHANNEL_REFRESH),
        _row("avail.a", "a", 2),  # a late commit of an older version: never published over the newer
    ]
    assert [(r.subject, r.version) for r in conflated(rows)] == [
        ("avail.a", 3),
        ("outcome.1", None),
        ("avail.b", 4),
        ("outcome.2", None),
    ]


def test_the_stock_lets_the_least_recently_needed_positions_go_past_its_size_and_reads_them_again():
    stock = ChannelStock(max_keys=3)
    for sku in ("s1", "s2", "s3"):
        wanted, missing = stock.missing([("l", sku)])
        stock.remember(len(wanted), missing, [Position(location_id="l", sku=sku, on_hand=5, version=2)])
    stock.missing([("l", "s1")])  # used again: s2 is now the least recently used
    wanted, missing = stock.missing([("l", "s4")])
    stock.remember(len(wanted), missing, [])
    assert list(stock.positions) == [("l", "s3"), ("l", "s1"), ("l", "s4")]
    assert stock.positions[("l", "s4")].on_hand == 0  # not in the database: a position of zeros
    assert stock.missing([("l", "s2"), ("l", "s3")])[1] == [("l", "s2")]  # let go: read again


def test_the_stock_keeps_every_position_of_a_pass_that_needs_more_than_its_size():
    stock = ChannelStock(max_keys=2)
    keys = [("l", f"s{i}") for i in range(5)]
    wanted, missing = stock.missing(keys)
    stock.remember(len(wanted), missing, [])
    assert all(stock.holds(key) for key in keys)
    wanted, missing = stock.missing(keys[:1])
    stock.remember(len(wanted), missing, [])
    assert list(stock.positions) == [("l", "s4"), ("l", "s0")]
