"""structlog set-up: JSON lines in production, a console renderer for humans; keys never logged."""

from __future__ import annotations

import logging
import sys

import structlog

_SECRET_FIELDS = {"authorization", "api_key", "key", "secret"}


def _redact(_logger: object, _name: str, event: dict) -> dict:
    for field in _SECRET_FIELDS & event.keys():
        event[field] = "[redacted]"
    return event


def configure_logging(log_format: str = "console", level: str = "info") -> None:
    renderer = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, format="%(name)s %(message)s")
