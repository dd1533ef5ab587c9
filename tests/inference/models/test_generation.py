"""End-to-end generation on the CPU at 64x64, 2 steps: determinism and each conditioning."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from PIL import Image
from skimage import data

from compose_inference import faces, pipeline

SHIRT = Image.fromarray(data.coffee())
TROUSERS = Image.fromarray(data.chelsea())
PLACE = Image.fromarray(data.rocket())
OTHER_PLACE = Image.fromarray(data.camera()).convert("RGB")


@pytest.fixture(scope="module")
def request_(person_face: faces.Face, astronaut: Image.Image) -> pipeline.GenerationRequest:
    return pipeline.GenerationRequest(
        face=person_face,
        person=astronaut,
        clothing=[(SHIRT, "upper"), (TROUSERS, "lower")],
        place=PLACE,
        seed=7,
        steps=2,
        width=64,
        height=64,
    )


def _pixels(
    compose: pipeline.ComposePipeline, request: pipeline.GenerationRequest, **changes: object
) -> npt.NDArray[np.int16]:
    result = compose(dataclasses.replace(request, **changes))  # type: ignore[arg-type]
    return np.asarray(result.image, dtype=np.int16)


@pytest.fixture(scope="module")
def reference(
    compose: pipeline.ComposePipeline, request_: pipeline.GenerationRequest
) -> npt.NDArray[np.int16]:
    return _pixels(compose, request_)


def test_generates_an_image_of_the_requested_size_with_timings(
    compose: pipeline.ComposePipeline, request_: pipeline.GenerationRequest
) -> None:
    result = compose(dataclasses.replace(request_, width=64, height=96))
    assert result.image.size == (64, 96) and result.image.mode == "RGB"
    assert result.seed == 7
    assert set(result.timings) == {"encode", "denoise", "decode"}
    assert all(value > 0 for value in result.timings.values())


def test_fixed_seed_gives_identical_pixels(
    compose: pipeline.ComposePipeline,
    request_: pipeline.GenerationRequest,
    reference: npt.NDArray[np.int16],
) -> None:
    assert np.array_equal(_pixels(compose, request_), reference)
    assert not np.array_equal(_pixels(compose, request_, seed=8), reference)


@pytest.mark.parametrize(
    ("strength", "swap"),
    [
        # With strength 0 the branch's input is replaced: the pixels must not move at all.
        ("identity_strength", {"face": "mirrored"}),
        ("clothing_strength", {"clothing": [(OTHER_PLACE, "dress")]}),
        ("place_strength", {"place": OTHER_PLACE}),
    ],
)
def test_each_conditioning_counts_only_when_its_strength_is_not_zero(
    compose: pipeline.ComposePipeline,
    request_: pipeline.GenerationRequest,
    reference: npt.NDArray[np.int16],
    strength: str,
    swap: dict[str, object],
) -> None:
    if swap.get("face") == "mirrored":
        face = request_.face
        swap = {
            "face": dataclasses.replace(
                face, embedding=-face.embedding, kps=face.kps[::-1].copy(), bbox=face.bbox + 10
            )
        }
    off = _pixels(compose, request_, **{strength: 0.0})
    assert np.abs(off - reference).max() > 0, f"{strength} > 0 changed nothing"
    assert np.array_equal(_pixels(compose, request_, **{strength: 0.0}, **swap), off)
    assert not np.array_equal(_pixels(compose, request_, **swap), reference)


def test_all_conditioning_off_still_generates(
    compose: pipeline.ComposePipeline, request_: pipeline.GenerationRequest
) -> None:
    pixels = _pixels(
        compose, request_, identity_strength=0.0, clothing_strength=0.0, place_strength=0.0
    )
    assert pixels.shape == (64, 64, 3)


def test_guidance_one_skips_classifier_free_guidance(
    compose: pipeline.ComposePipeline,
    request_: pipeline.GenerationRequest,
    reference: npt.NDArray[np.int16],
) -> None:
    # Without CFG the negative prompt plays no part.
    first = _pixels(compose, request_, guidance=1.0)
    second = _pixels(compose, request_, guidance=1.0, negative_prompt="something else")
    assert np.array_equal(first, second)
    assert not np.array_equal(first, reference)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width": 62}, "width: 62 is not a positive multiple of 4"),
        ({"height": 0}, "height: 0 is not"),
        ({"steps": 0}, "steps: must be at least 1"),
        ({"identity_strength": -0.1}, r"identity_strength: must be in \[0, 2.0\]"),
        ({"place_strength": 3.0}, "place_strength"),
        ({"seed": 2**32}, "seed"),
        ({"clothing": [(SHIRT, "hat")]}, r"clothing\[0\].category: expected one of"),
    ],
)
def test_bad_requests_are_named(
    compose: pipeline.ComposePipeline,
    request_: pipeline.GenerationRequest,
    changes: dict[str, object],
    message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        compose(dataclasses.replace(request_, **changes))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"scheduler": "magic"}, "options.scheduler"),
        ({"framing": "sideways"}, "options.framing"),
        ({"sdpa": "yes"}, "options.sdpa: expected true or false"),
        ({"size_buckets": [[1024]]}, "options.size_buckets"),
    ],
)
def test_bad_options_are_named(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pipeline.PipelineOptions.parse(options, dtype="float16")


def test_half_precision_defaults_to_an_fp32_vae_decode() -> None:
    assert pipeline.PipelineOptions.parse({}, dtype="float16").vae_fp32_decode
    assert not pipeline.PipelineOptions.parse({}, dtype="float32").vae_fp32_decode


def test_half_precision_runs_with_adapters_in_the_model_dtype(
    tiny_models: dict[str, Path], request_: pipeline.GenerationRequest
) -> None:
    components = {k: v for k, v in tiny_models.items() if k != "face_analysis"}
    half = pipeline.ComposePipeline.load(components, dtype="bfloat16", device="cpu", options={})
    projections = [p for n, p in half.unet.named_parameters() if "to_k_ip" in n]
    assert projections and all(p.dtype == torch.bfloat16 for p in projections)
    assert half.vae.dtype == torch.float32  # decoded in fp32 by default
    assert half(request_).image.size == (64, 64)
