"""The local broker's JVM command line: Kafka's flags, or KAFKA_JVM_PERFORMANCE_OPTS'."""

from __future__ import annotations

from pathlib import Path

import pytest

from processor.devtools.node import Node


def java_command(tmp_path: Path) -> list[str]:
    node = Node(directory=tmp_path, node_id=1, port=1, controller_port=2)
    return node._java(tmp_path, "kafka.Kafka")


def test_the_jvm_gets_kafkas_own_flags_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAFKA_JVM_PERFORMANCE_OPTS", raising=False)
    command = java_command(tmp_path)
    assert "-XX:+UseG1GC" in command
    assert "-Xmx512m" in command


def test_kafka_jvm_performance_opts_replaces_them_as_in_kafkas_scripts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_JVM_PERFORMANCE_OPTS", "-XX:+UseSerialGC -XX:TieredStopAtLevel=1")
    command = java_command(tmp_path)
    assert "-XX:+UseG1GC" not in command
    assert command[command.index("-Xmx512m") + 1 : command.index("-Xmx512m") + 3] == [
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
    ]
