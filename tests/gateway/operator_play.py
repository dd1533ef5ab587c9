"""The operator's part in the gateway tests: status patches as the operator writes them."""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

from tests.support import cluster_client
from tests.support.resources import COMPOSITION_JOBS

NOW = "2026-01-01T00:10:00Z"


def _condition(kind: str, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": NOW,
    }


async def run(kube: cluster_client.ClusterClient, name: str, namespace: str) -> dict[str, Any]:
    """The job is running (attempt 0)."""
    return await kube.patch_status(
        COMPOSITION_JOBS,
        name,
        {
            "phase": "Running",
            "startTime": NOW,
            "conditions": [
                _condition("Accepted", "Valid"),
                _condition("Started", "Running", "pod gw-0 is running on ip-10-0-0-1"),
            ],
        },
        namespace=namespace,
    )


async def succeed(
    kube: cluster_client.ClusterClient,
    name: str,
    namespace: str,
    *,
    s3_uri: str,
    data: bytes = b"png",
    reused_from: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The job succeeded with its result at ``s3_uri`` (a copy of ``reused_from``'s, when
    given)."""
    result: dict[str, Any] = {
        "s3Uri": s3_uri,
        "sha256": hashlib.sha256(data).hexdigest(),
        "width": 1024,
        "height": 1024,
        "format": "png",
        "bytes": len(data),
        "seed": 42,
    }
    if reused_from is not None:
        result["reusedFrom"] = reused_from
    return await kube.patch_status(
        COMPOSITION_JOBS,
        name,
        {
            "phase": "Succeeded",
            "startTime": NOW,
            "completionTime": (
                datetime.datetime(2026, 1, 1, 0, 11, tzinfo=datetime.UTC).isoformat()
            ),
            "conditions": [
                _condition("Accepted", "Valid"),
                _condition("Succeeded", "Completed", "the image is at " + s3_uri),
            ],
            "attempts": [{"index": 0, "jobName": f"{name}-0", "outcome": "Succeeded"}],
            "timings": {"fetch": 0.4, "inference": 11.5, "upload": 0.2, "total": 14.0},
            "result": result,
        },
        namespace=namespace,
    )


async def fail(
    kube: cluster_client.ClusterClient, name: str, namespace: str, *, reason: str, message: str
) -> dict[str, Any]:
    """The job failed for ``reason``."""
    return await kube.patch_status(
        COMPOSITION_JOBS,
        name,
        {
            "phase": "Failed",
            "completionTime": NOW,
            "conditions": [_condition("Accepted", "Valid"), _condition("Failed", reason, message)],
        },
        namespace=namespace,
    )
