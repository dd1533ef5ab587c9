"""A few-step profile: a LoRA fused into the UNet, trailing timesteps, no CFG pass."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from compose_inference import faces, pipeline, tiny


def test_few_step_lora_is_fused_and_changes_the_output(
    tiny_models: dict[str, Path],
    tmp_path: Path,
    person_face: faces.Face,
    astronaut: Image.Image,
    compose: pipeline.ComposePipeline,
) -> None:
    lora = tiny.build_lora(tiny_models["base"], tmp_path / "lora")
    components = {k: v for k, v in tiny_models.items() if k != "face_analysis"}
    options = {"scheduler": "euler_trailing"}
    fused = pipeline.ComposePipeline.load(
        {**components, "lora": lora}, dtype="float32", device="cpu", options=options
    )
    plain = pipeline.ComposePipeline.load(
        components, dtype="float32", device="cpu", options=options
    )
    request = pipeline.GenerationRequest(
        face=person_face,
        person=astronaut,
        clothing=[(astronaut, None)],
        place=astronaut,
        steps=2,
        guidance=1.0,
        width=64,
        height=64,
    )
    with_lora = np.asarray(fused(request).image, dtype=np.int16)
    without = np.asarray(plain(request).image, dtype=np.int16)
    assert not np.array_equal(with_lora, without)
    # The LoRA is fused, not left as extra layers: the UNet has no LoRA modules.
    assert not any("lora" in name for name, _ in fused.unet.named_modules())
    assert np.array_equal(np.asarray(fused(request).image, dtype=np.int16), with_lora)
    # Trailing timesteps are not the default schedule.
    default = np.asarray(compose(dataclasses.replace(request)).image, dtype=np.int16)
    assert not np.array_equal(default, without)
