"""Fixtures for the inference image's tests: tiny models in the real layouts, real photos.

``tiny_models`` builds every component once per session (a few seconds) with
``compose_inference.tiny.build_tiny_models``; model tests and the end-to-end test share it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Component name -> path of the tiny models (the keys of ``ModelProfile.models``)."""
    from compose_inference import tiny

    return tiny.build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def astronaut() -> Image.Image:
    """A real person photo (512x512) shipped with scikit-image."""
    from skimage import data

    return Image.fromarray(data.astronaut())
