"""The ingress's HTTP decisions, served in-process with a fake publisher: no Kafka.

What the raw topic then holds is tested against a real broker in
tests/integration/test_ingress.py; here `client.publisher.records` stands in for it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import time
from typing import Any

import pytest

from processor.config import Config
from processor.errors import ConfigError
from processor.ingress import app as ingress_app
from processor.ingress.app import run_ingress
from processor.ingress.signing import sign_hmac_sha256
from tests.ingress_harness import (
    OLD_SECRET,
    SECRET,
    RecordingPublisher,
    Serve,
    captured_logs,
    delivery,
    published,
    signed,
)

SW_KEY = b"standard-webhooks-test-key-32byt"
SW_SECRET = "whsec_" + base64.b64encode(SW_KEY).decode()


# --- accepted and refused deliveries ----------------------------------------------------


@pytest.mark.parametrize("signer", [SECRET, OLD_SECRET])
async def test_either_secret_is_accepted_while_rotating(serve: Serve, signer: str) -> None:
    client = await serve(secrets=(SECRET, OLD_SECRET))
    response = await client.post("/webhooks", data=delivery(1), headers=signed(delivery(1), signer))
    assert response.status == 202
    assert published(client) == [delivery(1)]


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing X-Webhook-Signature"),
        ({"X-Webhook-Signature": sign_hmac_sha256(delivery(1), "guess")}, "does not match"),
        ({"X-Webhook-Signature": sign_hmac_sha256(delivery(2), SECRET)}, "does not match"),
        ({"X-Webhook-Signature": "zz" * 32}, "not a hex"),
    ],
    ids=["missing", "wrong-secret", "other-body", "not-hex"],
)
async def test_bad_signature_is_401_and_names_the_problem(
    serve: Serve, headers: dict[str, str], reason: str
) -> None:
    client = await serve()
    response = await client.post(
        "/webhooks", data=delivery(1), headers={"Content-Type": "application/json", **headers}
    )
    assert response.status == 401
    error = await response.json()
    assert error["error"] == "invalid_signature"
    assert reason in error["detail"]


async def test_unset_or_non_json_content_type_is_415(serve: Serve) -> None:
    client = await serve()
    body = delivery(1)
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded"):
        headers = signed(body)
        if content_type is None:
            del headers["Content-Type"]
        else:
            headers["Content-Type"] = content_type
        # skip_auto_headers: aiohttp would otherwise add application/octet-stream.
        response = await client.post(
            "/webhooks", data=body, headers=headers, skip_auto_headers={"Content-Type"}
        )
        assert response.status == 415, content_type
        assert (await response.json())["error"] == "unsupported_media_type"


async def test_structured_json_suffix_is_accepted(serve: Serve) -> None:
    client = await serve()
    headers = signed(delivery(1)) | {"Content-Type": "application/cloudevents+json"}
    assert (await client.post("/webhooks", data=delivery(1), headers=headers)).status == 202


@pytest.mark.parametrize(
    ("body", "error", "names"),
    [
        (b'{"id": "whd_1", "event": ', "malformed_json", "truncated"),
        (b"\xff\xfe not utf-8", "malformed_json", "JSON"),
        (b'{"id": "whd_1", "event": "a.b", "data": {"uid": "\xff"}}', "malformed_json", "UTF-8"),
        (b"[]", "invalid_envelope", "Expected `object`"),
        (b'{"event": "a.b", "data": {"uid": "u"}}', "invalid_envelope", "`id`"),
        (b'{"id": "whd_1", "data": {"uid": "u"}}', "invalid_envelope", "`event`"),
        (b'{"id": "whd_1", "event": "a.b"}', "invalid_envelope", "`data`"),
        (b'{"id": "whd_1", "event": "a.b", "data": {}}', "invalid_envelope", "`uid`"),
        (b'{"id": "whd_1", "event": "a.b", "data": {"uid": 7}}', "invalid_envelope", "$.data.uid"),
        (b'{"id": "whd_1", "event": "a.b", "data": {"uid": ""}}', "invalid_envelope", "$.data.uid"),
        (b'{"id": 1, "event": "a.b", "data": {"uid": "u"}}', "invalid_envelope", "$.id"),
        (
            b'{"id": "whd_1", "event": "a.b", "data": {"uid": "' + b"u" * 257 + b'"}}',
            "invalid_envelope",
            "length <= 256",
        ),
    ],
)
async def test_undecodable_envelope_is_400_and_names_what_is_wrong(
    serve: Serve, body: bytes, error: str, names: str
) -> None:
    client = await serve()
    response = await client.post("/webhooks", data=body, headers=signed(body))
    assert response.status == 400
    payload = await response.json()
    assert payload["error"] == error
    assert names in payload["detail"]
    assert published(client) == []


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


async def test_declared_oversize_body_is_413_before_the_body_is_sent(serve: Serve) -> None:
    client = await serve()
    reader, writer = await client.open_raw()
    try:
        # 100 MiB announced, 100 bytes sent: the answer must not wait for the rest.
        writer.write(
            b"POST /webhooks HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"X-Webhook-Signature: 00\r\nContent-Length: 104857600\r\n\r\n" + b"x" * 100
        )
        await writer.drain()
        async with asyncio.timeout(5):
            status, _, body = await read_response(reader)
    finally:
        writer.close()
    assert status == 413
    assert json.loads(body)["error"] == "body_too_large"


async def test_chunked_body_is_413_as_soon_as_it_passes_the_limit(serve: Serve) -> None:
    client = await serve(max_body_bytes=1024)
    reader, writer = await client.open_raw()
    try:
        writer.write(
            b"POST /webhooks HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        # 1,025 bytes in two chunks and no final chunk: the upload is still open.
        writer.write(b"400\r\n" + b"x" * 1024 + b"\r\n" + b"1\r\nx\r\n")
        await writer.drain()
        async with asyncio.timeout(5):
            status, _, body = await read_response(reader)
    finally:
        writer.close()
    assert status == 413
    assert "1024 bytes" in json.loads(body)["detail"]


async def test_body_at_the_limit_is_accepted(serve: Serve) -> None:
    client = await serve(max_body_bytes=1024)
    body = delivery(1, alias="a" * (1024 - len(delivery(1, alias=""))))
    assert len(body) == 1024
    assert (await client.post("/webhooks", data=body, headers=signed(body))).status == 202


def standard_headers(
    body: bytes, *, msg_id: str = "msg_1", at: float | None = None
) -> dict[str, str]:
    timestamp = str(int(time.time() if at is None else at))
    mac = hmac.new(SW_KEY, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }


@pytest.mark.parametrize(
    ("skew_s", "status"), [(0, 202), (-240, 202), (-301, 401), (301, 401), (-3600, 401)]
)
async def test_standard_webhooks_accepts_fresh_and_refuses_stale_timestamps(
    serve: Serve, skew_s: int, status: int
) -> None:
    client = await serve(signature_scheme="standard-webhooks", secrets=(SW_SECRET,))
    body = delivery(1)
    headers = standard_headers(body, at=time.time() + skew_s)
    response = await client.post("/webhooks", data=body, headers=headers)
    assert response.status == status
    if status == 401:
        assert "tolerance" in (await response.json())["detail"]


async def test_standard_webhooks_refuses_a_signature_for_another_body(serve: Serve) -> None:
    client = await serve(signature_scheme="standard-webhooks", secrets=(SW_SECRET,))
    headers = standard_headers(delivery(2))
    response = await client.post("/webhooks", data=delivery(1), headers=headers)
    assert response.status == 401


async def test_unverified_mode_accepts_unsigned_and_warns(serve: Serve) -> None:
    buffer = io.StringIO()
    with captured_logs(buffer):
        client = await serve(signature_scheme="none", secrets=())
    body = delivery(1)
    headers = {"Content-Type": "application/json"}
    assert (await client.post("/webhooks", data=body, headers=headers)).status == 202
    warnings = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert any(w["event"] == "ingress.unverified" and w["level"] == "warning" for w in warnings)


async def test_refuses_to_start_without_a_secret() -> None:
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET"):
        await run_ingress(Config())


# --- the public port and the management port ------------------------------------------


async def test_the_public_port_serves_deliveries_and_healthz_only(serve: Serve) -> None:
    client = await serve()
    assert (await client.get("/healthz")).status == 200  # for load balancers
    for path in ("/metrics", "/readyz"):
        response = await client.get(path)
        assert response.status == 404, path
        assert (await response.json())["error"] == "not_found"


async def test_the_management_port_serves_probes_and_metrics(serve: Serve) -> None:
    client = await serve()
    await client.post("/webhooks", data=delivery(1), headers=signed(delivery(1)))

    assert (await client.probe("/healthz")).status == 200
    assert (await client.probe("/readyz")).status == 200
    metrics = await (await client.probe("/metrics")).text()
    assert 'processor_ingress_requests_total{code="202"} 1.0' in metrics
    assert (await client.probe("/webhooks")).status in (404, 405), "no deliveries here"


# --- Kafka not taking the write: what the ingress decides -------------------------------


async def test_a_publish_kafka_refuses_is_503_with_retry_after(serve: Serve) -> None:
    client = await serve(publisher=RecordingPublisher(outcome=ConnectionError()), retry_after_s=7)
    response = await client.post("/webhooks", data=delivery(1), headers=signed(delivery(1)))
    assert response.status == 503
    assert response.headers["Retry-After"] == "7"
    assert (await response.json())["error"] == "kafka_unavailable"


async def test_a_publish_not_acknowledged_in_time_is_503_kafka_timeout(serve: Serve) -> None:
    client = await serve(publisher=RecordingPublisher(hang=True), publish_timeout_s=0.2)
    started = time.monotonic()
    response = await client.post("/webhooks", data=delivery(1), headers=signed(delivery(1)))
    assert response.status == 503
    assert time.monotonic() - started < 2
    payload = await response.json()
    assert payload["error"] == "kafka_timeout"
    assert "0.2 s" in payload["detail"]


async def test_kafka_refusing_writes_is_one_warning_then_one_line_when_it_takes_them_again(
    serve: Serve,
) -> None:
    publisher = RecordingPublisher(outcome=ConnectionError())
    buffer = io.StringIO()
    with captured_logs(buffer):
        client = await serve(publisher=publisher)
        for n in range(5):
            response = await client.post("/webhooks", data=delivery(n), headers=signed(delivery(n)))
            assert response.status == 503
        publisher.outcome = None
        response = await client.post("/webhooks", data=delivery(9), headers=signed(delivery(9)))
        assert response.status == 202
        metrics = await (await client.probe("/metrics")).text()

    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    said = [(e["event"], e["level"]) for e in lines if e["event"].startswith("ingress.")]
    said = [(event, level) for event, level in said if level != "debug"]
    assert said == [("ingress.refusing", "warning"), ("ingress.accepting", "info")]
    assert lines[-1]["refused"] == 5
    assert [e["delivery_id"] for e in lines if e["event"] == "ingress.rejected"] == [
        f"whd_{n}" for n in range(5)
    ], "each refusal is still a DEBUG line"
    assert 'processor_ingress_requests_total{code="503"} 5.0' in metrics


async def test_a_long_refusal_is_summarised_on_an_interval(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingress_app, "REFUSING_SUMMARY_S", 0.0)  # every refusal is due
    buffer = io.StringIO()
    with captured_logs(buffer):
        client = await serve(publisher=RecordingPublisher(outcome=ConnectionError()))
        for n in range(3):
            await client.post("/webhooks", data=delivery(n), headers=signed(delivery(n)))

    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    summaries = [e for e in lines if e["event"] == "ingress.still_refusing"]
    assert [(e["refused"], e["refused_total"]) for e in summaries] == [(1, 1), (1, 2)]


async def test_beyond_max_in_flight_a_delivery_is_503_at_once_unpublished_and_said_once(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingress_app, "SHED_QUIET_S", 0.0)
    publisher = RecordingPublisher(hang=True)  # Kafka slow: the first two stay in flight
    buffer = io.StringIO()
    with captured_logs(buffer):
        client = await serve(publisher=publisher, max_in_flight=2, publish_timeout_s=1.0)

        def post(n: int) -> Any:
            return client.post("/webhooks", data=delivery(n), headers=signed(delivery(n)))

        held = [asyncio.create_task(post(n)) for n in range(2)]
        while len(publisher.records) < 2:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        shed = [await post(n) for n in (3, 4)]
        forged = await client.post("/webhooks", data=delivery(6), headers=signed(b"other"))
        answered_in = time.monotonic() - started
        assert [r.status for r in await asyncio.gather(*held)] == [503, 503]  # kafka_timeout
        publisher.hang = False
        after = await post(5)
        metrics = await (await client.probe("/metrics")).text()

    assert [r.status for r in shed] == [503, 503]
    assert forged.status == 401, "only genuine deliveries are counted, or shed"
    assert answered_in < 0.5, "a shed delivery waits for nothing"
    assert all(r.headers["Retry-After"] == "5" for r in shed)
    assert (await shed[0].json())["error"] == "overloaded"
    assert after.status == 202
    assert [r.value for r in publisher.records] == [delivery(0), delivery(1), delivery(5)]
    assert "processor_ingress_shed_total 2.0" in metrics
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    said = [
        e["event"] for e in lines if e["event"].startswith("ingress.") and e["level"] != "debug"
    ]
    assert said.count("ingress.shedding") == 1
    assert said[-2:] == ["ingress.shedding_ended", "ingress.accepting"]


@pytest.mark.parametrize("log_accepted", [False, True])
async def test_an_accepted_delivery_is_logged_only_when_asked_a_refusal_always(
    serve: Serve, log_accepted: bool
) -> None:
    buffer = io.StringIO()
    with captured_logs(buffer):
        client = await serve(log_accepted=log_accepted)
        accepted = await client.post("/webhooks", data=delivery(1), headers=signed(delivery(1)))
        refused = await client.post("/webhooks", data=delivery(2), headers=signed(b"other"))

    assert (accepted.status, refused.status) == (202, 401)
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    events = [(line["event"], line.get("status")) for line in lines if "status" in line]
    expected = [("ingress.accepted", 202)] if log_accepted else []
    assert events == [*expected, ("ingress.rejected", 401)]


# --- bodies msgspec cannot take ----------------------------------------------------------


def rejections(text: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in text.splitlines()]
    return [line for line in lines if line["event"] == "ingress.rejected"]


async def test_a_signed_body_nested_too_deeply_is_400_counted_and_logged(serve: Serve) -> None:
    depth = 1_000
    body = (
        b'{"id": "whd_deep", "event": "integration.updated", "data": {"uid": "u", "x": '
        + b"[" * depth
        + b"]" * depth
        + b"}}"
    )
    buffer = io.StringIO()
    with captured_logs(buffer):
        client = await serve()
        response = await client.post("/webhooks", data=body, headers=signed(body))
        metrics = await (await client.probe("/metrics")).text()

    assert response.status == 400
    payload = await response.json()
    assert payload == {
        "error": "malformed_json",
        "detail": "body is not valid JSON: nested too deeply",
    }
    assert published(client) == []
    assert 'processor_ingress_requests_total{code="400"} 1.0' in metrics
    [rejected] = rejections(buffer.getvalue())
    assert (rejected["status"], rejected["error"]) == (400, "malformed_json")
    assert "Traceback" not in buffer.getvalue()


@pytest.mark.parametrize(
    "field",
    [b'"provider": "bin\xffance"', b'"alias": "caf\xc3"', b'"\xed\xa0\x80": 1'],
    ids=["invalid-byte", "truncated-sequence", "surrogate-in-a-key"],
)
async def test_invalid_utf8_in_a_field_the_ingress_skips_is_400_not_accepted(
    serve: Serve, field: bytes
) -> None:
    body = b'{"id": "whd_1", "event": "integration.updated", "data": {"uid": "u", ' + field + b"}}"
    client = await serve()
    response = await client.post("/webhooks", data=body, headers=signed(body))
    assert response.status == 400
    payload = await response.json()
    assert payload["error"] == "malformed_json"
    assert payload["detail"].startswith("body is not valid JSON: invalid UTF-8 at byte ")
    assert published(client) == []
