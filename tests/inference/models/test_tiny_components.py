"""The tiny components are written in the published layouts and load through the real loaders."""

from __future__ import annotations

from pathlib import Path

import torch

from compose_inference import adapters, tiny


def test_base_loads_as_an_sdxl_pipeline_with_a_working_tokenizer(
    tiny_models: dict[str, Path],
) -> None:
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_models["base"]))
    assert pipe.tokenizer.model_max_length == 77
    ids = pipe.tokenizer("a cat").input_ids
    assert pipe.tokenizer.decode(ids, skip_special_tokens=True).strip() == "a cat"
    assert ids[0] == pipe.tokenizer.bos_token_id and ids[-1] == pipe.tokenizer.eos_token_id
    text_width = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert text_width == pipe.unet.config.cross_attention_dim


def test_identitynet_is_a_controlnet_matching_the_unet(tiny_models: dict[str, Path]) -> None:
    from diffusers import ControlNetModel, UNet2DConditionModel

    controlnet = ControlNetModel.from_pretrained(str(tiny_models["identitynet"]))
    unet = UNet2DConditionModel.from_pretrained(str(tiny_models["base"]), subfolder="unet")
    assert controlnet.config.cross_attention_dim == unet.config.cross_attention_dim
    assert controlnet.config.block_out_channels == unet.config.block_out_channels


def test_adapters_have_the_published_keys(tiny_models: dict[str, Path]) -> None:
    face = torch.load(str(tiny_models["face_adapter"]), map_location="cpu", weights_only=True)
    assert set(face) == {"image_proj", "ip_adapter"}
    assert face["image_proj"]["latents"].shape[1] == 16  # 16 face tokens
    assert face["image_proj"]["proj_in.weight"].shape[1] == 512  # ArcFace embedding
    assert "layers.3.1.3.weight" in face["image_proj"]
    # InstantID numbers to_k_ip/to_v_ip by attention processor: odd indices are cross-attention.
    assert "1.to_k_ip.weight" in face["ip_adapter"] and "0.to_k_ip.weight" not in face["ip_adapter"]
    weights = adapters.load_adapter_file(tiny_models["clothing_adapter"])
    config = adapters.ResamplerConfig.from_state_dict(weights.image_proj)
    assert config.embedding_dim == tiny.VISION_HIDDEN
    assert config.depth == 4 and config.num_queries == 16


def test_diffusers_core_loader_reads_both_adapters(tiny_models: dict[str, Path]) -> None:
    """diffusers' own IP-Adapter loader accepts our files: the layout is the published one."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_models["base"]))
    for key in ("face_adapter", "clothing_adapter"):
        path = tiny_models[key]
        pipe.load_ip_adapter(
            str(path.parent), subfolder="", weight_name=path.name, image_encoder_folder=None
        )
        layer = pipe.unet.encoder_hid_proj.image_projection_layers[0]
        assert type(layer).__name__ == "IPAdapterPlusImageProjection"
        pipe.unload_ip_adapter()


def test_face_models_route_through_insightface(tiny_models: dict[str, Path]) -> None:
    from insightface.app import FaceAnalysis

    app = FaceAnalysis(name=str(tiny_models["face_analysis"]), providers=["CPUExecutionProvider"])
    assert type(app.models["detection"]).__name__ == "SCRFD"
    assert type(app.models["recognition"]).__name__ == "ArcFaceONNX"
    assert app.models["detection"].use_kps


def test_smoke_profile_points_at_the_tiny_models(tiny_models: dict[str, Path]) -> None:
    profile = tiny.smoke_profile(tiny_models["base"].parent)
    assert profile.name == "smoke" and profile.dtype == "float32"
    assert set(profile.models) == set(tiny_models)
    for name, source in profile.models.items():
        assert Path(source.uri) == tiny_models[name].resolve()
    assert profile.licence.note
