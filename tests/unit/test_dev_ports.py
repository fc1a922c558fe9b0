"""`processor dev` refuses ports it would take twice before it starts anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from processor.config import Config
from processor.devtools.dev import DevOptions, _check_ports
from processor.devtools.ports import free_port
from processor.errors import DevConflict


def options(**ports: int) -> DevOptions:
    chosen = {"ingress_port": free_port(), "management_port": free_port()}
    chosen |= {"metrics_port": free_port()} | ports
    return DevOptions(
        config_path=None, workers=1, kafka_port=free_port(), broker_dir=Path("."), **chosen
    )


def test_a_port_asked_for_twice_is_refused_naming_both_users_and_the_option() -> None:
    port = free_port()
    with pytest.raises(
        DevConflict,
        match=rf"port {port} is asked for twice, for the ingress "
        r"and for the ingress's probes: pick another with --management-port",
    ):
        _check_ports(Config(), options(ingress_port=port, management_port=port))


def test_distinct_free_ports_pass() -> None:
    _check_ports(Config(), options())
