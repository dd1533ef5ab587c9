"""Small builders shared by the emulator tests."""

from __future__ import annotations

from typing import Any


def cj(name: str, *, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    """A CompositionJob body (the emulator does not validate the spec)."""
    return {
        "apiVersion": "compose.nextunicorn.dev/v1alpha1",
        "kind": "CompositionJob",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec or {"profile": "instantid-sdxl"},
    }
