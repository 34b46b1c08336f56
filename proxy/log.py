"""Operational logging: structlog JSON lines on stderr, for Sluice's own events and for the
libraries' (aiohttp, asyncio) alike.

Log ids, counts, hashes and entity types here; prompt text and credentials never. An
exception is logged as its type only: its message and traceback can quote what it failed on.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from structlog.typing import EventDict, WrappedLogger

_TIMESTAMP = structlog.processors.TimeStamper(fmt="iso", utc=True)


def without_exception_details(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Keep the exception's type, drop its message, traceback and stack: an exception raised
    on a request can carry the request's content in its text."""
    exc_info: Any = event.pop("exc_info", None)
    event.pop("exception", None)
    event.pop("stack_info", None)
    if exc_info is True:
        exc_info = sys.exc_info()
    if isinstance(exc_info, BaseException):
        event.setdefault("error_type", type(exc_info).__name__)
    elif isinstance(exc_info, tuple) and exc_info and exc_info[0] is not None:
        event.setdefault("error_type", exc_info[0].__name__)
    return event


def configure_logging(level: str = "info") -> None:
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _TIMESTAMP,
            without_exception_details,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # The standard library's loggers (aiohttp's "Error handling request", asyncio's "Task
    # exception was never retrieved") print tracebacks unless told otherwise.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                _TIMESTAMP,
                without_exception_details,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(numeric, logging.WARNING))
