"""Webhooks: what a subscription is, how a delivery is signed, when to try again and when to give up. Pure.

A receiver checks ``Stocksync-Signature: t=<unix seconds>,v1=<hex>``: HMAC-SHA256 with the webhook's secret
over ``<t>.`` followed by the raw body, compared in constant time, and refuses a ``t`` too far from its clock
(a replayed delivery). ``Stocksync-Message-Id`` is the out message's id: a delivery may come twice (a process
that died before it logged one), and the receiver drops a repeat by that id.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta

from msgspec import Struct

SUBJECT_TOKEN = r"[A-Za-z0-9_-]{1,64}"
# A filter of the out stream: stocksync.out.<kind>[.<token>…], wildcards allowed (``*`` a token, ``>`` the rest).
SUBJECT_PATTERN = rf"^stocksync\.out((\.({SUBJECT_TOKEN}|\*))+(\.>)?|\.>)$"
SIGNATURE_HEADER = "Stocksync-Signature"
MAX_DELAY_S = 60.0


class Webhook(Struct, frozen=True, kw_only=True):
    webhook_id: str
    url: str
    subjects: tuple[str, ...]  # out-stream filters, NATS wildcards allowed
    secret: str


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The header's value: ``t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>." + body>``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def signed_by(secret: str, header: str, body: bytes) -> bool:
    """What a receiver checks (the tests, and docs/integration.md show it)."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    if not parts.get("t", "").isdigit():
        return False
    return hmac.compare_digest(signature(secret, int(parts["t"]), body), header)


def retry_delay(attempt: int) -> float:
    """Seconds before attempt ``attempt + 1``: doubling from half a second, at most a minute."""
    return min(MAX_DELAY_S, 0.5 * 2 ** max(0, attempt - 1))


def gave_up(first_attempt: datetime, now: datetime, give_up_after: timedelta) -> bool:
    """A delivery not accepted for ``give_up_after`` since its first attempt is logged ``gave_up`` and the
    webhook goes on with the next message: one dead receiver must not hold the others' messages for ever."""
    return now - first_attempt >= give_up_after
