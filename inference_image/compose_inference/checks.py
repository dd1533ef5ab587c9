"""Checks before any model loads: the profile's pipeline options and each job's request.

``runner`` calls :func:`check_request` right after reading the job, before fetching, so a request
the pipeline would refuse (a size outside the compiled buckets, a clothing category the layout
cannot place, clothing without a clothing adapter) fails in milliseconds with the field named as
the API names it (``spec.params.width``, ``spec.inputs.clothing[1].category``), instead of after a
minute of model loading. :class:`PipelineOptions` parses ``ModelProfile.options``;
``pipeline.ComposePipeline`` uses the same two. No torch or diffusers import here: this module
is on the path of every cheap refusal.

Options (``ModelProfile.options``; other keys belong to other stages and are ignored here):
``sdpa`` (true), ``channels_last`` (false), ``vae_fp32_decode`` (default: true unless the dtype
is float32), ``compile`` (false; with ``size_buckets`` the only allowed sizes, since
``torch.compile`` recompiles per resolution, and per number of garments), ``scheduler``
(euler, euler_trailing, ddim, dpmpp_2m, lcm), ``framing`` (full_body, half_body, portrait),
``control_mask`` (true: IdentityNet's residuals *and* the face adapter's attention act on the
face region only), ``few_step_lora_scale`` (1.0; a ``lora`` component is fused into the UNet
when present), ``refine_face`` (false; the face-refinement pass), ``refine_strength`` (0.35, the
img2img strength of that pass), ``refine_size`` (1024, the side the face crop is upscaled to),
``vae_tile_pixels`` (1048576: images with more pixels are decoded in tiles).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from compose_api import models
from compose_inference import errors

SCHEDULERS = ("euler", "euler_trailing", "ddim", "dpmpp_2m", "lcm")
DEFAULT_BUCKETS = ((1024, 1024), (896, 1152), (1152, 896), (832, 1216), (1216, 832))


def _positive_int(options: Mapping[str, Any], key: str, default: int) -> int:
    value = options.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"options.{key}: expected a positive integer, got {value!r}")
    return value


def _bool(options: Mapping[str, Any], key: str, default: bool) -> bool:
    value = options.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"options.{key}: expected true or false, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
    sdpa: bool = True
    channels_last: bool = False
    vae_fp32_decode: bool = True
    compile: bool = False
    size_buckets: tuple[tuple[int, int], ...] = DEFAULT_BUCKETS
    scheduler: str = "euler"
    framing: str = "full_body"
    control_mask: bool = True
    few_step_lora_scale: float = 1.0
    refine_face: bool = False
    refine_strength: float = 0.35
    refine_size: int = 1024
    vae_tile_pixels: int = 1024 * 1024

    @classmethod
    def parse(cls, options: Mapping[str, Any], *, dtype: str) -> PipelineOptions:
        """Validate the pipeline's options; errors name the option and the reason."""
        scheduler = options.get("scheduler", "euler")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"options.scheduler: expected one of {SCHEDULERS}, got {scheduler!r}")
        framing = options.get("framing", "full_body")
        # layout (numpy) is imported only to check a framing other than the default: the
        # default path of a refusal stays free of numpy, cv2 and torch.
        if framing != "full_body" and framing not in _layout().FRAMINGS:
            raise ValueError(
                f"options.framing: expected one of {sorted(_layout().FRAMINGS)}, got {framing!r}"
            )
        raw_buckets = options.get("size_buckets", DEFAULT_BUCKETS)
        try:
            buckets = tuple((int(w), int(h)) for w, h in raw_buckets)
        except (TypeError, ValueError):
            raise ValueError(
                f"options.size_buckets: expected a list of [width, height], got {raw_buckets!r}"
            ) from None
        lora_scale = options.get("few_step_lora_scale", 1.0)
        if not isinstance(lora_scale, int | float) or isinstance(lora_scale, bool):
            raise ValueError(f"options.few_step_lora_scale: expected a number, got {lora_scale!r}")
        refine_strength = options.get("refine_strength", 0.35)
        if (
            not isinstance(refine_strength, int | float)
            or isinstance(refine_strength, bool)
            or not 0.0 < refine_strength <= 1.0
        ):
            raise ValueError(
                f"options.refine_strength: expected a number in (0, 1], got {refine_strength!r}"
            )
        refine_size = _positive_int(options, "refine_size", 1024)
        if refine_size % 8:
            raise ValueError(f"options.refine_size: must be a multiple of 8, got {refine_size}")
        return cls(
            sdpa=_bool(options, "sdpa", True),
            channels_last=_bool(options, "channels_last", False),
            vae_fp32_decode=_bool(options, "vae_fp32_decode", dtype != "float32"),
            compile=_bool(options, "compile", False),
            size_buckets=buckets,
            scheduler=scheduler,
            framing=framing,
            control_mask=_bool(options, "control_mask", True),
            few_step_lora_scale=float(lora_scale),
            refine_face=_bool(options, "refine_face", False),
            refine_strength=float(refine_strength),
            refine_size=refine_size,
            vae_tile_pixels=_positive_int(options, "vae_tile_pixels", 1024 * 1024),
        )


def _layout() -> Any:
    from compose_inference import layout

    return layout


def check_request(
    params: models.Params,
    categories: Sequence[models.ClothingCategory | str | None],
    *,
    options: PipelineOptions,
    has_image_encoder: bool,
    size_multiple: int = 8,
) -> None:
    """Raise errors.InputRejected naming the field (API path) when the pipeline cannot run
    ``params`` with garments of ``categories``. Ranges are the API model's business
    (``models.Params``); these are the pipeline's own limits."""
    problems: list[str] = []
    for name in ("width", "height"):
        value = getattr(params, name)
        if value <= 0 or value % size_multiple:
            problems.append(
                f"spec.params.{name}: {value} is not a positive multiple of {size_multiple}"
            )
    if options.compile and (params.width, params.height) not in options.size_buckets:
        problems.append(
            f"spec.params.width/height: {params.width}x{params.height} is not one of the"
            f" compiled size buckets {[list(b) for b in options.size_buckets]}"
        )
    if params.seed is None:
        problems.append("spec.params.seed: not chosen (the operator or the command sets it)")
    if not has_image_encoder:
        if params.clothing_strength > 0 and categories:
            problems.append(
                "spec.params.clothingStrength: this profile has no clothing_adapter and"
                " image_encoder; set it to 0"
            )
        if params.place_strength > 0:
            problems.append(
                "spec.params.placeStrength: this profile has no clothing_adapter and"
                " image_encoder; set it to 0"
            )
    for index, category in enumerate(categories):
        # The layout's table is keyed on this same enum (tests/inference/models/test_layout.py).
        if category is not None and category not in set(models.ClothingCategory):
            problems.append(
                f"spec.inputs.clothing[{index}].category: expected one of"
                f" {[str(c) for c in models.ClothingCategory]} or none, got {category!r}"
            )
    if problems:
        raise errors.InputRejected("; ".join(problems))
