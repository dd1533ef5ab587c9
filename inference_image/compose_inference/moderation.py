"""The content safety check: a classifier run on images before they are used or stored.

``runner`` calls it when the profile's ``safety`` block says so (``profiles.SafetyCheck``): on the
input photos right after they are validated (``inputs: true``), before any model for generation
is loaded, and on the generated image before it is encoded and uploaded (``output: true``, the
default of a ``safety`` block). A flagged image raises ``errors.ContentRejected`` (exit code 24,
permanent): the job fails and nothing is uploaded. The message names what was flagged (the input
field, or the generated image) and the checker's concept numbers, never image data.

The classifier is diffusers' ``StableDiffusionSafetyChecker``: a CLIP vision tower with a
projection, 17 concept embeddings and 3 "special care" embeddings, each with its own threshold,
all stored in the weights; its images are prepared by the CLIP image processor saved beside it.
:meth:`SafetyChecker.load` reads either layout:

- a Stable Diffusion pipeline repository: ``safety_checker/`` (``config.json`` and the weights)
  and ``feature_extractor/preprocessor_config.json``, as in ``CompVis/stable-diffusion-v1-4``;
- a checker folder: ``config.json``, the weights and ``preprocessor_config.json`` side by side,
  as in ``CompVis/stable-diffusion-safety-checker``.

How an image is judged (:func:`decide`: the arithmetic of ``StableDiffusionSafetyChecker.forward``
with the profile's ``adjustment`` added; ``a`` below):

1. ``e``: the image's CLIP embedding (vision tower, pooled output, projection);
2. special-care scores ``s_j = round(cos(e, special_j) - special_threshold_j + a, 3)``; when any
   ``s_j > 0`` the image needs special care, and every concept score below gets 0.01 more;
3. concept scores ``c_i = round(cos(e, concept_i) - concept_threshold_i + a [+ 0.01], 3)``;
4. the image is **flagged** when some ``c_i > 0``. A special-care match alone never flags an
   image: it makes the concept test 0.01 stricter.

With ``a = 0`` this is the published checker's decision exactly (a test holds it against
``StableDiffusionSafetyChecker.forward``). A positive ``a`` lowers every threshold by ``a`` (more
images flagged), a negative one raises them. diffusers' pipelines black the flagged image out and
carry on; here the job fails instead, so that no flagged image is ever stored.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from compose_inference import errors

log = logging.getLogger("compose_inference")

# What a special-care match adds to every concept score (StableDiffusionSafetyChecker.forward).
SPECIAL_CARE_BOOST = 0.01
# The folders of a Stable Diffusion pipeline repository that hold the checker and its processor.
CHECKER_FOLDER = "safety_checker"
PROCESSOR_FOLDER = "feature_extractor"
PROCESSOR_FILE = "preprocessor_config.json"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The checker's judgement of one image."""

    concepts: tuple[int, ...]  # the concepts scoring above 0: the image is flagged when any
    special_care: tuple[int, ...]  # the special-care concepts that matched
    top_score: float  # the highest concept score (above 0 when flagged)

    @property
    def flagged(self) -> bool:
        return bool(self.concepts)

    def describe(self) -> str:
        """The concept numbers, in words: ``nsfw concepts 3, 11 (special care: 1)``."""
        text = "nsfw concepts " + ", ".join(str(index) for index in self.concepts)
        if self.special_care:
            text += " (special care: " + ", ".join(str(i) for i in self.special_care) + ")"
        return text


def decide(
    concept_cos: Sequence[float] | np.ndarray,
    concept_thresholds: Sequence[float] | np.ndarray,
    special_cos: Sequence[float] | np.ndarray,
    special_thresholds: Sequence[float] | np.ndarray,
    *,
    adjustment: float = 0.0,
) -> Verdict:
    """The verdict for one image from its cosines with the concept and special-care embeddings
    (see the module docstring for the rule)."""
    concept = np.asarray(concept_cos, dtype=np.float64)
    special = np.asarray(special_cos, dtype=np.float64)
    special_scores = np.round(
        special - np.asarray(special_thresholds, dtype=np.float64) + adjustment, 3
    )
    special_care = tuple(int(index) for index in np.flatnonzero(special_scores > 0))
    boost = SPECIAL_CARE_BOOST if special_care else 0.0
    scores = np.round(
        concept - np.asarray(concept_thresholds, dtype=np.float64) + adjustment + boost, 3
    )
    return Verdict(
        concepts=tuple(int(index) for index in np.flatnonzero(scores > 0)),
        special_care=special_care,
        top_score=float(scores.max()) if scores.size else float("-inf"),
    )


def layout(path: Path) -> tuple[Path, Path]:
    """(checker folder, processor folder) of a pipeline repository or of a checker folder."""
    if (path / CHECKER_FOLDER).is_dir():
        return path / CHECKER_FOLDER, path / PROCESSOR_FOLDER
    return path, path


def load_processor(folder: Path) -> Any:
    """The CLIP image processor saved in ``folder`` (Pillow backend: the image has no
    torchvision)."""
    from transformers import CLIPImageProcessorPil

    if not (folder / PROCESSOR_FILE).is_file():
        raise FileNotFoundError(f"no {PROCESSOR_FILE} in {folder}")
    return CLIPImageProcessorPil.from_pretrained(str(folder))


def embed(model: Any, processor: Any, images: Sequence[Image.Image]) -> torch.Tensor:
    """The checker's unit-length image embeddings (float32), one row per image."""
    parameter = next(model.parameters())
    pixels = processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
    values = pixels["pixel_values"].to(parameter.device, parameter.dtype)
    with torch.no_grad():
        pooled = model.vision_model(values)[1]
        projected = model.visual_projection(pooled)
    return torch.nn.functional.normalize(projected.float(), dim=-1)


class SafetyChecker:
    """A loaded checker with the profile's adjustment; :meth:`judge` gives a verdict per image."""

    def __init__(self, model: Any, processor: Any, *, adjustment: float = 0.0) -> None:
        self.model = model.eval()
        self.processor = processor
        self.adjustment = adjustment

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        adjustment: float = 0.0,
        dtype: str = "float32",
        device: str = "cpu",
        variant: str | None = None,
    ) -> SafetyChecker:
        """Read the checker and its processor from ``path`` (either layout, see the module
        docstring); ``variant`` picks the weights (``fp16``: ``model.fp16.safetensors``)."""
        from diffusers.pipelines.stable_diffusion.safety_checker import (
            StableDiffusionSafetyChecker,
        )

        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {dtype!r}")
        checker_folder, processor_folder = layout(path)
        processor = load_processor(processor_folder)
        placement: dict[str, Any] = {}
        if device.startswith("cuda"):
            placement["device_map"] = device
        model = StableDiffusionSafetyChecker.from_pretrained(
            str(checker_folder), dtype=DTYPES[dtype], variant=variant, **placement
        )
        if not device.startswith("cuda"):
            model = model.to(device)
        return cls(model, processor, adjustment=adjustment)

    def judge(self, images: Sequence[Image.Image]) -> list[Verdict]:
        """One verdict per image, in order."""
        if not images:
            return []
        embeddings = embed(self.model, self.processor, images)
        with torch.no_grad():
            concepts = torch.nn.functional.normalize(self.model.concept_embeds.float(), dim=-1)
            special = torch.nn.functional.normalize(self.model.special_care_embeds.float(), dim=-1)
            concept_cos = (embeddings @ concepts.T).cpu().numpy()
            special_cos = (embeddings @ special.T).cpu().numpy()
            concept_thresholds = self.model.concept_embeds_weights.float().cpu().numpy()
            special_thresholds = self.model.special_care_embeds_weights.float().cpu().numpy()
        return [
            decide(
                concept_cos[row],
                concept_thresholds,
                special_cos[row],
                special_thresholds,
                adjustment=self.adjustment,
            )
            for row in range(len(images))
        ]

    def screen(self, items: Sequence[tuple[str, Image.Image]]) -> None:
        """Judge every ``(label, image)``; raise errors.ContentRejected naming each flagged one
        (``label`` is the API field of an input, or ``the generated image``)."""
        verdicts = self.judge([image for _, image in items])
        flagged: list[str] = []
        for (label, _), verdict in zip(items, verdicts, strict=True):
            log.info(
                "safety check of %s: top concept score %.3f%s",
                label,
                verdict.top_score,
                f", flagged: {verdict.describe()}" if verdict.flagged else "",
            )
            if verdict.flagged:
                flagged.append(f"{label}: flagged by the safety check ({verdict.describe()})")
        if flagged:
            raise errors.ContentRejected("; ".join(flagged))
