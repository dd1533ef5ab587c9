"""HMAC-SHA256 signatures of callback bodies, in one header.

The callback loop signs every POST it sends; receivers verify with the shared secret (the
README shows how). The header is ``X-Compose-Signature: t=<unix seconds>,v1=<hex>`` where the hex
is HMAC-SHA256(secret, ``<t>.<raw body>``): signing the timestamp with the body lets a receiver
refuse replays older than a few minutes. Pure: the time is passed in.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Compose-Signature"
DELIVERY_HEADER = "X-Compose-Delivery"
EVENT_HEADER = "X-Compose-Event"


def signature(secret: bytes, body: bytes, timestamp: int) -> str:
    """The hex HMAC-SHA256 of ``<timestamp>.<body>``."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def header(secret: bytes, body: bytes, timestamp: int) -> str:
    """The value of the signature header."""
    return f"t={timestamp},v1={signature(secret, body, timestamp)}"


def verify(
    secret: bytes, body: bytes, value: str, *, now: float, tolerance_seconds: float = 300.0
) -> bool:
    """Whether ``value`` (a signature header) signs ``body`` and is recent enough."""
    fields = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
    try:
        timestamp = int(fields.get("t", ""))
    except ValueError:
        return False
    if abs(now - timestamp) > tolerance_seconds:
        return False
    expected = signature(secret, body, timestamp)
    return hmac.compare_digest(expected, fields.get("v1", ""))
