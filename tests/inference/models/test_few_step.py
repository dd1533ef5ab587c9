"""A few-step profile: a LoRA fused into the UNet, trailing timesteps, no CFG pass."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compose_api import models
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
        params=models.Params().model_copy(
            update={"seed": 0, "steps": 2, "guidance": 1.0, "width": 64, "height": 64}
        ),
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


@pytest.mark.parametrize("kind", ["kohya", "diffusers"])
def test_the_fused_unet_equals_diffusers_own_load_lora_weights(
    tiny_models: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    """The fused weights are those of diffusers' ``load_lora_weights`` + ``fuse_lora`` on the
    same UNet: a kohya LoRA of rank 4 and alpha 1 at 1/4 of its raw product, not 4x stronger."""
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    base = tiny_models["base"]
    if kind == "kohya":
        lora = tiny.build_kohya_lora(base, tmp_path / "kohya.safetensors", rank=4, alpha=1.0)
    else:
        lora = tiny.build_lora(base, tmp_path / "lora")
    scale = 0.75
    reference = StableDiffusionXLPipeline.from_pretrained(str(base))
    reference.load_lora_weights(str(lora), adapter_name="ref")
    reference.fuse_lora(lora_scale=scale)
    reference.unload_lora_weights()
    expected = reference.unet.state_dict()

    ours = UNet2DConditionModel.from_pretrained(str(base), subfolder="unet")
    original = {k: v.clone() for k, v in ours.state_dict().items()}
    pipeline._fuse_lora(ours, lora, scale=scale)
    fused = ours.state_dict()
    assert fused.keys() == expected.keys()
    changed = [k for k in fused if not torch.equal(fused[k], original[k])]
    assert changed, "the LoRA changed no weight"
    for key in fused:
        torch.testing.assert_close(fused[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


def test_a_lora_with_text_encoder_layers_is_refused(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file, save_file

    lora = tiny.build_kohya_lora(tiny_models["base"], tmp_path / "k.safetensors")
    import torch

    tensors = load_file(str(lora))
    key = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    tensors[f"{key}.lora_down.weight"] = torch.zeros(4, 32)
    tensors[f"{key}.lora_up.weight"] = torch.zeros(32, 4)
    tensors[f"{key}.alpha"] = torch.tensor(1.0)
    save_file(tensors, str(lora))
    unet = UNet2DConditionModel.from_pretrained(str(tiny_models["base"]), subfolder="unet")
    with pytest.raises(ValueError, match=r"models\.lora: layers for .*text_encoder"):
        pipeline._fuse_lora(unet, lora, scale=1.0)
