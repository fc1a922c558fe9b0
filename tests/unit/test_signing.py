"""Signature verification against vectors computed here with the hmac module."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json

import pytest
from multidict import CIMultiDict

from processor.config import Config, IngressConfig, load_config
from processor.errors import ConfigError
from processor.ingress.app import create_apps
from processor.ingress.signing import (
    HmacSha256Verifier,
    NoVerification,
    SignatureError,
    StandardWebhooksVerifier,
    build_verifier,
    short_secrets,
    sign_hmac_sha256,
)
from tests.ingress_harness import RecordingPublisher, captured_logs

BODY = b'{"id":"whd_1","event":"integration.created","data":{"uid":"user_1"}}'
OLD_SECRET = "old-signing-secret-1"
NEW_SECRET = "new-signing-secret-2"


def hex_hmac(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# --- hmac-sha256 (the provider's X-Webhook-Signature) --------------------------------


def test_sign_hmac_sha256_matches_an_independent_computation() -> None:
    assert sign_hmac_sha256(BODY, OLD_SECRET) == hex_hmac(OLD_SECRET, BODY)


def test_hmac_valid_signature_passes() -> None:
    verifier = HmacSha256Verifier(secrets=[OLD_SECRET])
    verifier.verify(BODY, {"X-Webhook-Signature": hex_hmac(OLD_SECRET, BODY)})


def test_hmac_header_name_is_case_insensitive_and_hex_case_is_ignored() -> None:
    verifier = HmacSha256Verifier(secrets=[OLD_SECRET])
    headers = CIMultiDict({"x-webhook-signature": hex_hmac(OLD_SECRET, BODY).upper()})
    verifier.verify(BODY, headers)


def test_hmac_missing_signature_is_rejected() -> None:
    verifier = HmacSha256Verifier(secrets=[OLD_SECRET])
    with pytest.raises(SignatureError, match="missing X-Webhook-Signature"):
        verifier.verify(BODY, {})


def test_hmac_wrong_secret_is_rejected() -> None:
    verifier = HmacSha256Verifier(secrets=[OLD_SECRET])
    with pytest.raises(SignatureError, match="does not match"):
        verifier.verify(BODY, {"X-Webhook-Signature": hex_hmac("guess", BODY)})


def test_hmac_signature_of_another_body_is_rejected() -> None:
    verifier = HmacSha256Verifier(secrets=[OLD_SECRET])
    other = hex_hmac(OLD_SECRET, BODY + b" ")
    with pytest.raises(SignatureError, match="does not match"):
        verifier.verify(BODY, {"X-Webhook-Signature": other})


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("not-hex", "is not a hex HMAC-SHA256 digest"),
        ("abc", "is not a hex HMAC-SHA256 digest"),
        ("é" * 64, "is not a hex HMAC-SHA256 digest"),
        ("00" * 31, "does not match the body"),
    ],
)
def test_hmac_malformed_signature_is_rejected(value: str, reason: str) -> None:
    verifier = HmacSha256Verifier(secrets=[OLD_SECRET])
    with pytest.raises(SignatureError, match=f"^X-Webhook-Signature {reason}$"):
        verifier.verify(BODY, {"X-Webhook-Signature": value})


@pytest.mark.parametrize("signer", [OLD_SECRET, NEW_SECRET])
def test_hmac_either_secret_passes_while_rotating(signer: str) -> None:
    verifier = HmacSha256Verifier(secrets=[OLD_SECRET, NEW_SECRET])
    verifier.verify(BODY, {"X-Webhook-Signature": hex_hmac(signer, BODY)})


def test_hmac_retired_secret_is_rejected_after_rotation() -> None:
    verifier = HmacSha256Verifier(secrets=[NEW_SECRET])
    with pytest.raises(SignatureError, match=r"^X-Webhook-Signature does not match the body$"):
        verifier.verify(BODY, {"X-Webhook-Signature": hex_hmac(OLD_SECRET, BODY)})


def test_reason_never_contains_the_secret_or_the_expected_digest() -> None:
    verifier = HmacSha256Verifier(secrets=[OLD_SECRET])
    with pytest.raises(SignatureError, match="does not match the body") as caught:
        verifier.verify(BODY, {"X-Webhook-Signature": "00" * 32})
    assert OLD_SECRET not in caught.value.reason
    assert hex_hmac(OLD_SECRET, BODY) not in caught.value.reason


# --- Standard Webhooks --------------------------------------------------------------

# The vector published in the Standard Webhooks reference libraries' tests.
PUBLISHED_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PUBLISHED_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
PUBLISHED_TIMESTAMP = 1614265330
PUBLISHED_BODY = b'{"test": 2432232314}'
PUBLISHED_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

KEY_A = b"key-a-0123456789abcdef"
KEY_B = b"key-b-fedcba9876543210"
WHSEC_A = "whsec_" + base64.b64encode(KEY_A).decode()
WHSEC_B = "whsec_" + base64.b64encode(KEY_B).decode()
NOW = 1_700_000_000


def v1(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.digest(key, signed, "sha256")).decode()


def sw_headers(signature: str, *, msg_id: str = "msg_1", timestamp: int = NOW) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def sw_verifier(*secrets: str, now: float = NOW) -> StandardWebhooksVerifier:
    return StandardWebhooksVerifier(secrets=secrets, tolerance_s=300, now=lambda: now)


def test_standard_webhooks_published_vector_passes() -> None:
    verifier = sw_verifier(PUBLISHED_SECRET, now=PUBLISHED_TIMESTAMP)
    headers = sw_headers(PUBLISHED_SIGNATURE, msg_id=PUBLISHED_ID, timestamp=PUBLISHED_TIMESTAMP)
    verifier.verify(PUBLISHED_BODY, headers)


def test_standard_webhooks_valid_signature_passes() -> None:
    sw_verifier(WHSEC_A).verify(BODY, sw_headers(v1(KEY_A, "msg_1", NOW, BODY)))


def test_standard_webhooks_secret_without_prefix_is_accepted() -> None:
    bare = base64.b64encode(KEY_A).decode()
    sw_verifier(bare).verify(BODY, sw_headers(v1(KEY_A, "msg_1", NOW, BODY)))


def test_standard_webhooks_any_of_several_signatures_may_match() -> None:
    header = " ".join(
        [
            "v1a,ignored-asymmetric-entry",
            v1(b"unknown", "msg_1", NOW, BODY),
            v1(KEY_A, "msg_1", NOW, BODY),
        ]
    )
    sw_verifier(WHSEC_A).verify(BODY, sw_headers(header))


@pytest.mark.parametrize("signer", [KEY_A, KEY_B])
def test_standard_webhooks_either_secret_passes_while_rotating(signer: bytes) -> None:
    verifier = sw_verifier(WHSEC_A, WHSEC_B)
    verifier.verify(BODY, sw_headers(v1(signer, "msg_1", NOW, BODY)))


def test_standard_webhooks_wrong_key_is_rejected() -> None:
    with pytest.raises(SignatureError, match="no webhook-signature entry matches"):
        sw_verifier(WHSEC_A).verify(BODY, sw_headers(v1(KEY_B, "msg_1", NOW, BODY)))


def test_standard_webhooks_signature_of_another_body_is_rejected() -> None:
    with pytest.raises(SignatureError, match="matches"):
        sw_verifier(WHSEC_A).verify(BODY, sw_headers(v1(KEY_A, "msg_1", NOW, BODY + b" ")))


def test_standard_webhooks_signature_for_another_id_is_rejected() -> None:
    signature = v1(KEY_A, "msg_other", NOW, BODY)
    with pytest.raises(SignatureError, match="matches"):
        sw_verifier(WHSEC_A).verify(BODY, sw_headers(signature, msg_id="msg_1"))


@pytest.mark.parametrize(
    ("offset", "direction"), [(-301, "past"), (301, "future"), (-86_400, "past")]
)
def test_standard_webhooks_timestamp_outside_tolerance_is_rejected(
    offset: int, direction: str
) -> None:
    # Correctly signed for its own timestamp: only the clock check can refuse it.
    stamp = NOW + offset
    headers = sw_headers(v1(KEY_A, "msg_1", stamp, BODY), timestamp=stamp)
    with pytest.raises(SignatureError, match=f"in the {direction}"):
        sw_verifier(WHSEC_A).verify(BODY, headers)


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_standard_webhooks_timestamp_at_the_tolerance_edge_passes(offset: int) -> None:
    stamp = NOW + offset
    headers = sw_headers(v1(KEY_A, "msg_1", stamp, BODY), timestamp=stamp)
    sw_verifier(WHSEC_A).verify(BODY, headers)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_standard_webhooks_missing_header_is_named(missing: str) -> None:
    headers = sw_headers(v1(KEY_A, "msg_1", NOW, BODY))
    del headers[missing]
    with pytest.raises(SignatureError, match=f"missing {missing}"):
        sw_verifier(WHSEC_A).verify(BODY, headers)


@pytest.mark.parametrize("stamp", ["1700000000.5", "-1", "soon", "9" * 5000])
def test_standard_webhooks_non_integer_timestamp_is_rejected(stamp: str) -> None:
    headers = sw_headers(v1(KEY_A, "msg_1", NOW, BODY))
    headers["webhook-timestamp"] = stamp
    with pytest.raises(SignatureError, match="integer Unix seconds"):
        sw_verifier(WHSEC_A).verify(BODY, headers)


@pytest.mark.parametrize("header", ["v2,abc", "v1", "v1,!!!not-base64", "   "])
def test_standard_webhooks_header_without_usable_v1_entry_is_rejected(header: str) -> None:
    with pytest.raises(SignatureError, match=r"^webhook-signature holds no v1 signature$"):
        sw_verifier(WHSEC_A).verify(BODY, sw_headers(header))


# --- building from config -----------------------------------------------------------


def test_build_verifier_picks_the_configured_scheme() -> None:
    hmac_config = IngressConfig(secrets=(OLD_SECRET,))
    sw_config = IngressConfig(signature_scheme="standard-webhooks", secrets=(WHSEC_A,))
    assert isinstance(build_verifier(hmac_config), HmacSha256Verifier)
    assert isinstance(build_verifier(sw_config), StandardWebhooksVerifier)
    assert isinstance(build_verifier(IngressConfig(signature_scheme="none")), NoVerification)


@pytest.mark.parametrize("scheme", ["hmac-sha256", "standard-webhooks"])
def test_build_verifier_without_secrets_says_to_set_webhook_secret(scheme: str) -> None:
    config = IngressConfig(signature_scheme=scheme, secrets=())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET"):
        build_verifier(config)


def test_build_verifier_rejects_a_standard_webhooks_secret_that_is_not_base64() -> None:
    config = IngressConfig(signature_scheme="standard-webhooks", secrets=("whsec_%%%",))
    with pytest.raises(ConfigError, match="whsec_ followed by base64"):
        build_verifier(config)


def test_build_verifier_passes_the_clock_and_tolerance() -> None:
    config = IngressConfig(
        signature_scheme="standard-webhooks", secrets=(WHSEC_A,), timestamp_tolerance_s=10
    )
    verifier = build_verifier(config, now=lambda: NOW + 11)
    with pytest.raises(SignatureError, match="10 s tolerance"):
        verifier.verify(BODY, sw_headers(v1(KEY_A, "msg_1", NOW, BODY)))


# --- secrets that must not run an ingress ---------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "secret"),
    [("hmac-sha256", ""), ("standard-webhooks", "whsec_")],
    ids=["hmac-empty", "sw-empty"],
)
def test_build_verifier_refuses_an_empty_secret(scheme: str, secret: str) -> None:
    known = NEW_SECRET if scheme == "hmac-sha256" else WHSEC_A
    config = IngressConfig(signature_scheme=scheme, secrets=(known, secret))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"ingress\.secrets: secret 2 of 2 is empty") as caught:
        build_verifier(config)
    assert "WEBHOOK_SECRET" in str(caught.value)


@pytest.mark.parametrize(
    ("scheme", "secret", "said"),
    [
        ("hmac-sha256", "fifteen-bytes!!", "secret 2 of 2 is 15 bytes, shorter than 16"),
        ("hmac-sha256", "\u00e9" * 7, "secret 2 of 2 is 14 bytes, shorter than 16"),  # UTF-8
        (
            "standard-webhooks",
            "whsec_" + base64.b64encode(b"k" * 15).decode(),
            "secret 2 of 2 is 15 bytes once decoded from base64, shorter than 16",
        ),
    ],
    ids=["hmac-15", "hmac-14-bytes-utf8", "sw-decodes-to-15"],
)
def test_a_short_secret_is_taken_and_named_for_a_warning_without_its_value(
    scheme: str, secret: str, said: str
) -> None:
    # The provider issues the secret: refusing a short one would leave nothing verified.
    known = NEW_SECRET if scheme == "hmac-sha256" else WHSEC_A
    config = IngressConfig(signature_scheme=scheme, secrets=(known, secret))  # type: ignore[arg-type]
    build_verifier(config)

    assert short_secrets(config) == [said]
    assert secret not in said


def test_the_ingress_warns_once_at_start_of_a_short_secret() -> None:
    config = Config(ingress=IngressConfig(secrets=(NEW_SECRET, "fifteen-bytes!!")))
    buffer = io.StringIO()
    with captured_logs(buffer):
        create_apps(config=config, publisher=RecordingPublisher())

    logs = [json.loads(line) for line in buffer.getvalue().splitlines()]
    warned = [entry for entry in logs if entry["event"] == "ingress.short_secret"]
    assert [entry["level"] for entry in warned] == ["warning"]
    assert "fifteen-bytes" not in buffer.getvalue()


@pytest.mark.parametrize(
    ("scheme", "secret"),
    [
        ("hmac-sha256", "a" * 16),
        ("standard-webhooks", "whsec_" + base64.b64encode(b"k" * 16).decode()),
    ],
)
def test_build_verifier_takes_a_secret_of_16_bytes(scheme: str, secret: str) -> None:
    build_verifier(IngressConfig(signature_scheme=scheme, secrets=(secret,)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "secret",
    [
        "change-me",
        "CHANGE-ME",
        " changeme ",
        "your-webhook-secret",
        PUBLISHED_SECRET,  # the Standard Webhooks examples' key
    ],
)
def test_build_verifier_refuses_a_published_placeholder_secret(secret: str) -> None:
    scheme = "standard-webhooks" if secret.startswith("whsec_") else "hmac-sha256"
    config = IngressConfig(signature_scheme=scheme, secrets=(secret,))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="secret 1 of 1 is a placeholder") as caught:
        build_verifier(config)
    assert secret.strip() not in str(caught.value)


def test_an_empty_secret_from_the_environment_stops_the_ingress() -> None:
    env = {"PROCESSOR_INGRESS__SECRETS": '[""]'}
    with pytest.raises(ConfigError, match=r"secret 1 of 1 is empty"):
        build_verifier(load_config(None, env=env).ingress)


def test_a_short_secret_from_the_environment_is_taken_and_warned_of() -> None:
    config = load_config(None, env={"WEBHOOK_SECRET": "short"}).ingress
    build_verifier(config)
    assert short_secrets(config) == ["secret 1 of 1 is 5 bytes, shorter than 16"]


def test_verifiers_refuse_an_empty_key_however_they_are_built() -> None:
    with pytest.raises(ValueError, match="secret 1 of 1"):
        HmacSha256Verifier(secrets=[""])
    with pytest.raises(ValueError, match="secret 1 of 1"):
        StandardWebhooksVerifier(secrets=["whsec_"])
