"""Is this delivery from the provider? Pure signature checks, no I/O.

Two schemes, chosen by `ingress.signature_scheme`:

- `hmac-sha256`: the provider's own; `X-Webhook-Signature` is the hex HMAC-SHA256 of
  the raw body. It signs no timestamp, so it gives no replay window: the delivery id
  is the idempotency key downstream.
- `standard-webhooks` (https://www.standardwebhooks.com): `v1,<base64>` HMAC-SHA256
  over `<webhook-id>.<webhook-timestamp>.<body>` with `whsec_<base64>` secrets, and a
  timestamp tolerance that bounds replays.

Every verifier accepts a list of secrets, any one matching is enough, so a secret can
be rotated without downtime. Keys are decoded and checked once at start-up (at least
MIN_SECRET_BYTES, no published placeholder); `verify` runs per request, so it only
hashes and compares (in constant time).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Protocol

from processor.config import IngressConfig
from processor.errors import ConfigError

__all__ = [
    "MIN_SECRET_BYTES",
    "HmacSha256Verifier",
    "NoVerification",
    "SignatureError",
    "StandardWebhooksVerifier",
    "Verifier",
    "build_verifier",
    "short_secrets",
    "sign_hmac_sha256",
]

HMAC_SIGNATURE_HEADER: Final = "X-Webhook-Signature"
WEBHOOK_ID_HEADER: Final = "webhook-id"
WEBHOOK_TIMESTAMP_HEADER: Final = "webhook-timestamp"
WEBHOOK_SIGNATURE_HEADER: Final = "webhook-signature"
_WHSEC_PREFIX: Final = "whsec_"
# 128 bits: a shorter HMAC key can be searched for from a few signed deliveries. The
# provider's secrets and Standard Webhooks' (which decode to 24 or 32 bytes) are longer.
MIN_SECRET_BYTES: Final = 16
# Secrets published in manifests and examples (deploy/k8s/secret.example.yaml shows the first;
# the last is the Standard Webhooks examples' key): anyone could sign with them.
_PLACEHOLDERS: Final = frozenset(
    {
        "change-me",
        "changeme",
        "change_me",
        "replace-me",
        "replaceme",
        "your-secret",
        "your-webhook-secret",
        "whsec_mfkq9r8gkyqrtwjupd8ilpzio2lalasw",
    }
)
_HOW_TO_SET: Final = (
    "set WEBHOOK_SECRET (or ingress.secrets, PROCESSOR_INGRESS__SECRETS) to the signing "
    "secret the provider shows"
)


class SignatureError(Exception):
    """The delivery is not provably from the provider; `reason` is safe to send back.

    A reason names what is missing or wrong, never a secret or an expected value.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Verifier(Protocol):
    """Decides whether a raw body and its headers were signed by the provider.

    `headers` must look names up case-insensitively, as aiohttp's request headers do.
    """

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        """Return if genuine; raise SignatureError saying why not otherwise."""


def sign_hmac_sha256(body: bytes, secret: str) -> str:
    """The `X-Webhook-Signature` value the provider sends for `body` (tests, dev tools)."""
    return hmac.digest(secret.encode(), body, "sha256").hex()


class HmacSha256Verifier:
    """The provider's scheme: `X-Webhook-Signature` = hex HMAC-SHA256 of the raw body."""

    def __init__(self, *, secrets: Sequence[str]) -> None:
        if not secrets:
            raise ValueError("HmacSha256Verifier needs at least one secret")
        self._keys = _checked_keys([secret.encode() for secret in secrets])

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        value = headers.get(HMAC_SIGNATURE_HEADER)
        if not value:
            raise SignatureError(f"missing {HMAC_SIGNATURE_HEADER} header")
        try:
            received = bytes.fromhex(value.strip())
        except ValueError:
            raise SignatureError(
                f"{HMAC_SIGNATURE_HEADER} is not a hex HMAC-SHA256 digest"
            ) from None
        # Every key is tried even after a match would be found, so timing reveals nothing
        # about which secret (old or new) signed the delivery.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(hmac.digest(key, body, "sha256"), received)
        if not matched:
            raise SignatureError(f"{HMAC_SIGNATURE_HEADER} does not match the body")


class StandardWebhooksVerifier:
    """Standard Webhooks `v1` signatures, with a replay window on `webhook-timestamp`.

    `now` returns Unix seconds; tests inject a fixed clock.
    """

    def __init__(
        self,
        *,
        secrets: Sequence[str],
        tolerance_s: int = 300,
        now: Callable[[], float] = time.time,
    ) -> None:
        if not secrets:
            raise ValueError("StandardWebhooksVerifier needs at least one secret")
        self._keys = _checked_keys([_decode_whsec(s) for s in secrets], decoded=True)
        self._tolerance_s = tolerance_s
        self._now = now

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        msg_id = headers.get(WEBHOOK_ID_HEADER)
        timestamp = headers.get(WEBHOOK_TIMESTAMP_HEADER)
        signature = headers.get(WEBHOOK_SIGNATURE_HEADER)
        if not (msg_id and timestamp and signature):
            missing = [
                name
                for name, value in (
                    (WEBHOOK_ID_HEADER, msg_id),
                    (WEBHOOK_TIMESTAMP_HEADER, timestamp),
                    (WEBHOOK_SIGNATURE_HEADER, signature),
                )
                if not value
            ]
            raise SignatureError(f"missing {', '.join(missing)} header")
        # Ten digits until 2286; the bound keeps int() away from absurd inputs.
        if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
            raise SignatureError(f"{WEBHOOK_TIMESTAMP_HEADER} is not integer Unix seconds")
        skew = int(timestamp) - self._now()
        if abs(skew) > self._tolerance_s:
            raise SignatureError(
                f"{WEBHOOK_TIMESTAMP_HEADER} is {abs(skew):.0f} s in the "
                f"{'future' if skew > 0 else 'past'}, outside the {self._tolerance_s} s "
                "tolerance: check the sender's clock, or this is a replay"
            )
        received = _v1_signatures(signature)
        if not received:
            raise SignatureError(f"{WEBHOOK_SIGNATURE_HEADER} holds no v1 signature")
        signed = b"%s.%s.%s" % (msg_id.encode(), timestamp.encode(), body)
        matched = False
        for key in self._keys:
            expected = hmac.digest(key, signed, "sha256")
            for candidate in received:
                matched |= hmac.compare_digest(expected, candidate)
        if not matched:
            raise SignatureError(f"no {WEBHOOK_SIGNATURE_HEADER} entry matches the body")


class NoVerification:
    """Accepts everything: `signature_scheme: none`, for local experiments only."""

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        """Nothing to check: the operator turned verification off explicitly."""


def build_verifier(config: IngressConfig, *, now: Callable[[], float] = time.time) -> Verifier:
    """The verifier `config` asks for; ConfigError when it cannot work as configured."""
    if config.signature_scheme == "none":
        return NoVerification()
    if not config.secrets:
        raise ConfigError(
            f"ingress.signature_scheme {config.signature_scheme} needs a signing secret: "
            "set WEBHOOK_SECRET (comma-separated to accept several while rotating)"
        )
    count = len(config.secrets)
    for position, secret in enumerate(config.secrets, 1):
        if secret.strip().lower() in _PLACEHOLDERS:
            raise ConfigError(
                f"ingress.secrets: secret {position} of {count} is a placeholder published "
                f"in an example, so anyone could sign deliveries with it: {_HOW_TO_SET}"
            )
    try:
        if config.signature_scheme == "hmac-sha256":
            return HmacSha256Verifier(secrets=config.secrets)
        return StandardWebhooksVerifier(
            secrets=config.secrets, tolerance_s=config.timestamp_tolerance_s, now=now
        )
    except ValueError as exc:
        raise ConfigError(f"ingress.secrets: {exc}: {_HOW_TO_SET}") from None


def _checked_keys(keys: Sequence[bytes], *, decoded: bool = False) -> tuple[bytes, ...]:
    """`keys` if none is empty; ValueError naming the first that is. The message says
    which secret and what is wrong with it, never its value."""
    for position, key in enumerate(keys, 1):
        if not key:
            once = " once decoded from base64" if decoded else ""
            raise ValueError(f"secret {position} of {len(keys)} is empty{once}")
    return tuple(keys)


def short_secrets(config: IngressConfig) -> list[str]:
    """What to warn of: each secret shorter than MIN_SECRET_BYTES, by its position and
    length, never its value. The provider issues the secret, so a short one is not
    refused (the ingress could then verify nothing); it is said once at start."""
    if config.signature_scheme == "none":
        return []
    decoded = config.signature_scheme == "standard-webhooks"
    found = []
    for position, secret in enumerate(config.secrets, 1):
        try:
            key = _decode_whsec(secret) if decoded else secret.encode()
        except ValueError:
            continue  # build_verifier refuses it
        if 0 < len(key) < MIN_SECRET_BYTES:
            once = " once decoded from base64" if decoded else ""
            found.append(
                f"secret {position} of {len(config.secrets)} is {len(key)} bytes{once}, "
                f"shorter than {MIN_SECRET_BYTES}"
            )
    return found


def _decode_whsec(secret: str) -> bytes:
    """`whsec_<base64>` (the prefix is optional, as in the reference libraries) -> key."""
    encoded = secret.removeprefix(_WHSEC_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ValueError(
            "a standard-webhooks secret must be whsec_ followed by base64, "
            "as the provider's dashboard shows it"
        ) from None
    return key


def _v1_signatures(header: str) -> list[bytes]:
    """The decoded `v1,<base64>` entries of a space-separated header; others are skipped."""
    signatures = []
    for entry in header.split():
        version, sep, encoded = entry.partition(",")
        if version != "v1" or not sep:
            continue
        try:
            signatures.append(base64.b64decode(encoded, validate=True))
        except binascii.Error:
            continue
    return signatures
