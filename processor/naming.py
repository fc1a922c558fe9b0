"""Topic names: made from route templates and statuses, checked against Kafka's rules. No I/O.

Both the configuration (which refuses a route that could name an illegal topic, at
start-up, with the key to fix) and routing (which names the topics) use these.
"""

from __future__ import annotations

import re
from functools import lru_cache
from string import Formatter
from typing import Final

__all__ = ["MAX_TOPIC_LENGTH", "illegal_topic", "normalise_status", "uses_status"]

# Kafka's own limits (org.apache.kafka.common.internals.Topic).
MAX_TOPIC_LENGTH: Final = 249
_LEGAL_TOPIC: Final = re.compile(r"[a-zA-Z0-9._-]+")
_NOT_TOPIC_CHARS: Final = re.compile(r"[^a-z0-9]+")


@lru_cache(maxsize=1024)
def normalise_status(status: str) -> str:
    """A status as a topic-name part: "PARTIALLY SYNCED" -> "partially_synced".

    Lower case; every run of characters other than a-z and 0-9 becomes one `_`;
    no `_` at either end. Empty when the status has no letter or digit.
    """
    return _NOT_TOPIC_CHARS.sub("_", status.lower()).strip("_")


def uses_status(template: str) -> bool:
    """Whether a route's topic template names its topics by `{status}`."""
    return any(field == "status" for _, field, _, _ in Formatter().parse(template))


def illegal_topic(name: str) -> str | None:
    """Why Kafka would refuse `name` as a topic, or None when it is legal."""
    if not name or name in (".", ".."):
        return "a topic name must have a character other than '.'"
    if len(name) > MAX_TOPIC_LENGTH:
        return f"a topic name has at most {MAX_TOPIC_LENGTH} characters, this one {len(name)}"
    if not _LEGAL_TOPIC.fullmatch(name):
        return "a topic name may only hold a-z, A-Z, 0-9, '.', '_' and '-'"
    return None
