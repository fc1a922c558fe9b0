"""structlog set-up: JSON lines in production, key=value on a terminal.

Every process calls `configure_logging` once at start-up; modules then take a
logger with `structlog.get_logger(__name__)` and bind the delivery id, topic,
partition and offset where they exist. Events are named `noun.verb`
(`batch.committed`, `ingress.rejected`).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

from processor.config import LoggingConfig

__all__ = ["configure_logging"]


def configure_logging(config: LoggingConfig, *, stream: TextIO | None = None) -> None:
    """Route structlog and the standard library (aiokafka, aiohttp) to one stream."""
    out = stream if stream is not None else sys.stderr
    level = logging.getLevelName(config.level)
    as_json = config.format == "json" or (config.format == "auto" and not out.isatty())

    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.types.Processor
    if as_json:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka logs every reconnect attempt at INFO/WARNING; keep its noise out of INFO.
    logging.getLogger("aiokafka").setLevel(max(level, logging.WARNING))
