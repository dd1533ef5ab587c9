"""Labels, annotations and names the gateway puts on the CompositionJobs it creates.

Pure functions and constants, shared by the request translation (``translate``), the job views
(``views``), the callback loop (``callbacks``) and the HTTP handlers (``app``). The owner label is
how a key sees only its own jobs (a label selector on list, a check on get and delete); the
callback label lets the callback loop list only the jobs that still owe a notification.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time

from compose_api import models

PREFIX = models.GROUP
OWNER_LABEL = f"{PREFIX}/owner"
CREATED_BY_LABEL = "app.kubernetes.io/created-by"
CREATED_BY = "compose-gateway"
CALLBACK_LABEL = f"{PREFIX}/callback"
# On every job the gateway creates until it sees the job finished (then removed), so that a
# key's jobs not yet finished are one label selector away, however long its history.
OUTSTANDING_LABEL = f"{PREFIX}/outstanding"
CALLBACK_PENDING = "pending"
CALLBACK_DELIVERED = "delivered"
CALLBACK_FAILED = "failed"

CALLBACK_URL_ANNOTATION = f"{PREFIX}/callback-url"
CALLBACK_ATTEMPTS_ANNOTATION = f"{PREFIX}/callback-attempts"
CALLBACK_NEXT_ANNOTATION = f"{PREFIX}/callback-next-attempt"
CALLBACK_RESULT_ANNOTATION = f"{PREFIX}/callback-result"
REQUEST_HASH_ANNOTATION = f"{PREFIX}/request-sha256"
IDEMPOTENCY_ANNOTATION = f"{PREFIX}/idempotency-key-sha256"

NAME_PREFIX = "gw-"
# A job id is gw- and 20 hex digits. Without an Idempotency-Key: 11 digits of the creation time
# reversed (REVERSED_MS_BASE minus Unix milliseconds), then 9 random ones, so that the API
# server's name order (what a paged list follows) is newest first. With one: "f" and 19 digits
# of a hash of the owner and the key, so the same request maps to the same id; reversed times
# begin with "e" from 2004 to 2149, so these ids come after all the others.
REVERSED_MS_BASE = 16**11 - 1
IDEMPOTENT_MARK = "f"
# A label value: at most 63 characters, alphanumeric at both ends.
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
JOB_NAME_PATTERN = re.compile(r"^gw-[0-9a-f]{20}$")


def random_job_name(now: float | None = None) -> str:
    """A fresh name for a job created without an Idempotency-Key, at Unix time ``now``."""
    milliseconds = int((time.time() if now is None else now) * 1000)
    reversed_ms = max(0, REVERSED_MS_BASE - milliseconds)
    return f"{NAME_PREFIX}{reversed_ms:011x}{secrets.token_hex(5)[:9]}"


def idempotent_job_name(owner: str, idempotency_key: str) -> str:
    """The one name a key's request with this Idempotency-Key maps to (same key, same job)."""
    digest = hashlib.sha256(f"{owner}\0{idempotency_key}".encode()).hexdigest()
    return NAME_PREFIX + IDEMPOTENT_MARK + digest[:19]


def is_job_name(text: str) -> bool:
    """Whether ``text`` can be a job id the gateway issued (anything else is a 404 at once)."""
    return JOB_NAME_PATTERN.match(text) is not None


def owner_selector(owner: str) -> str:
    """The label selector of one key's jobs."""
    return f"{OWNER_LABEL}={owner}"


def outstanding_selector(owner: str) -> str:
    """The label selector of one key's jobs not yet seen finished."""
    return f"{OWNER_LABEL}={owner},{OUTSTANDING_LABEL}=true"


def pending_callbacks_selector() -> str:
    return f"{CALLBACK_LABEL}={CALLBACK_PENDING}"
