"""structlog set-up: JSON lines in production, key=value on a terminal.

Every process calls `configure_logging` once at start-up; modules then take a
logger with `structlog.get_logger(__name__)` and pass the delivery id, topic,
partition and offset as keys of the line where they exist (`delivery_id=`,
`topic=`, ...). Events are named `noun.verb` (`batch.committed`, `ingress.rejected`).
aiokafka's per-attempt retry lines stay out above DEBUG (processor.kafka.connectivity).

Our own lines take structlog's native path (render, write, no standard-library
record in between): the ingress writes one per request, and this path costs a few
microseconds instead of twenty. Libraries' standard-library logs (aiokafka,
aiohttp) are rendered the same way by a formatter on the root logger.
"""

from __future__ import annotations

import io
import logging
import sys
from typing import Any, Final, TextIO, cast

import msgspec
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from processor.config import LoggingConfig
from processor.kafka.connectivity import RetryNoiseFilter

__all__ = ["configure_logging"]

# Anything msgspec cannot encode (an exception, a path) is logged as its repr.
_ENCODER = msgspec.json.Encoder(enc_hook=repr)


def _to_json(event: EventDict, **_: Any) -> str:
    return _ENCODER.encode(event).decode()


def _logger_name(logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
    """The module that logged, from `get_logger(__name__)` or a stdlib record."""
    record = event.get("_record")
    name = record.name if record is not None else getattr(logger, "name", None)
    if name:
        event.setdefault("logger", name)
    return event


def configure_logging(config: LoggingConfig, *, stream: TextIO | None = None) -> None:
    """Send structlog and the standard library (aiokafka, aiohttp) to one stream,
    standard error by default (whatever sys.stderr is when a line is written)."""
    out = stream if stream is not None else _STDERR
    level = logging.getLevelName(config.level)
    as_json = config.format == "json" or (config.format == "auto" and not out.isatty())

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if as_json:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer(serializer=_to_json)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)

    _OUTPUT.stream = out
    structlog.configure(
        processors=[*shared, renderer],
        logger_factory=_stream_logger,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    if level > logging.DEBUG:
        handler.addFilter(RetryNoiseFilter())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka logs routine steps at INFO and each retry at WARNING or ERROR: above
    # DEBUG, only its warnings and errors pass, less the retry lines (Connectivity
    # reports the outage they describe once).
    logging.getLogger("aiokafka").setLevel(max(level, logging.WARNING))


class _CurrentStderr(io.TextIOBase):
    """sys.stderr as it is at each write, not as it was when logging was configured: a
    test that captures it, then restores it, leaves no logger writing to a closed one."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


_STDERR: Final = cast(TextIO, _CurrentStderr())


class _Output:
    """Where lines go. Loggers are cached on first use (a hot-path saving), so they
    look the stream up here at each write and a later configure_logging still
    redirects them."""

    stream: TextIO = sys.stderr


_OUTPUT = _Output()


class _StreamLogger:
    """structlog's final step: one rendered line to the configured stream."""

    def __init__(self, name: str | None) -> None:
        self.name = name

    def msg(self, message: str) -> None:
        stream = _OUTPUT.stream
        stream.write(message + "\n")
        stream.flush()

    debug = info = warning = warn = error = critical = exception = fatal = msg


def _stream_logger(*args: Any) -> _StreamLogger:
    return _StreamLogger(args[0] if args else None)
