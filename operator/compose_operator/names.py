"""Deterministic names and standard labels for the children of a CompositionJob.

A restarted operator must find what it already created instead of creating it twice, so the child
Job's name is a pure function of the CR's name, uid and attempt (never ``generateName``). The
builders put these labels on every child; the handlers map a Job or Pod event back to its
CompositionJob through the ``UID_LABEL``.
"""

from __future__ import annotations

import hashlib
import re

from compose_api import models

MAX_NAME = 63
GROUP = models.GROUP

JOB_LABEL = f"{GROUP}/job"
UID_LABEL = f"{GROUP}/job-uid"
ATTEMPT_LABEL = f"{GROUP}/attempt"
PROFILE_LABEL = f"{GROUP}/profile"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "compose-operator"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# Put on a CompositionJob by the gateway (compose_gateway.naming.OWNER_LABEL, the API key id):
# the tenant the queue's per-owner fairness and limit count by.
OWNER_LABEL = f"{GROUP}/owner"
CONTAINER_NAME = "compose"
# Set on a Job the operator suspended because of spec.suspend; only such a Job is unsuspended
# when the user resumes (a Job held for Kueue admission is Kueue's to unsuspend).
SUSPENDED_ANNOTATION = f"{GROUP}/suspended-by-operator"
# Set on a new attempt's Job that the operator created suspended to take the slot of the Job it
# replaces (the value: that Job's name); it is unsuspended once no other Job of its
# CompositionJob is live, so the two never run side by side past the per-namespace cap.
REPLACES_ANNOTATION = f"{GROUP}/replaces"

_INVALID = re.compile(r"[^a-z0-9-]+")


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def label_value(text: str) -> str:
    """``text`` as a valid label value (<= 63 characters); long or odd values get a hash suffix."""
    if len(text) <= MAX_NAME and re.fullmatch(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]", text):
        return text
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[: MAX_NAME - 9].strip("-_.")
    return f"{cleaned}-{_digest(text, 8)}" if cleaned else _digest(text, 16)


def job_name(cj_name: str, uid: str, attempt: int) -> str:
    """``<name>-<uid hash>-<attempt>``: a DNS label of at most 63 characters.

    The uid part tells apart a CompositionJob deleted and re-created under the same name; the
    name part is shortened (never the suffix) so that the result stays a valid label value too.
    """
    if attempt < 0:
        raise ValueError(f"attempt: must be >= 0, got {attempt}")
    suffix = f"-{_digest(uid, 8)}-{attempt}"
    base = _INVALID.sub("-", cj_name.lower()).strip("-") or "cj"
    base = base[: MAX_NAME - len(suffix)].rstrip("-")
    return base + suffix


def selector(uid: str) -> str:
    """The label selector of every child of one CompositionJob."""
    return f"{UID_LABEL}={uid}"


def labels(cj_name: str, uid: str, attempt: int, profile: str) -> dict[str, str]:
    """Standard labels of a child Job and its pods."""
    return {
        "app.kubernetes.io/name": "compose-inference",
        "app.kubernetes.io/instance": label_value(cj_name),
        "app.kubernetes.io/component": "inference",
        "app.kubernetes.io/part-of": "nextunicorn-compose",
        MANAGED_BY_LABEL: MANAGED_BY,
        JOB_LABEL: label_value(cj_name),
        UID_LABEL: uid,
        ATTEMPT_LABEL: str(attempt),
        PROFILE_LABEL: profile,
    }
