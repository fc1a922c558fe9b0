"""The connection settings every aiokafka client shares, derived from KafkaConfig.

The ingress producer, the worker's consumer and producer, and the admin client all
reach the same cluster the same way; building their keyword arguments in one place
keeps TLS and SASL handling from drifting between them.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context

from processor.config import ConfigError, KafkaConfig

__all__ = ["BrokerUnavailable", "client_options"]


class BrokerUnavailable(Exception):
    """No broker answered at start-up; the message names the address and the fix."""


def client_options(config: KafkaConfig) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient.

    Reads the TLS files once, here, so a wrong path fails at start-up with the key
    to fix rather than on the first connection.
    """
    options: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_servers,
        "client_id": config.client_id,
        "security_protocol": config.security_protocol,
        "request_timeout_ms": config.request_timeout_ms,
    }
    if config.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = _ssl_context(config)
    if config.security_protocol.startswith("SASL"):
        # aiokafka takes the SCRAM credentials through the PLAIN-named arguments too.
        options["sasl_mechanism"] = config.sasl_mechanism
        options["sasl_plain_username"] = config.sasl_username
        options["sasl_plain_password"] = config.sasl_password
    return options


def _ssl_context(config: KafkaConfig) -> ssl.SSLContext:
    """Verifies the broker (system CAs unless kafka.ssl_cafile); client cert if given."""
    if config.ssl_keyfile and not config.ssl_certfile:
        raise ConfigError("kafka.ssl_keyfile is set without kafka.ssl_certfile: set both")
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=config.ssl_cafile,
            certfile=config.ssl_certfile,
            keyfile=config.ssl_keyfile,
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"kafka.ssl_cafile/ssl_certfile/ssl_keyfile cannot be loaded: {exc}; "
            "check the paths and that the files are PEM"
        ) from None
    return context
