"""structlog set-up: JSON lines in production, a console renderer for humans; secrets never logged.

Every line, stocksync's own and the libraries' (stdlib ``logging``, rendered by the same processors), passes
`redact` last before rendering: API keys keep only their key id (``ssk_<key_id>_***``), URLs lose their
password or token (``postgresql://user:***@``, ``nats://***@``), and fields named like a secret are dropped.
Request and message bodies are never logged at all (what is logged of a refusal is its code); redaction is
the net under that rule, not the rule.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import traceback
from typing import Any

import structlog

_SECRET_FIELDS = {"authorization", "api_key", "secret", "password", "token"}  # ("key" is a bucket key)
_API_KEY = re.compile(r"ssk_(?:(?P<key_id>[0-9a-f]{12})_)?[A-Za-z0-9_-]*")
# scheme://user:password@ or scheme://token@; the password runs to the last @ before the path (unencoded @s)
_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s'\"]*)(?::(?P<password>[^/\s'\"]*))?@"
)
_PASSWORD_PARAMETER = re.compile(r"(?P<name>password|passwd|token)=[^\s&'\"]+", re.IGNORECASE)


def _key(match: re.Match[str]) -> str:
    return f"ssk_{match['key_id']}_***" if match["key_id"] else "ssk_***"


def _credentials(match: re.Match[str]) -> str:
    if match["password"] is None:
        return f"{match['scheme']}***@"  # a token alone
    return f"{match['scheme']}{match['user']}:***@"


def scrub(text: str) -> str:
    """``text`` without API key secrets or URL credentials."""
    if "ssk_" in text:
        text = _API_KEY.sub(_key, text)
    if "@" in text:
        text = _URL_CREDENTIALS.sub(_credentials, text)
    if "=" in text:
        text = _PASSWORD_PARAMETER.sub(lambda m: f"{m['name']}=***", text)
    return text


_PLAIN = frozenset({int, float, bool, type(None)})  # exactly these types: nothing to scrub


def _scrubbed(value: Any) -> Any:
    if type(value) in _PLAIN:  # most fields of most lines (every access line's status and ms): checked first
        return value
    if isinstance(value, str):
        return scrub(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {k: _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrubbed(v) for v in value]
    return scrub(repr(value))  # what the renderers would show of it


@functools.lru_cache(maxsize=4096)  # field names come from the code: a few hundred at most
def _secret(field: str) -> bool:
    return field.lower() in _SECRET_FIELDS


def redact(_logger: object, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """The structlog processor: after exceptions are formatted, before rendering."""
    for field, value in event.items():
        if field.startswith("_"):
            continue  # ProcessorFormatter's own (the stdlib record)
        event[field] = "[redacted]" if _secret(field) else _scrubbed(value)
    return event


def outline(error: BaseException) -> str:
    """The traceback of ``error`` and what caused it, with each exception's type but not its message: a
    message may quote the request (``invalid literal for int(): '<body text>'``)."""
    parts: list[str] = []
    current: BaseException | None = error
    while current is not None and len(parts) < 10:
        kind = type(current)
        frames = "".join(traceback.format_tb(current.__traceback__))
        parts.append(f"{frames}{kind.__module__}.{kind.__qualname__}\n")
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return "\nwhich caused:\n".join(reversed(parts))


def configure_logging(log_format: str = "console", level: str = "info") -> None:
    renderer = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    stamped = [structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True)]
    finished = [structlog.processors.format_exc_info, redact, renderer]
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *stamped, *finished],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # line and newline in one write: print() made two syscalls of each line (an access line a request)
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    libraries = logging.StreamHandler(sys.stderr)
    libraries.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *stamped],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *finished],
        )
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), handlers=[libraries])
