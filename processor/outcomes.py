"""Where a record went: its derived topic (`routed`), `webhooks.unrouted`, or the DLQ.

A leaf: the worker's metrics and the benchmarks count by these without importing the
router (the ingress, which counts no outcome, loads no routing code through metrics).
"""

from __future__ import annotations

from typing import Final, Literal, get_args

__all__ = ["OUTCOMES", "Outcome"]

Outcome = Literal["routed", "unrouted", "dlq"]
OUTCOMES: Final[tuple[Outcome, ...]] = get_args(Outcome)
