"""The errors a user of `processor` sees: one base class, each message saying what to do.

The command line catches ProcessorError and prints its message; anything else is a
bug and keeps its traceback. `retriable` tells an operator's eye (and a caller) a
blip that heals by itself from a setting that someone must change.
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "BrokerUnavailable",
    "ConfigError",
    "ContractError",
    "DevConflict",
    "DevToolsMissing",
    "ProcessorError",
    "TopicsMissing",
]


class ProcessorError(Exception):
    """Something a user can fix; the message names it and the fix."""

    retriable = False


class ConfigError(ProcessorError):
    """The configuration cannot be used; the message names the key and the fix."""


class ContractError(ProcessorError):
    """A contract file (`processor schema --check`) cannot be read or compared."""


class BrokerUnavailable(ProcessorError):
    """No broker answered in time; the message names the address and what to check."""

    retriable = True


class TopicsMissing(ProcessorError):
    """The cluster answers but lacks topics the pipeline needs: `processor topics create`."""


class BrokerError(ProcessorError):
    """The local development broker cannot be fetched, started or stopped."""


class DevConflict(ProcessorError):
    """`processor dev` would collide with another one, or a port it needs is taken."""


class DevToolsMissing(ProcessorError):
    """A development command (`broker`, `dev`) ran where `processor.devtools` is absent."""
