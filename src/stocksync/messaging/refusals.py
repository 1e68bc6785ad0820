"""Why an inbound message is not a valid one: the dead letter's machine code, shared by events and orders."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import msgspec

from stocksync.domain.events import MAX_BODY_BYTES, TooDeep

T = TypeVar("T")


class Refused(Exception):
    """A message that is not a valid event or order: it goes to the DLQ with a machine code."""

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail


def decoded(decode: Callable[[bytes], T], data: bytes, invalid: str) -> T:
    """The body decoded and validated, or `Refused`: too large, not JSON, nested too deep, or ``invalid``
    (the code of a body that is JSON but not a valid message, naming the field)."""
    if len(data) > MAX_BODY_BYTES:
        raise Refused(
            "body_too_large", f"the body is {len(data)} bytes; at most {MAX_BODY_BYTES} are accepted"
        )
    try:
        return decode(data)
    except msgspec.ValidationError as error:
        raise Refused(invalid, str(error)) from None
    except TooDeep as error:
        raise Refused("too_deep", str(error)) from None
    except msgspec.DecodeError as error:
        raise Refused("undecodable", f"the body is not valid JSON: {error}") from None
