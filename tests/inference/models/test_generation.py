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

from compose_api import models
from compose_inference import errors, faces, pipeline

SHIRT = Image.fromarray(data.coffee())
TROUSERS = Image.fromarray(data.chelsea())
PLACE = Image.fromarray(data.rocket())
OTHER_PLACE = Image.fromarray(data.camera()).convert("RGB")


@pytest.fixture(scope="module")
def request_(person_face: faces.Face, astronaut: Image.Image) -> pipeline.GenerationRequest:
    return pipeline.GenerationRequest(
        face=person_face,
        person=astronaut,
        clothing=[
            (SHIRT, models.ClothingCategory.UPPER),
            (TROUSERS, models.ClothingCategory.LOWER),
        ],
        place=PLACE,
        params=tiny_params(seed=7),
    )


def tiny_params(**changes: object) -> models.Params:
    """The API's Params at the tiny models' size (64x64, 2 steps: below the API's minimum, as
    the smoke profile pins it, so set without validation)."""
    return models.Params().model_copy(update={"steps": 2, "width": 64, "height": 64, **changes})


def changed(request: pipeline.GenerationRequest, **changes: object) -> pipeline.GenerationRequest:
    """``request`` with inputs (face, clothing, place) and parameters (the rest) replaced."""
    inputs = {k: v for k, v in changes.items() if k in {"face", "person", "clothing", "place"}}
    params = {k: v for k, v in changes.items() if k not in inputs}
    return dataclasses.replace(  # type: ignore[arg-type]
        request, **inputs, params=request.params.model_copy(update=params)
    )


def _pixels(
    compose: pipeline.ComposePipeline, request: pipeline.GenerationRequest, **changes: object
) -> npt.NDArray[np.int16]:
    result = compose(changed(request, **changes))
    return np.asarray(result.image, dtype=np.int16)


@pytest.fixture(scope="module")
def reference(
    compose: pipeline.ComposePipeline, request_: pipeline.GenerationRequest
) -> npt.NDArray[np.int16]:
    return _pixels(compose, request_)


def test_generates_an_image_of_the_requested_size_with_timings(
    compose: pipeline.ComposePipeline, request_: pipeline.GenerationRequest
) -> None:
    result = compose(changed(request_, width=64, height=96))
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
        ({"width": 62}, r"^spec\.params\.width: 62 is not a positive multiple of 4$"),
        ({"height": 0}, r"^spec\.params\.height: 0 is not"),
        ({"seed": None}, r"^spec\.params\.seed: not chosen"),
        (
            {"clothing": [(SHIRT, "hat")]},
            r"^spec\.inputs\.clothing\[0\]\.category: expected one of",
        ),
    ],
)
def test_bad_requests_are_named(
    compose: pipeline.ComposePipeline,
    request_: pipeline.GenerationRequest,
    changes: dict[str, object],
    message: str,
) -> None:
    with pytest.raises(errors.InputRejected, match=message):
        compose(changed(request_, **changes))


def test_every_api_category_is_placed(
    compose: pipeline.ComposePipeline, request_: pipeline.GenerationRequest
) -> None:
    for category in [*models.ClothingCategory, None]:
        result = compose(changed(request_, clothing=[(SHIRT, category)]))
        assert result.image.size == (64, 64), category


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"scheduler": "magic"}, "options.scheduler"),
        ({"framing": "sideways"}, "options.framing"),
        ({"sdpa": "yes"}, "options.sdpa: expected true or false"),
        ({"size_buckets": [[1024]]}, "options.size_buckets"),
        ({"refine_face": 1}, "options.refine_face: expected true or false"),
        ({"refine_strength": 0}, r"options.refine_strength: expected a number in \(0, 1\]"),
        ({"refine_strength": 1.5}, "options.refine_strength"),
        ({"refine_strength": True}, "options.refine_strength"),
        ({"refine_size": 1020}, "options.refine_size: must be a multiple of 8"),
        ({"refine_size": -8}, "options.refine_size: expected a positive integer"),
        ({"vae_tile_pixels": 0}, "options.vae_tile_pixels: expected a positive integer"),
    ],
)
def test_bad_options_are_named(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pipeline.PipelineOptions.parse(options, dtype="float16")


def test_refinement_options_default_off_and_parse() -> None:
    default = pipeline.PipelineOptions.parse({}, dtype="float16")
    assert (default.refine_face, default.refine_strength, default.refine_size) == (
        False,
        0.35,
        1024,
    )
    assert default.vae_tile_pixels == 1024 * 1024
    chosen = pipeline.PipelineOptions.parse(
        {"refine_face": True, "refine_strength": 1, "refine_size": 512}, dtype="float16"
    )
    assert (chosen.refine_face, chosen.refine_strength, chosen.refine_size) == (True, 1.0, 512)


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


@pytest.fixture(scope="module")
def refining(tiny_models: dict[str, Path]) -> pipeline.ComposePipeline:
    """The tiny pipeline with the face refinement on and tiled decoding above 64x64."""
    components = {k: v for k, v in tiny_models.items() if k != "face_analysis"}
    options = {
        "refine_face": True,
        "refine_size": 64,
        "refine_strength": 0.5,
        "vae_tile_pixels": 64 * 64,
    }
    return pipeline.ComposePipeline.load(components, dtype="float32", device="cpu", options=options)


def test_face_refinement_redraws_only_the_face_crop_with_its_own_timing(
    refining: pipeline.ComposePipeline,
    request_: pipeline.GenerationRequest,
    reference: npt.NDArray[np.int16],
) -> None:
    from compose_inference import layout

    result = refining(request_)
    assert result.unrefined is not None
    assert set(result.timings) == {"encode", "denoise", "decode", "refine"}
    assert result.timings["refine"] > 0
    first = np.asarray(result.unrefined, dtype=np.int16)
    # The first pass is the pipeline's ordinary image: refinement comes after it.
    assert np.array_equal(first, reference)
    refined = np.asarray(result.image, dtype=np.int16)
    canvas = layout.place_face(
        request_.face.bbox, request_.face.kps, width=64, height=64, framing="full_body"
    )
    left, top, right, bottom = layout.face_crop(canvas, grow=pipeline.REFINE_CROP_GROW)
    outside = np.ones(first.shape[:2], dtype=bool)
    outside[top:bottom, left:right] = False
    assert np.array_equal(refined[outside], first[outside])  # nothing moves outside the crop
    assert not np.array_equal(refined[~outside], first[~outside])  # the face crop is redrawn
    # Deterministic for a fixed seed, and off when the identity is off.
    assert np.array_equal(np.asarray(refining(request_).image, dtype=np.int16), refined)
    assert refining(changed(request_, identity_strength=0.0)).unrefined is None


def test_the_face_adapter_stream_is_masked_to_the_face_region(
    compose: pipeline.ComposePipeline, request_: pipeline.GenerationRequest
) -> None:
    from compose_inference import layout

    canvas = layout.place_face(
        request_.face.bbox, request_.face.kps, width=64, height=64, framing="full_body"
    )
    tokens = compose.encode_face(request_.face.embedding, cfg=True)
    identity = compose._identity(tokens, canvas, (32, 32), 0.8, True)
    (stream,) = identity.streams
    assert stream.adapter == "face" and stream.masks is not None
    region = layout.face_mask(canvas)
    for length, mask in stream.masks.items():
        assert 0 < float(mask.sum()) < length  # some of the canvas, not all of it
    full = stream.masks[32 * 32].reshape(32, 32)
    coarse = torch.from_numpy(region)[None, None]
    expected = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="area")[0, 0]
    assert torch.allclose(full, expected)


def test_large_images_are_decoded_in_tiles(
    refining: pipeline.ComposePipeline,
    compose: pipeline.ComposePipeline,
    request_: pipeline.GenerationRequest,
) -> None:
    latents = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    tiled = np.asarray(refining._decode(latents), dtype=np.int16)  # 128x128 > 64x64: tiles
    whole = np.asarray(compose._decode(latents), dtype=np.int16)
    assert tiled.shape == whole.shape == (128, 128, 3)
    assert not np.array_equal(tiled, whole)  # the tiled path ran (tile seams blended)
    assert not refining.vae.use_tiling  # switched back off after the decode
    small = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    assert np.array_equal(  # at or below the threshold: one pass, the same pixels
        np.asarray(refining._decode(small)), np.asarray(compose._decode(small))
    )
