"""The one module that uses aiokafka's internals is for one aiokafka version.

If these fail after an upgrade, re-read the aiokafka source behind each function of
processor/kafka/aiokafka_internals.py (and the workarounds that call them: is
aiokafka#1017 fixed? tests/integration/test_producer_renewal.py says) before changing
WRITTEN_FOR.
"""

from __future__ import annotations

import ast
from pathlib import Path

import aiokafka
import pytest
from aiokafka.producer.sender import Sender

from processor.kafka import aiokafka_internals
from processor.kafka.aiokafka_internals import WRITTEN_FOR, check_layout, kip447_missing

PROCESSOR = Path(__file__).resolve().parents[2] / "processor"


def test_the_installed_aiokafka_is_the_one_the_internals_were_written_for() -> None:
    assert aiokafka.__version__ == WRITTEN_FOR


def test_a_missing_internal_stops_the_import_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(Sender, "sender_task")
    with pytest.raises(ImportError, match=r"lacks Sender\.sender_task.*aiokafka_internals"):
        check_layout()


def test_no_other_module_of_processor_reaches_into_aiokafka() -> None:
    """No private attribute of an aiokafka object, and no aiokafka module path beyond
    those its documentation names, outside aiokafka_internals."""
    public_modules = {
        "aiokafka",
        "aiokafka.admin",
        "aiokafka.errors",
        "aiokafka.helpers",
        "aiokafka.partitioner",
        "aiokafka.structs",
        "aiokafka.client",  # AIOKafkaClient, for types and a bootstrap probe
    }
    internals = Path(aiokafka_internals.__file__)
    found = []
    for path in sorted(PROCESSOR.rglob("*.py")):
        if path == internals:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aiokafka"):
                if node.module not in public_modules:
                    found.append(f"{path.name}: from {node.module}")
            elif isinstance(node, ast.Attribute) and node.attr in {
                "_client",
                "_sender",
                "_message_accumulator",
                "_txn_manager",
            }:
                found.append(f"{path.name}:{node.lineno}: .{node.attr}")
    assert found == []


def test_what_of_kip447_a_broker_lacks_is_named_with_what_it_speaks() -> None:
    assert kip447_missing({28: (0, 4), 9: (1, 9)}) == []
    assert kip447_missing({28: (0, 2), 9: (1, 6)}) == [
        "TxnOffsetCommit v3 (it speaks v0-v2)",
        "OffsetFetch v7 (it speaks v1-v6)",
    ]
    assert kip447_missing({}) == [
        "TxnOffsetCommit v3 (it speaks none)",
        "OffsetFetch v7 (it speaks none)",
    ]
