"""Tiny components in the real on-disk layouts, for the ``smoke`` profile and the tests.

Weights cannot be downloaded everywhere the image must be checked (CI, a laptop, an air-gapped
cluster), so :func:`build_tiny_models` writes every component the pipeline loads, in exactly the
layout the published checkpoints use, with tiny sizes:

- ``base``: an SDXL folder in diffusers layout (unet, vae, text_encoder, text_encoder_2,
  tokenizer, tokenizer_2, scheduler, model_index.json), written by ``save_pretrained``; the
  sizes are diffusers' own fast-test configs. The tokenizers use a byte-level vocabulary (the 256
  byte characters, their ``</w>`` forms and the two special tokens, no merges), so nothing is
  fetched from the hub.
- ``identitynet``: a ControlNet made with ``ControlNetModel.from_unet`` (InstantID's IdentityNet).
- ``face_adapter``: ``ip-adapter.bin`` as InstantID publishes it (Resampler + ``to_k_ip``/
  ``to_v_ip`` per cross-attention layer).
- ``clothing_adapter`` + ``image_encoder``: IP-Adapter SDXL plus (``ip-adapter-plus_sdxl_vit-h.bin``
  layout) and a tiny ``CLIPVisionModelWithProjection``.
- ``safety_checker``: a ``StableDiffusionSafetyChecker`` (tiny CLIP vision tower and projection,
  17 concept and 3 special-care embeddings with their thresholds) in ``safety_checker/`` and its
  CLIP image processor in ``feature_extractor/``, as the Stable Diffusion repositories hold them.
  Its decision is set, not random (:func:`build_safety_checker`): the one built here flags
  nothing; tests build checkers that flag every image, or exactly the images they name.
- ``face_analysis``: an ``antelopev2`` folder with two ONNX models that insightface routes
  exactly like the real ones: ``scrfd_10g_bnkps.onnx`` (9 outputs: scores, boxes and keypoints
  at strides 8/16/32, two anchors) and ``glintr100.onnx`` (112x112 in, 512-d out).

The tiny face detector is not random: it is a fixed, hand-set network, so that a photo with a
face yields one face and a photo without one yields none. On the detector's 640x640 input it
computes a per-pixel *skin* score (R-G between 12 and 60, G-B between 8 and 50, R above 110, on
the 0-255 scale, with soft edges), averages it over 32x32 cells, smooths it over 3x3 cells (about
the size of a face) and keeps local maxima (5x5 cells) where at least ~40 % of the neighbourhood
is skin and the cell shows detail (mean absolute difference from a 5x5 blur; a flat skin-coloured
picture has none). Each kept cell reports a fixed 128x144 box and five keypoints in a frontal
face layout. On ``skimage.data.astronaut()`` this finds the face (around x 175-275, y 60-175);
on grey textures (brick, grass in greyscale), flat colours or landscapes without skin tones it
finds nothing. The recognition model is a random but fixed-seed convolution + linear layer.

Their outputs are noise: they check installation and wiring, never quality.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from compose_api import profiles
from compose_inference import adapters

SEED = 0
TEXT_HIDDEN = 32
CROSS_ATTENTION_DIM = 2 * TEXT_HIDDEN  # both text encoders' hidden states, concatenated
VISION_HIDDEN = 32
DETECTOR_SIZE = 640
RECOGNITION_SIZE = 112
EMBEDDING_DIM = 512

FACE_ADAPTER_FILE = "ip-adapter.bin"  # catalogue.smoke_profile names the same files
CLOTHING_ADAPTER_FILE = "ip-adapter-plus_sdxl_vit-h.bin"
DETECTOR_FILE = "scrfd_10g_bnkps.onnx"
RECOGNITION_FILE = "glintr100.onnx"

TINY_UNET: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (2, 4),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "transformer_layers_per_block": (1, 2),
    "projection_class_embeddings_input_dim": 80,  # 6 time ids x 8 + pooled text (32)
    "cross_attention_dim": CROSS_ATTENTION_DIM,
    "norm_num_groups": 32,
}
TINY_VAE: dict[str, Any] = {
    "block_out_channels": [32, 64],
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "latent_channels": 4,
    "sample_size": 64,
}
TINY_TEXT: dict[str, Any] = {
    "hidden_size": TEXT_HIDDEN,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 5,
    "projection_dim": 32,
    "hidden_act": "gelu",
}
TINY_VISION: dict[str, Any] = {
    "hidden_size": VISION_HIDDEN,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 32,
}
TINY_SAFETY_VISION: dict[str, Any] = {
    "hidden_size": VISION_HIDDEN,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "image_size": 32,
    "patch_size": 8,
}
SAFETY_PROJECTION = 32
SAFETY_CONCEPTS = 17  # StableDiffusionSafetyChecker's fixed numbers of concepts
SAFETY_SPECIAL_CARE = 3
# A threshold above any cosine (at most 1) plus the largest adjustment: the concept never fires.
SAFETY_NEVER = 2.0
# A threshold below any cosine (at least -1) less the largest adjustment: it always fires.
SAFETY_ALWAYS = -2.0
SDXL_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "timestep_spacing": "leading",
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


def _resampler_config(embedding_dim: int) -> adapters.ResamplerConfig:
    return adapters.ResamplerConfig(
        dim=32,
        depth=4,  # as published; diffusers' IP-Adapter loader assumes it too
        heads=1,
        num_queries=16,
        embedding_dim=embedding_dim,
        output_dim=CROSS_ATTENTION_DIM,
        ff_mult=4,  # diffusers' IP-Adapter loader assumes 4, as both published adapters use
        dim_head=64,
    )


def byte_vocabulary() -> dict[str, int]:
    """CLIP's byte-to-unicode alphabet, each also with ``</w>``, plus the two special tokens."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    characters = [chr(code) for code in codes]
    tokens = characters + [f"{c}</w>" for c in characters] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


def write_tokenizer(folder: Path) -> int:
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocabulary = byte_vocabulary()
    vocab_file = folder / "vocab.json"
    merges_file = folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocabulary))
    merges_file.write_text("#version: 0.2\n")
    try:  # transformers >= 5 takes the vocabulary itself, older versions its files
        tokenizer = CLIPTokenizer(vocab=vocabulary, merges=[], model_max_length=77)
    except TypeError:
        tokenizer = CLIPTokenizer(
            vocab_file=str(vocab_file), merges_file=str(merges_file), model_max_length=77
        )
    tokenizer.save_pretrained(str(folder))
    return len(vocabulary)


def _text_config(vocab_size: int) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        max_position_embeddings=77,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        **TINY_TEXT,
    )


def build_base(folder: Path) -> Path:
    """The SDXL base folder (diffusers layout), written by ``save_pretrained``."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(SEED)
    vocab_size = write_tokenizer(folder / "tokenizer")
    write_tokenizer(folder / "tokenizer_2")
    unet = UNet2DConditionModel(**TINY_UNET)
    vae = AutoencoderKL(**TINY_VAE)
    text_encoder = CLIPTextModel(_text_config(vocab_size))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(vocab_size))
    scheduler = EulerDiscreteScheduler(**SDXL_SCHEDULER)
    save_base(
        folder,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        scheduler=scheduler,
        tokenizer_class=CLIPTokenizer.__name__,
    )
    return folder


def save_base(
    folder: Path,
    *,
    unet: Any,
    vae: Any,
    text_encoder: Any,
    text_encoder_2: Any,
    scheduler: Any,
    tokenizer_class: str,
) -> None:
    """Write SDXL's modules in diffusers' folder layout with its ``model_index.json`` (the
    tokenizers are written by the caller into ``tokenizer/`` and ``tokenizer_2/``)."""
    unet.save_pretrained(str(folder / "unet"))
    vae.save_pretrained(str(folder / "vae"))
    text_encoder.save_pretrained(str(folder / "text_encoder"))
    text_encoder_2.save_pretrained(str(folder / "text_encoder_2"))
    scheduler.save_pretrained(str(folder / "scheduler"))
    index = {
        "_class_name": "StableDiffusionXLPipeline",
        "_diffusers_version": _diffusers_version(),
        "force_zeros_for_empty_prompt": True,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "scheduler": ["diffusers", type(scheduler).__name__],
        "text_encoder": ["transformers", type(text_encoder).__name__],
        "text_encoder_2": ["transformers", type(text_encoder_2).__name__],
        "tokenizer": ["transformers", tokenizer_class],
        "tokenizer_2": ["transformers", tokenizer_class],
        "unet": ["diffusers", type(unet).__name__],
        "vae": ["diffusers", type(vae).__name__],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def _diffusers_version() -> str:
    import diffusers

    return str(diffusers.__version__)


def build_identitynet(base: Path, folder: Path) -> Path:
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(base), subfolder="unet")
    torch.manual_seed(SEED + 1)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    controlnet.save_pretrained(str(folder))
    return folder


def build_adapter(base: Path, path: Path, *, embedding_dim: int, seed: int) -> Path:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(base), subfolder="unet")
    state = adapters.random_adapter_state(unet, _resampler_config(embedding_dim), seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, str(path))
    return path


def build_image_encoder(folder: Path) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(SEED + 4)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_VISION))
    encoder.save_pretrained(str(folder))
    return folder


def build_lora(base: Path, folder: Path, *, rank: int = 4) -> Path:
    """A random LoRA for the tiny UNet, saved as diffusers saves SDXL LoRAs (few-step stand-in).

    Not part of :func:`build_tiny_models`: only a few-step profile names a ``lora`` component.
    """
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(str(base), subfolder="unet")
    unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    generator = torch.Generator().manual_seed(SEED + 6)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_" in name:  # peft starts lora_B at zero: give both factors values
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionXLPipeline.save_lora_weights(str(folder), unet_lora_layers=layers)
    return folder / "pytorch_lora_weights.safetensors"


def build_kohya_lora(base: Path, path: Path, *, rank: int = 4, alpha: float = 1.0) -> Path:
    """A random LoRA for the tiny UNet in the kohya-ss layout (``lora_unet_*.lora_down/up`` with
    an ``.alpha`` per module), as many community few-step LoRAs ship: its scale is
    ``alpha / rank``, which a loader that drops the alphas gets wrong."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(str(base), subfolder="unet")
    generator = torch.Generator().manual_seed(SEED + 7)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.rsplit(".", 1)[-1] not in {
            "to_q",
            "to_k",
            "to_v",
        }:
            continue
        if ".attentions." not in name:
            continue
        key = "lora_unet_" + name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = (
            torch.randn((rank, module.in_features), generator=generator) * 0.1
        )
        tensors[f"{key}.lora_up.weight"] = (
            torch.randn((module.out_features, rank), generator=generator) * 0.1
        )
        tensors[f"{key}.alpha"] = torch.tensor(float(alpha))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def build_safety_checker(
    folder: Path,
    *,
    flagged: Sequence[Image.Image] = (),
    passed: Sequence[Image.Image] = (),
    flag_all: bool = False,
) -> Path:
    """A tiny Stable Diffusion safety checker in a pipeline repository's layout:
    ``folder/safety_checker/{config.json, model.safetensors}`` (``save_pretrained``) and
    ``folder/feature_extractor/preprocessor_config.json`` (the keys of the published file, at the
    tiny tower's 32 pixels). Returns ``folder``.

    Its decision is chosen: by default every threshold is above any cosine, so nothing is
    flagged; ``flag_all`` gives concept 0 a threshold below any cosine, so every image is;
    each image of ``flagged`` becomes a concept (its own embedding, computed as
    ``moderation`` computes it) with a threshold halfway between 1 and the highest cosine of any
    ``passed`` image with it, so that the flagged images are flagged and the passed ones are not.
    Raises ValueError when a flagged and a passed image are too alike to separate.
    """
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    from compose_inference import moderation

    if len(flagged) > SAFETY_CONCEPTS:
        raise ValueError(f"flagged: at most {SAFETY_CONCEPTS} images (one concept each)")
    if flag_all and flagged:
        raise ValueError("flag_all: not with flagged (every image is flagged already)")
    processor_folder = folder / moderation.PROCESSOR_FOLDER
    processor_folder.mkdir(parents=True, exist_ok=True)
    size = TINY_SAFETY_VISION["image_size"]
    processor_config = {
        "crop_size": size,
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "size": size,
    }
    (processor_folder / moderation.PROCESSOR_FILE).write_text(
        json.dumps(processor_config, indent=2) + "\n"
    )
    torch.manual_seed(SEED + 8)
    # The checker has no use for CLIP's text tower, but its config carries one (as published).
    text = {"hidden_size": TEXT_HIDDEN, "intermediate_size": 37, "num_attention_heads": 4}
    config = CLIPConfig(
        text_config={**text, "num_hidden_layers": 2},
        vision_config=TINY_SAFETY_VISION,
        projection_dim=SAFETY_PROJECTION,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    generator = torch.Generator().manual_seed(SEED + 9)
    concepts = torch.randn((SAFETY_CONCEPTS, SAFETY_PROJECTION), generator=generator)
    special = torch.randn((SAFETY_SPECIAL_CARE, SAFETY_PROJECTION), generator=generator)
    thresholds = torch.full((SAFETY_CONCEPTS,), SAFETY_NEVER)
    special_thresholds = torch.full((SAFETY_SPECIAL_CARE,), SAFETY_NEVER)
    if flag_all:
        thresholds[0] = SAFETY_ALWAYS
    if flagged:
        processor = moderation.load_processor(processor_folder)
        chosen = moderation.embed(checker, processor, flagged)
        others = moderation.embed(checker, processor, passed) if passed else None
        for index in range(len(flagged)):
            nearest = -1.0 if others is None else float((others @ chosen[index]).max())
            if 1.0 - nearest < 0.01:
                raise ValueError(
                    f"flagged[{index}]: a passed image has cosine {nearest:.4f} with it, too"
                    " close to 1 to be told apart"
                )
            concepts[index] = chosen[index]
            thresholds[index] = (1.0 + nearest) / 2
    with torch.no_grad():
        checker.concept_embeds.copy_(concepts)
        checker.special_care_embeds.copy_(special)
        checker.concept_embeds_weights.copy_(thresholds)
        checker.special_care_embeds_weights.copy_(special_thresholds)
    checker.save_pretrained(str(folder / moderation.CHECKER_FOLDER))
    return folder


# --- face models ------------------------------------------------------------------------------

# Box (left, top, right, bottom distances) and keypoints (x, y pairs) of a detection, in units of
# the 32-pixel stride, relative to the cell's top-left corner: a 128x144 box centred on the cell.
_BOX = (1.5, 1.75, 2.5, 2.75)
_KEYPOINTS = (-0.2, 0.05, 1.2, 0.05, 0.5, 0.7, 0.0, 1.45, 1.0, 1.45)


def _gaussian_kernel() -> np.ndarray:
    offsets = np.arange(-2, 3, dtype=np.float64)
    weights = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / 2.0)
    kernel: np.ndarray = (weights / weights.sum()).reshape(1, 1, 5, 5).astype(np.float32)
    return kernel


def _const(name: str, value: Any) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _detector_graph() -> onnx.ModelProto:
    """The hand-set skin-and-detail detector with the SCRFD output signature (see module doc)."""
    size = DETECTOR_SIZE
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=f"{op.lower()}_{output}", **attrs))
        return output

    def const(name: str, value: Any) -> str:
        inits.append(_const(name, value))
        return name

    def const_int(name: str, value: list[int]) -> str:
        inits.append(numpy_helper.from_array(np.array(value, dtype=np.int64), name))
        return name

    def channel(index: int, name: str) -> str:
        bounds = [
            const_int(f"{part}_{name}", [v])
            for part, v in (("start", index), ("end", index + 1), ("axis", 1))
        ]
        return node("Slice", ["input.1", *bounds], name)

    zero = const("zero", 0.0)
    one = const("one", 1.0)
    sharp = const("sharp", 40.0)  # soft threshold width: 1/40 of the normalised range (~3/255)

    def step(value: str, threshold: float, name: str, *, below: bool = False) -> str:
        """Clip(40 * (value - threshold), 0, 1), or of (threshold - value) when ``below``."""
        t = const(f"t_{name}", threshold)
        diff = node("Sub", [t, value] if below else [value, t], f"d_{name}")
        scaled = node("Mul", [diff, sharp], f"s_{name}")
        return node("Clip", [scaled, zero, one], f"c_{name}")

    # The blob is RGB, (x - 127.5) / 128: a difference of n on the 0-255 scale is n / 128.
    red = channel(0, "red")
    green = channel(1, "green")
    blue = channel(2, "blue")
    red_green = node("Sub", [red, green], "red_green")
    green_blue = node("Sub", [green, blue], "green_blue")
    parts = [
        step(red_green, 12 / 128, "rg_low"),
        step(red_green, 60 / 128, "rg_high", below=True),
        step(green_blue, 8 / 128, "gb_low"),
        step(green_blue, 50 / 128, "gb_high", below=True),
        step(red, (110 - 127.5) / 128, "bright"),
    ]
    skin = parts[0]
    for index, part in enumerate(parts[1:]):
        skin = node("Mul", [skin, part], f"skin_{index}")
    cell = node("AveragePool", [skin], "cell", kernel_shape=[32, 32], strides=[32, 32])
    # Gaussian-weighted skin share around each cell (sigma 1 cell): its maximum is a single cell
    # unless a whole 5x5-cell area is uniformly skin.
    density = node("Conv", [cell, const("gauss", _gaussian_kernel())], "density", pads=[2, 2, 2, 2])
    # Detail: mean |luminance - 5x5 blur| per cell.
    rgb_sum = node("Add", [node("Add", [red, green], "rg_sum"), blue], "rgb_sum")
    luminance = node("Mul", [rgb_sum, const("third", 1 / 3)], "luminance")
    blur = node(
        "AveragePool",
        [luminance],
        "blur",
        kernel_shape=[5, 5],
        strides=[1, 1],
        pads=[2, 2, 2, 2],
        count_include_pad=0,
    )
    detail = node("Abs", [node("Sub", [luminance, blur], "detail_raw")], "detail")
    detail_cell = node(
        "AveragePool", [detail], "detail_cell", kernel_shape=[32, 32], strides=[32, 32]
    )
    detail_gate = node(
        "Clip",
        [
            node(
                "Mul",
                [
                    node("Sub", [detail_cell, const("detail_t", 0.01)], "dg_d"),
                    const("detail_k", 100.0),
                ],
                "dg_s",
            ),
            zero,
            one,
        ],
        "detail_gate",
    )
    peak_max = node(
        "MaxPool", [density], "peak_max", kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2]
    )
    peak_gap = node(
        "Mul", [node("Sub", [peak_max, density], "peak_d"), const("peak_k", 1000.0)], "peak_s"
    )
    peak = node("Clip", [node("Sub", [one, peak_gap], "peak_r"), zero, one], "peak")
    confidence = node(
        "Sigmoid",
        [
            node(
                "Mul",
                [node("Sub", [density, const("density_t", 0.4)], "conf_d"), const("conf_k", 20.0)],
                "conf_s",
            )
        ],
        "confidence",
    )
    score32 = node("Mul", [node("Mul", [confidence, peak], "score_a"), detail_gate], "score_b")

    outputs: dict[str, str] = {}
    grids = (8, 16, 32)
    for stride in grids:
        if stride == 32:
            base = cell
            score = score32
        else:
            base = node(
                "AveragePool",
                [red],
                f"pool{stride}",
                kernel_shape=[stride, stride],
                strides=[stride, stride],
            )
            score = node("Mul", [base, zero], f"score_zero{stride}")
        zeros = node("Mul", [base, zero], f"zeros{stride}")
        both = node("Concat", [score, zeros], f"score_pair{stride}", axis=1)
        box = node(
            "Add",
            [zeros, const(f"box{stride}", np.array(_BOX).reshape(1, 4, 1, 1))],
            f"box_one{stride}",
        )
        kps = node(
            "Add",
            [zeros, const(f"kps{stride}", np.array(_KEYPOINTS).reshape(1, 10, 1, 1))],
            f"kps_one{stride}",
        )
        if stride != 32:
            box = node("Mul", [box, zero], f"box_zero{stride}")
            kps = node("Mul", [kps, zero], f"kps_zero{stride}")
        box_pair = node("Concat", [box, box], f"box_pair{stride}", axis=1)
        kps_pair = node("Concat", [kps, kps], f"kps_pair{stride}", axis=1)
        for kind, tensor, width in (
            ("score", both, 1),
            ("bbox", box_pair, 4),
            ("kps", kps_pair, 10),
        ):
            shape_name = const_int(f"shape_{kind}{stride}", [-1, width])
            transposed = node("Transpose", [tensor], f"t_{kind}{stride}", perm=[0, 2, 3, 1])
            outputs[f"{kind}_{stride}"] = node(
                "Reshape", [transposed, shape_name], f"{kind}_{stride}"
            )

    order = [f"{kind}_{stride}" for kind in ("score", "bbox", "kps") for stride in (8, 16, 32)]
    widths = {"score": 1, "bbox": 4, "kps": 10}
    graph = helper.make_graph(
        nodes,
        "tiny_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, size, size])],
        [
            helper.make_tensor_value_info(
                name,
                TensorProto.FLOAT,
                [(size // int(name.split("_")[1])) ** 2 * 2, widths[name.split("_")[0]]],
            )
            for name in order
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _recognition_graph() -> onnx.ModelProto:
    """A random, fixed-seed 112x112 -> 512 embedding network (ArcFace signature)."""
    rng = np.random.default_rng(SEED + 5)
    conv_w = rng.normal(0, 0.1, size=(8, 3, 8, 8)).astype(np.float32)
    features = 8 * (RECOGNITION_SIZE // 8) ** 2
    fc_w = (rng.normal(0, 1, size=(features, EMBEDDING_DIM)) / np.sqrt(features)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input.1", "conv_w"], ["conv"], name="conv0", strides=[8, 8]),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu0"),
        helper.make_node("Flatten", ["relu"], ["flat"], name="flatten0", axis=1),
        helper.make_node("MatMul", ["flat", "fc_w"], ["embedding"], name="fc0"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", EMBEDDING_DIM])],
        [numpy_helper.from_array(conv_w, "conv_w"), numpy_helper.from_array(fc_w, "fc_w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def build_face_models(folder: Path) -> Path:
    """``antelopev2/`` with a detector and a recognition model insightface routes by signature."""
    folder.mkdir(parents=True, exist_ok=True)
    for model, name in (
        (_detector_graph(), DETECTOR_FILE),
        (_recognition_graph(), RECOGNITION_FILE),
    ):
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, str(folder / name))
    return folder


def build_tiny_models(root: Path) -> dict[str, Path]:
    """Write every tiny component under ``root``; returns component name -> path.

    The names are the keys of ``ModelProfile.models``. Takes a few seconds and ~20 MB.
    """
    root.mkdir(parents=True, exist_ok=True)
    base = build_base(root / "base")
    components = {
        "base": base,
        "identitynet": build_identitynet(base, root / "identitynet"),
        "face_adapter": build_adapter(
            base,
            root / "face_adapter" / FACE_ADAPTER_FILE,
            embedding_dim=EMBEDDING_DIM,
            seed=SEED + 2,
        ),
        "image_encoder": build_image_encoder(root / "image_encoder"),
        "clothing_adapter": build_adapter(
            base,
            root / "clothing_adapter" / CLOTHING_ADAPTER_FILE,
            embedding_dim=VISION_HIDDEN,
            seed=SEED + 3,
        ),
        "safety_checker": build_safety_checker(root / "safety"),
        "face_analysis": build_face_models(root / "antelopev2"),
    }
    return components


def smoke_profile(root: Path) -> profiles.ModelProfile:
    """The built-in ``smoke`` profile for the tiny components under ``root``
    (``catalogue.smoke_profile``: defined there, so that looking it up imports no torch)."""
    from compose_inference import catalogue

    return catalogue.smoke_profile(root)
