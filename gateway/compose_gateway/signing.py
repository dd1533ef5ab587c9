"""HMAC-SHA256 signatures of callback bodies, with a secret per API key.

The callback loop signs every POST it sends. Each API key has a secret of its own, derived from
the gateway's master secret (the mounted ``callback_secret_file``) and the key id
(:func:`key_secret`), so one tenant cannot sign a callback that another tenant's receiver would
accept: alice never learns bob's secret. The operator hands each tenant its secret
(``compose-gateway callback-secret --id <key id>``).

The header is ``X-Compose-Signature: t=<unix seconds>,k=<key id>,v1=<hex>`` where the hex is
HMAC-SHA256(key secret, ``<t>.<key id>.<raw body>``): the key id and the time are signed with the
body, so a receiver checks that the signature is for its own key and recent (replays older than
the tolerance are refused), and drops repeats by ``X-Compose-Delivery`` within that window
(:func:`verify` and the README show how). Pure: the time is passed in.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Compose-Signature"
DELIVERY_HEADER = "X-Compose-Delivery"
EVENT_HEADER = "X-Compose-Event"
TOLERANCE_SECONDS = 300.0
_DERIVATION_LABEL = b"compose-gateway callback key v1\0"


def key_secret(master: bytes, key_id: str) -> str:
    """The callback secret of one API key (hex text; its ASCII bytes are the HMAC key)."""
    return hmac.new(master, _DERIVATION_LABEL + key_id.encode(), hashlib.sha256).hexdigest()


def signature(secret: str, key_id: str, body: bytes, timestamp: int) -> str:
    """The hex HMAC-SHA256 of ``<timestamp>.<key id>.<body>`` under a key's secret."""
    message = f"{timestamp}.{key_id}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def header(secret: str, key_id: str, body: bytes, timestamp: int) -> str:
    """The value of the signature header."""
    return f"t={timestamp},k={key_id},v1={signature(secret, key_id, body, timestamp)}"


def verify(
    secret: str,
    key_id: str,
    body: bytes,
    value: str,
    *,
    now: float,
    tolerance_seconds: float = TOLERANCE_SECONDS,
) -> bool:
    """Whether ``value`` (a signature header) signs ``body`` for ``key_id`` under its secret,
    within ``tolerance_seconds`` of ``now``. A receiver also drops a ``X-Compose-Delivery`` it
    has seen within the tolerance (a replay of a valid delivery)."""
    fields = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
    try:
        timestamp = int(fields.get("t", ""))
    except ValueError:
        return False
    if abs(now - timestamp) > tolerance_seconds:
        return False
    if not hmac.compare_digest(fields.get("k", ""), key_id):
        return False
    expected = signature(secret, key_id, body, timestamp)
    return hmac.compare_digest(expected, fields.get("v1", ""))
