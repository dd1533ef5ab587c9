"""Loaded tiny models shared by the model tests (loading once keeps the suite short)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from compose_inference import faces, pipeline


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    """Tiny models gain nothing from intra-op threads; on a shared 2-core runner they thrash."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def analyzer(tiny_models: dict[str, Path]) -> faces.FaceAnalyzer:
    return faces.FaceAnalyzer.load(tiny_models["face_analysis"])


@pytest.fixture(scope="session")
def person_face(analyzer: faces.FaceAnalyzer, astronaut: Image.Image) -> faces.Face:
    return analyzer.analyze(astronaut)


@pytest.fixture(scope="session")
def compose(tiny_models: dict[str, Path]) -> pipeline.ComposePipeline:
    components = {k: v for k, v in tiny_models.items() if k != "face_analysis"}
    return pipeline.ComposePipeline.load(components, dtype="float32", device="cpu", options={})
