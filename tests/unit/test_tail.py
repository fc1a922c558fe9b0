"""What `processor tail` shows of a record: decoded with its topic's contract, one line
or one JSON object, filtered by uid and event; no broker needed."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from aiokafka import ConsumerRecord

from processor.config import Config, load_config
from processor.ops.tail import RecordReader, Shown, TailOptions, text_line
from tests.deliveries import SPEC_EXAMPLE, integration_event

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(ROOT / "config.yaml", env={})


def record(
    topic: str,
    value: bytes | None,
    *,
    key: bytes | None = b"user_123",
    headers: list[tuple[str, bytes]] | None = None,
    timestamp: int = 1_740_000_000_000,
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic, 2, 41, timestamp, 0, key, value, None, 0, 0, headers or [])


def show(config: Config, rec: ConsumerRecord[bytes, bytes]) -> Shown:
    return RecordReader(config, rec.topic).show(rec)


def test_a_derived_record_is_decoded_with_its_contract(config: Config) -> None:
    received = [("received-at", b"2025-02-19T12:00:00.123Z")]
    shown = show(config, record("integration.status.active", SPEC_EXAMPLE, headers=received))

    assert (shown.delivery_id, shown.event, shown.uid, shown.status) == (
        "whd_abc123def456",
        "integration.created",
        "user_123",
        "active",
    )
    assert shown.invalid is None
    assert text_line(shown) == (
        "2025-02-19T12:00:00.123Z  p2@41  whd_abc123def456  integration.created  "
        "uid=user_123  status=active"
    )


def test_json_has_the_value_on_one_line_and_every_field(config: Config) -> None:
    shown = show(config, record("integration.status.active", SPEC_EXAMPLE))

    line = msgspec.json.encode(shown).decode()
    document = json.loads(line)

    assert "\n" not in line
    assert document["value"] == json.loads(SPEC_EXAMPLE)
    assert document["timestamp"] == "2025-02-19T21:20:00.000Z"
    assert document["key"] == "user_123"
    assert (document["partition"], document["offset"]) == (2, 41)
    assert document["value_text"] is None


def test_a_dlq_record_shows_its_error_headers_and_the_bytes_as_text(config: Config) -> None:
    headers = [
        ("event", b"integration.updated"),
        ("error.class", b"DecodeError"),
        ("error.message", b"JSON is malformed: invalid character (byte 0)"),
        ("source.topic", b"webhooks.raw"),
    ]
    shown = show(config, record("webhooks.dlq", b"\x1b[31mnot json", headers=headers))

    assert (shown.error_class, shown.event, shown.invalid) == (
        "DecodeError",
        "integration.updated",
        None,
    )
    assert shown.value is None
    assert shown.value_text == "\x1b[31mnot json"
    line = text_line(shown)
    assert line.endswith("-  integration.updated  uid=-  DecodeError: JSON is malformed: "
                         "invalid character (byte 0)")  # fmt: skip


def test_a_dlq_record_a_replay_sent_back_says_how_often_it_was_replayed(config: Config) -> None:
    headers = [
        ("error.class", b"ValidationError"),
        ("error.message", b"Object missing required field `timestamp`"),
        ("replay-of", b"webhooks.dlq/0/7"),
        ("replay-count", b"2"),
    ]
    line = text_line(show(config, record("webhooks.dlq", b"{}", headers=headers)))

    assert "  replayed=2  ValidationError: " in line


def test_a_record_that_breaks_its_topics_contract_says_why(config: Config) -> None:
    broken = integration_event(index=1, uid="u", status="ok").replace(b'"ok"', b"3")
    shown = show(config, record("integration.status.other", broken))

    assert shown.invalid == "ValidationError: Expected `str`, got `int` - at `$.data.status`"
    assert text_line(shown).endswith("invalid: ValidationError: Expected `str`, got `int` - at "
                                     "`$.data.status`")  # fmt: skip


def test_a_raw_record_needs_only_what_the_ingress_checks(config: Config) -> None:
    shown = show(
        config, record("webhooks.raw", b'{"id": "x1", "event": "e", "data": {"uid": "u"}}')
    )

    assert (shown.delivery_id, shown.event, shown.uid, shown.invalid) == ("x1", "e", "u", None)


def test_a_topic_the_config_does_not_produce_is_read_as_any_delivery(config: Config) -> None:
    shown = show(config, record("someone.elses", integration_event(index=7, uid="u7", status="x")))

    assert (shown.delivery_id, shown.uid, shown.status, shown.invalid) == ("whd_00000007", "u7",
                                                                          None, None)  # fmt: skip


def test_control_characters_never_reach_the_terminal(config: Config) -> None:
    headers = [("error.class", b"Bad\x1b[2J"), ("error.message", b"line\nbreak")]
    line = text_line(show(config, record("webhooks.dlq", None, headers=headers)))

    assert "\x1b" not in line
    assert "\n" not in line
    assert "Bad\\x1b[2J: line\\nbreak" in line


def test_a_record_without_timestamp_or_key_still_shows(config: Config) -> None:
    shown = show(config, record("webhooks.dlq", None, key=None, timestamp=-1))

    assert (shown.timestamp, shown.key, shown.value, shown.value_text) == (None, None, None, None)
    assert text_line(shown).startswith("-  p2@41  -  -  uid=-")


@pytest.mark.parametrize(
    ("options", "kept"),
    [
        (TailOptions(topic="t"), True),
        (TailOptions(topic="t", uid="user_123"), True),
        (TailOptions(topic="t", uid="user_9"), False),
        (TailOptions(topic="t", event="integration.created"), True),
        (TailOptions(topic="t", event="integration.*"), True),
        (TailOptions(topic="t", event="wallet.*"), False),
        (TailOptions(topic="t", uid="user_123", event="*.updated"), False),
    ],
)
def test_filters_match_uid_exactly_and_event_as_a_pattern(
    config: Config, options: TailOptions, kept: bool
) -> None:
    shown = show(config, record("integration.status.active", SPEC_EXAMPLE))

    assert options.keep(shown) is kept


def test_uid_filter_falls_back_to_the_key_when_the_value_has_none(config: Config) -> None:
    shown = show(config, record("webhooks.dlq", b"junk", key=b"user_5"))

    assert TailOptions(topic="t", uid="user_5").keep(shown)
