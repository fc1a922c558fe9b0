"""The routing job every peer program runs: its command line, its start signal, its rule.

Standard library only, so that each peer's virtualenv can import it (a program run
as `python apps/X.py` finds this module beside it). The rule is the worker's
(`processor.routing`) for what the benchmark's deliveries exercise: a JSON object
with `id` (`whd_...`), `event` (`<category>.<action>`), an RFC 3339 `timestamp` with a
timezone and `data.uid`; `integration.*` events go to `<routes>` named by the
normalised `data.status` (a listed status, else `other`), valid events of other
categories to `--unrouted`, anything else to `--dlq` with `error.class` and
`error.message` headers. Key: `data.uid`, or the raw key for the DLQ. The value is
never touched: every program produces the bytes it read.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Final

STATUSES: Final = (
    "queued",
    "ongoing",
    "completed",
    "failed",
    "active",
    "inactive",
    "error",
    "partially_synced",
)
OTHER_STATUS: Final = "other"
STATUS_CATEGORY: Final = "integration"
MAX_IDENTIFIER: Final = 256  # as processor.events: ids travel in keys and headers
_DELIVERY_ID: Final = re.compile(r"whd_\S+")
_EVENT: Final = re.compile(r"[a-z0-9_]+\.[a-z0-9_]+")
_NOT_TOPIC: Final = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True, slots=True)
class Job:
    """Where to read, where to write, how: the same arguments for every program."""

    bootstrap: str
    raw: str
    group: str
    routes: str  # a topic template with {status}
    unrouted: str
    dlq: str
    guarantee: str  # at_least_once | exactly_once
    batch: int  # records per fetch, as the worker's max_batch_records

    def status_topics(self) -> dict[str, str]:
        return {s: self.routes.format(status=s) for s in (*STATUSES, OTHER_STATUS)}

    def outputs(self) -> list[str]:
        return [*self.status_topics().values(), self.unrouted, self.dlq]


def parse_job(
    description: str, *, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> tuple[Job, argparse.Namespace]:
    """The job from the command line, and the values of a program's `extra` arguments."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--raw", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--routes", required=True, help="topic template, e.g. integration.{status}")
    parser.add_argument("--unrouted", required=True)
    parser.add_argument("--dlq", required=True)
    parser.add_argument(
        "--guarantee", choices=("at_least_once", "exactly_once"), default="at_least_once"
    )
    parser.add_argument("--batch", type=int, default=2000)
    if extra is not None:
        extra(parser)
    args = vars(parser.parse_args())
    job = Job(**{name: args.pop(name) for name in Job.__dataclass_fields__})
    return job, argparse.Namespace(**args)


def wait_for_start() -> None:
    """Say `ready` (imports done, nothing connected yet) and wait for the word to go:
    the benchmark starts its clock and CPU count there, not at interpreter start."""
    print("ready", flush=True)
    if not sys.stdin.readline():
        raise SystemExit("the benchmark closed stdin before the start")


@dataclass(frozen=True, slots=True)
class Routed:
    topic: str
    key: bytes | None
    headers: list[tuple[str, bytes]]


class Invalid(Exception):
    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = message


class Router:
    """`route(value, key)` -> the one destination of a raw record; never raises.

    `loads` is the JSON decoder the program's framework uses itself.
    """

    def __init__(self, job: Job, *, loads: Callable[[bytes], Any] = json.loads) -> None:
        self._by_status = job.status_topics()
        self._other = self._by_status[OTHER_STATUS]
        self._unrouted = job.unrouted
        self._dlq = job.dlq
        self._loads = loads

    def route(self, value: bytes | None, key: bytes | None) -> Routed:
        try:
            return self._route(value)
        except Invalid as exc:
            headers = [
                ("error.class", exc.error_class.encode()),
                ("error.message", exc.message.encode("utf-8", "backslashreplace")),
            ]
            return Routed(self._dlq, key, headers)

    def _route(self, value: bytes | None) -> Routed:
        if not value:
            raise Invalid("DecodeError", "record value is empty or absent")
        try:
            document = self._loads(value)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
            raise Invalid("DecodeError", str(exc)) from None
        if not isinstance(document, dict):
            raise Invalid("ValidationError", "Expected `object` - at `$`")
        delivery_id = _identifier(document.get("id"), "id")
        if _DELIVERY_ID.fullmatch(delivery_id) is None:
            raise Invalid("ValidationError", "Expected `id` as `whd_...` - at `$.id`")
        event = _identifier(document.get("event"), "event")
        if _EVENT.fullmatch(event) is None:
            raise Invalid("ValidationError", "Expected `<category>.<action>` - at `$.event`")
        if not _aware(document.get("timestamp")):
            raise Invalid("ValidationError", "Expected an aware datetime - at `$.timestamp`")
        data = document.get("data")
        if not isinstance(data, dict):
            raise Invalid("ValidationError", "Expected `object` - at `$.data`")
        uid = _identifier(data.get("uid"), "data.uid").encode()
        headers = [("delivery-id", delivery_id.encode()), ("event", event.encode()), ("uid", uid)]
        if event.partition(".")[0] != STATUS_CATEGORY:
            return Routed(self._unrouted, uid, headers)
        status = _identifier(data.get("status"), "data.status")
        normal = _normalise(status)
        if not normal:
            raise Invalid("RoutingError", f"status {status[:80]!r} has no letter or digit")
        headers.append(("status", status.encode()))
        return Routed(self._by_status.get(normal, self._other), uid, headers)


def _identifier(value: object, path: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_IDENTIFIER:
        raise Invalid("ValidationError", f"Expected `str` of 1 to {MAX_IDENTIFIER} - at `$.{path}`")
    return value


def _aware(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


@lru_cache(maxsize=1024)
def _normalise(status: str) -> str:
    """As processor.naming.normalise_status: "PARTIALLY SYNCED" -> "partially_synced"."""
    return _NOT_TOPIC.sub("_", status.lower()).strip("_")
