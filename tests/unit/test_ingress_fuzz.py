"""The ingress over generated requests: whatever arrives, the answer is documented JSON,
never a 5xx but the 503, and the log holds neither a body byte nor a traceback.

Bodies are arbitrary bytes, JSON nested past msgspec's recursion limit, invalid UTF-8
inside strings, huge numbers and near-valid deliveries, each carrying MARKER; they are
sent with every Content-Type, Content-Encoding and signature case the ingress tells
apart. Deterministic (derandomized, no example database), so CI sees the same examples.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from dataclasses import dataclass

import msgspec
import pytest
from aiokafka.errors import KafkaConnectionError
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from processor.ingress.signing import sign_hmac_sha256
from tests.ingress_harness import SECRET, RecordingPublisher, Serve, Served, captured_logs
from tests.properties import examples

MARKER = b"FUZZ-MARKER-93c1d7"

FUZZ = settings(
    max_examples=examples(150),
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Everything but 202 and the documented 503 is the sender's to fix (408 cannot happen
# here: every body is sent at once).
DOCUMENTED = {202, 400, 401, 413, 415, 503}
LIMIT = 16_384


def _envelope(data: bytes, *, id_: bytes = b'"whd_fuzz"') -> bytes:
    return b'{"id": ' + id_ + b', "event": "integration.updated", "data": ' + data + b"}"


def _nested(value: bytes) -> bytes:
    return _envelope(b'{"uid": "u", "m": "' + MARKER + b'", "x": ' + value + b"}")


arbitrary = st.tuples(st.binary(max_size=200), st.binary(max_size=200)).map(
    lambda parts: parts[0] + MARKER + parts[1]
)
# Shallow, around msgspec's recursion limit (about 1,000 levels), and far past it.
deep = st.one_of(
    st.integers(min_value=1, max_value=100),
    st.integers(min_value=990, max_value=1100),
    st.integers(min_value=1100, max_value=5000),
).flatmap(
    lambda depth: st.sampled_from(
        [_nested(b"[" * depth + b"]" * depth), _nested(b'{"a": ' * depth + b"1" + b"}" * depth)]
    )
)
oversize = st.integers(min_value=LIMIT - 200, max_value=LIMIT + 200).map(
    lambda size: _envelope(b'{"uid": "u", "pad": "' + MARKER + b"p" * size + b'"}')
)
bad_utf8 = st.sampled_from(
    [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf"]
).map(lambda bad: _envelope(b'{"uid": "u", "provider": "' + MARKER + bad + b'"}'))
huge_numbers = st.integers(min_value=1, max_value=5000).flatmap(
    lambda digits: st.sampled_from(
        [
            _envelope(b'{"uid": "u", "m": "' + MARKER + b'", "n": ' + b"9" * digits + b"}"),
            _envelope(b'{"uid": "' + MARKER + b'"}', id_=b"1" * digits),
            _envelope(
                b'{"uid": "u", "m": "' + MARKER + b'", "f": 1e' + b"9" * min(digits, 400) + b"}"
            ),
        ]
    )
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
near_valid = st.builds(
    lambda id_, event, uid, extra: json.dumps(
        {"id": id_, "event": event, "data": {"uid": uid, "alias": MARKER.decode(), "x": extra}}
    ).encode(),
    st.one_of(st.just("whd_1"), st.text(max_size=300)),
    st.one_of(st.just("integration.updated"), st.text(max_size=20)),
    st.one_of(st.just("user_1"), st.text(max_size=300)),
    json_values,
)
BODIES = st.one_of(arbitrary, deep, bad_utf8, huge_numbers, near_valid, oversize)

# Repeats weigh the draw towards requests that get as far as the body checks.
CONTENT_TYPES = [
    *["application/json"] * 6,
    "application/json; charset=utf-8",
    "application/cloudevents+json",
    "text/plain",
    "application/x-www-form-urlencoded",
    None,
]
# How the body goes over the wire: (Content-Encoding header, how it is encoded).
ENCODINGS = [
    *[(None, "plain")] * 5,
    ("identity", "plain"),
    *[("gzip", "gzip")] * 2,
    ("deflate", "deflate"),
    ("gzip", "plain"),  # says gzip, is not
    ("deflate", "plain"),
    ("gzip", "gzip-truncated"),
    ("br", "plain"),
    ("zstd", "plain"),
    ("gzip, gzip", "gzip"),
    ("x-custom", "plain"),
]
SIGNATURES = [*["valid"] * 6, "other-secret", "missing", "not-hex"]


class _Data(msgspec.Struct):
    uid: str


class Envelope(msgspec.Struct):
    """The keys every accepted delivery must have; other fields are skipped, as the worker does."""

    id: str
    event: str
    data: _Data


@dataclass(frozen=True)
class Case:
    body: bytes
    content_type: str | None
    encoding: tuple[str | None, str]
    signature: str
    kafka_down: bool

    def wire_body(self) -> bytes:
        how = self.encoding[1]
        if how == "gzip":
            return gzip.compress(self.body)
        if how == "gzip-truncated":
            return gzip.compress(self.body)[:-6]
        if how == "deflate":
            return zlib.compress(self.body)
        return self.body

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.content_type is not None:
            headers["Content-Type"] = self.content_type
        if self.encoding[0] is not None:
            headers["Content-Encoding"] = self.encoding[0]
        if self.signature == "valid":
            headers["X-Webhook-Signature"] = sign_hmac_sha256(self.body, SECRET)
        elif self.signature == "other-secret":
            headers["X-Webhook-Signature"] = sign_hmac_sha256(self.body, "another-secret-of-16+")
        elif self.signature == "not-hex":
            headers["X-Webhook-Signature"] = "zz" + MARKER.decode()
        return headers


# Every header case the ingress tells apart, over any body.
ANY_REQUEST = st.builds(
    Case,
    body=BODIES,
    content_type=st.sampled_from(CONTENT_TYPES),
    encoding=st.sampled_from(ENCODINGS),
    signature=st.sampled_from(SIGNATURES),
    kafka_down=st.booleans(),
)
# Signed JSON in an encoding the ingress takes: every example reaches the body's decoding.
SIGNED_JSON = st.builds(
    Case,
    body=BODIES,
    content_type=st.just("application/json"),
    encoding=st.sampled_from(
        [(None, "plain"), ("identity", "plain"), ("gzip", "gzip"), ("deflate", "deflate")]
    ),
    signature=st.just("valid"),
    kafka_down=st.booleans(),
)


@pytest.fixture
async def target(serve: Serve) -> tuple[Served, RecordingPublisher]:
    """One ingress for all examples: starting one per example would cost more than the test."""
    publisher = RecordingPublisher()
    return await serve(publisher=publisher, max_body_bytes=LIMIT), publisher


@FUZZ
@given(case=ANY_REQUEST)
async def test_any_request_gets_documented_json_and_logs_no_body_byte(
    target: tuple[Served, RecordingPublisher], case: Case
) -> None:
    await check_answer(target, case)


@FUZZ
@given(case=SIGNED_JSON)
async def test_any_signed_body_gets_documented_json_and_logs_no_body_byte(
    target: tuple[Served, RecordingPublisher], case: Case
) -> None:
    await check_answer(target, case)


async def check_answer(target: tuple[Served, RecordingPublisher], case: Case) -> None:
    """Post `case`; the answer is documented JSON, a 202 published exactly the signed JSON
    (UTF-8, with the envelope's keys, as the worker reads it), and the log is clean."""
    client, publisher = target
    publisher.records.clear()
    publisher.outcome = KafkaConnectionError() if case.kafka_down else None
    buffer = io.StringIO()
    with captured_logs(buffer):
        response = await client.post(
            "/webhooks",
            data=case.wire_body(),
            headers=case.headers(),
            skip_auto_headers={"Content-Type"},
        )
        payload = await response.json(content_type=None)
    text = buffer.getvalue()
    event(f"{response.status} {payload.get('error', '')}")  # --hypothesis-show-statistics

    assert response.status in DOCUMENTED, (response.status, payload)
    assert response.headers["Content-Type"] == "application/json"
    if response.status == 202:
        assert set(payload) == {"id"}
        [record] = publisher.records
        assert record.value == case.body  # the JSON as signed, whatever the encoding
        record.value.decode("utf-8")
        envelope = msgspec.json.decode(record.value, type=Envelope)
        assert payload["id"] == envelope.id
        assert record.key == envelope.data.uid.encode()
        assert case.encoding[0] in (None, "identity", "gzip", "deflate")
    else:
        assert set(payload) == {"error", "detail"}
        assert all(isinstance(value, str) and value for value in payload.values())
        assert len(publisher.records) == (1 if response.status == 503 else 0)
    if response.status == 503:
        assert response.headers["Retry-After"]
    assert MARKER.decode() not in text
    assert "Traceback" not in text
    assert '"level":"error"' not in text
