"""The one typed, frozen configuration object, built once at start-up.

`model` holds its shape (sections, defaults, bounds), `load` reads it from
`config.yaml` and the environment and applies the rules a type cannot state.
"""

from processor.config.load import ENV_PREFIX, load_config
from processor.config.model import (
    HEADROOM_BYTES,
    Config,
    DedupConfig,
    IngressConfig,
    KafkaConfig,
    LoggingConfig,
    ReplayConfig,
    Route,
    RoutingConfig,
    TopicsConfig,
    WorkerConfig,
)

__all__ = [
    "ENV_PREFIX",
    "HEADROOM_BYTES",
    "Config",
    "DedupConfig",
    "IngressConfig",
    "KafkaConfig",
    "LoggingConfig",
    "ReplayConfig",
    "Route",
    "RoutingConfig",
    "TopicsConfig",
    "WorkerConfig",
    "load_config",
]
