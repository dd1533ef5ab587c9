"""Generation: SDXL + InstantID (IdentityNet and face adapter) + clothing and place conditioning.

``runner`` loads one :class:`ComposePipeline` per process (:meth:`ComposePipeline.load`) and calls
it once per job with a :class:`GenerationRequest`; the benchmark builds it from in-memory modules.

Why our own loop: diffusers' ``StableDiffusionXLControlNetPipeline`` feeds the ControlNet the text
embeddings, while InstantID's IdentityNet must see the 16 face tokens; diffusers' InstantID is a
community pipeline that no longer runs. So the denoising loop below is written with diffusers'
building blocks (UNet, ControlNet, VAE, schedulers, CLIP encoders) and our own attention
processors (``adapters.ComposeAttnProcessor``).

Conditioning:

- Identity: the ArcFace embedding -> Resampler -> 16 face tokens. They go (a) to IdentityNet as its
  cross-attention context, with the five keypoints drawn on black as control image, its residuals
  masked to the face region and scaled by ``identity_strength``, and (b) to the UNet through the
  decoupled face attention with scale ``identity_strength``. The CFG negative is the Resampler
  applied to an all-zero embedding, as InstantID does.
- Clothing: each garment photo -> CLIP image encoder (penultimate hidden states) -> the
  IP-Adapter plus Resampler -> 16 tokens, attended with scale ``clothing_strength`` and masked to
  the garment's body region (``layout.garment_mask``; one stream per garment so that a shirt and
  trousers land in different places). CFG negative: the tokens of an all-zero image.
- Place: the place photo goes through the same image encoder and adapter, masked to the
  background (``layout.background_mask``), scale ``place_strength``. We chose this *scene
  embedding* over compositing the person onto the place photo and inpainting the seam because
  compositing needs a person matte of a person that does not exist yet (the pose is generated),
  a matting model and a relighting pass (two more large models on a 24 GB card), and it freezes
  the camera of the place photo; the embedding costs one encoder pass and one extra attention
  term per layer, keeps one denoising pass, and lets the model render the person lit by the
  scene. Its weakness: the place is reproduced in style and content, not pixel for pixel.

A strength of zero skips its branch entirely (no ControlNet call, no attention term), so it
contributes exactly nothing. A fixed seed gives the same image: the initial noise and every
scheduler draw come from one ``torch.Generator`` on the pipeline's device.

Face refinement (option ``refine_face``): at full-body framing the face is about 1/9 of the
canvas (~114 px at 1024²), too small for IdentityNet, whose checkpoints are made for portraits.
So, as ADetailer-style tools do for InstantID, a second pass crops the face region of the first
result, upscales it to ``refine_size``, runs InstantID img2img on it (same face tokens, keypoints
moved into the crop, ``refine_strength`` of the schedule) and blends it back with a feathered
mask. Its time is reported apart (``timings["refine"]``) and it is a span of its own (inside the
run's ``generate``), and the unrefined image is returned too so that the runner can report the
identity similarity before and after.

Large sizes: above ``vae_tile_pixels`` (1024² by default) the VAE decodes in overlapping tiles
(diffusers' tiled decoding), so 2048² needs about the decoder memory of 1024² instead of 4x.

Options and request checks live in ``checks`` (no torch there, so refusals stay cheap).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from compose_api import models, tracing
from compose_inference import adapters, checks, faces, layout

# Re-exported: the options are parsed (without torch) in ``checks``.
PipelineOptions = checks.PipelineOptions
SCHEDULERS = checks.SCHEDULERS
DEFAULT_BUCKETS = checks.DEFAULT_BUCKETS
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The face crop of the refinement pass: the placed face box grown by this factor (a square), and
# the feathered edge of the blend, as a share of the crop side.
REFINE_CROP_GROW = 2.0
REFINE_FEATHER = 0.12


@dataclasses.dataclass
class GenerationRequest:
    """One image to generate: the inputs, and the job's ``models.Params`` (the only parameter
    type: its fields, defaults and bounds are the API's). ``params.seed`` must be set."""

    face: faces.Face
    person: Image.Image
    clothing: list[tuple[Image.Image, models.ClothingCategory | None]]
    place: Image.Image
    params: models.Params = dataclasses.field(default_factory=lambda: models.Params(seed=0))

    @property
    def seed(self) -> int:
        if self.params.seed is None:
            raise ValueError("spec.params.seed: not chosen")
        return self.params.seed

    def with_seed(self, seed: int) -> GenerationRequest:
        return dataclasses.replace(self, params=self.params.model_copy(update={"seed": seed}))


@dataclasses.dataclass
class GenerationResult:
    image: Image.Image
    seed: int
    timings: dict[str, float]  # seconds per step: encode, denoise, decode (and refine)
    unrefined: Image.Image | None = None  # the first pass, when the face was refined


def _make_scheduler(base: Any, name: str) -> Any:
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        LCMScheduler,
    )

    config = base.config
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    if name == "euler_trailing":
        return EulerDiscreteScheduler.from_config(config, timestep_spacing="trailing")
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "dpmpp_2m":
        return DPMSolverMultistepScheduler.from_config(config)
    return LCMScheduler.from_config(config)


def _place(module: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move to the device; cast only when needed (loaded weights already have their dtype)."""
    if getattr(module, "dtype", None) != dtype:
        return module.to(device=device, dtype=dtype)
    return module.to(device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ComposePipeline:
    """Models loaded once; ``__call__`` generates one image per request (not thread-safe)."""

    def __init__(
        self,
        *,
        unet: Any,
        vae: Any,
        text_encoder: Any,
        text_encoder_2: Any,
        tokenizer: Any,
        tokenizer_2: Any,
        scheduler: Any,
        controlnet: Any,
        face_adapter: adapters.AdapterWeights,
        image_encoder: Any | None = None,
        clothing_adapter: adapters.AdapterWeights | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        options: PipelineOptions | None = None,
    ) -> None:
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {dtype!r}")
        if (image_encoder is None) != (clothing_adapter is None):
            raise ValueError(
                "models: image_encoder and clothing_adapter come together (both or neither)"
            )
        self.options = options or PipelineOptions.parse({}, dtype=dtype)
        self.device = torch.device(device)
        self.dtype = DTYPES[dtype]
        vae_dtype = torch.float32 if self.options.vae_fp32_decode else self.dtype
        named = {"face": face_adapter}
        if clothing_adapter is not None:
            named["clothing"] = clothing_adapter
        adapters.install_processors(unet, named, sdpa=self.options.sdpa)
        controlnet.set_attn_processor(AttnProcessor2_0() if self.options.sdpa else AttnProcessor())
        vae.set_attn_processor(AttnProcessor2_0() if self.options.sdpa else AttnProcessor())

        self.unet = _place(unet, self.device, self.dtype).eval()
        self.controlnet = _place(controlnet, self.device, self.dtype).eval()
        self.vae = _place(vae, self.device, vae_dtype).eval()
        self.text_encoder = _place(text_encoder, self.device, self.dtype).eval()
        self.text_encoder_2 = _place(text_encoder_2, self.device, self.dtype).eval()
        self.tokenizer = tokenizer
        self.tokenizer_2 = tokenizer_2
        self.scheduler = _make_scheduler(scheduler, self.options.scheduler)
        self.face_resampler = adapters.build_resampler(face_adapter).to(self.device, self.dtype)
        self.image_encoder = (
            _place(image_encoder, self.device, self.dtype).eval()
            if image_encoder is not None
            else None
        )
        self.clothing_resampler = (
            adapters.build_resampler(clothing_adapter).to(self.device, self.dtype)
            if clothing_adapter is not None
            else None
        )
        if self.options.channels_last:
            for module in (self.unet, self.controlnet, self.vae):
                module.to(memory_format=torch.channels_last)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.levels = len(self.unet.config.block_out_channels)
        self.size_multiple = self.vae_scale_factor * 2 ** (self.levels - 1)
        self._unet_call: Any = self.unet
        self._controlnet_call: Any = self.controlnet
        if self.options.compile:
            self._unet_call = torch.compile(self.unet, dynamic=False)
            self._controlnet_call = torch.compile(self.controlnet, dynamic=False)

    @classmethod
    def load(
        cls,
        components: Mapping[str, Path],
        *,
        dtype: str,
        device: str,
        options: Mapping[str, Any],
        variants: Mapping[str, str | None] | None = None,
    ) -> ComposePipeline:
        """Load every component from its folder/file (the names of ``ModelProfile.models``).

        ``variants`` (component name -> ``ModelSource.variant``) picks the weights files: the
        ``fp16`` variant of ``base`` loads ``unet/diffusion_pytorch_model.fp16.safetensors`` and
        both text encoders' ``model.fp16.safetensors``, half the download of the fp32 files.

        Needs ``base``, ``identitynet`` and ``face_adapter``; ``vae`` replaces the base's VAE (an
        fp16-fixed VAE); ``image_encoder`` with ``clothing_adapter`` enables clothing and place;
        ``lora`` (a few-step LoRA file, e.g. SDXL-Lightning) is fused into the UNet.
        """
        from diffusers import (
            AutoencoderKL,
            ControlNetModel,
            EulerDiscreteScheduler,
            UNet2DConditionModel,
        )
        from transformers import (
            CLIPTextModel,
            CLIPTextModelWithProjection,
            CLIPTokenizer,
            CLIPVisionModelWithProjection,
        )

        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {dtype!r}")
        missing = [
            name for name in ("base", "identitynet", "face_adapter") if name not in components
        ]
        if missing:
            raise ValueError(f"models: missing component(s) {missing}")
        parsed = PipelineOptions.parse(options, dtype=dtype)
        torch_dtype = DTYPES[dtype]
        vae_dtype = torch.float32 if parsed.vae_fp32_decode else torch_dtype
        # Safetensors go straight to the GPU: g5.xlarge has 16 GiB of RAM for ~7 GB of weights.
        placement: dict[str, Any] = {"low_cpu_mem_usage": True}
        if device.startswith("cuda"):
            placement["device_map"] = device
        chosen = dict(variants or {})
        base = str(components["base"])
        base_variant = chosen.get("base")
        unet = UNet2DConditionModel.from_pretrained(
            base, subfolder="unet", torch_dtype=torch_dtype, variant=base_variant, **placement
        )
        if "vae" in components:
            vae = AutoencoderKL.from_pretrained(
                str(components["vae"]),
                torch_dtype=vae_dtype,
                variant=chosen.get("vae"),
                **placement,
            )
        else:
            vae = AutoencoderKL.from_pretrained(
                base, subfolder="vae", torch_dtype=vae_dtype, variant=base_variant, **placement
            )
        controlnet = ControlNetModel.from_pretrained(
            str(components["identitynet"]),
            torch_dtype=torch_dtype,
            variant=chosen.get("identitynet"),
            **placement,
        )
        if "lora" in components:
            _fuse_lora(unet, components["lora"], scale=parsed.few_step_lora_scale)
        image_encoder = None
        clothing_adapter = None
        if "clothing_adapter" in components or "image_encoder" in components:
            if not {"clothing_adapter", "image_encoder"} <= set(components):
                raise ValueError("models: image_encoder and clothing_adapter come together")
            image_encoder = CLIPVisionModelWithProjection.from_pretrained(
                str(components["image_encoder"]),
                dtype=torch_dtype,
                variant=chosen.get("image_encoder"),
            )
            clothing_adapter = adapters.load_adapter_file(Path(components["clothing_adapter"]))
        return cls(
            unet=unet,
            vae=vae,
            text_encoder=CLIPTextModel.from_pretrained(
                base, subfolder="text_encoder", dtype=torch_dtype, variant=base_variant
            ),
            text_encoder_2=CLIPTextModelWithProjection.from_pretrained(
                base, subfolder="text_encoder_2", dtype=torch_dtype, variant=base_variant
            ),
            tokenizer=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer"),
            tokenizer_2=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer_2"),
            scheduler=EulerDiscreteScheduler.from_pretrained(base, subfolder="scheduler"),
            controlnet=controlnet,
            face_adapter=adapters.load_adapter_file(Path(components["face_adapter"])),
            image_encoder=image_encoder,
            clothing_adapter=clothing_adapter,
            device=device,
            dtype=dtype,
            options=parsed,
        )

    # --- steps ----------------------------------------------------------------------------------

    def check_request(self, request: GenerationRequest) -> None:
        """Concise errors naming the field (``checks.check_request``), not silent correction."""
        checks.check_request(
            request.params,
            [category for _, category in request.clothing],
            options=self.options,
            has_image_encoder=self.image_encoder is not None,
            size_multiple=self.size_multiple,
        )

    def encode_prompt(
        self, prompt: str, negative: str, *, cfg: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL text conditioning: both encoders' penultimate states and the pooled embedding."""

        def encode(text: str) -> tuple[torch.Tensor, torch.Tensor]:
            states = []
            pooled = torch.empty(0)
            for tokenizer, encoder in (
                (self.tokenizer, self.text_encoder),
                (self.tokenizer_2, self.text_encoder_2),
            ):
                ids = tokenizer(
                    text,
                    padding="max_length",
                    max_length=tokenizer.model_max_length,
                    truncation=True,
                    return_tensors="pt",
                ).input_ids.to(self.device)
                output = encoder(ids, output_hidden_states=True)
                states.append(output.hidden_states[-2])
                pooled = output[0]
            return torch.cat(states, dim=-1), pooled

        embeds, pooled = encode(prompt)
        if not cfg:
            return embeds, pooled
        if negative:
            negative_embeds, negative_pooled = encode(negative)
        else:  # SDXL's force_zeros_for_empty_prompt
            negative_embeds, negative_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
        return torch.cat([negative_embeds, embeds]), torch.cat([negative_pooled, pooled])

    def encode_face(self, embedding: np.ndarray, *, cfg: bool) -> torch.Tensor:
        """16 face tokens from the raw ArcFace embedding; the CFG negative is a zero embedding."""
        values = torch.as_tensor(np.asarray(embedding, dtype=np.float32), device=self.device)
        values = values.reshape(1, 1, -1).to(self.dtype)
        if cfg:
            values = torch.cat([torch.zeros_like(values), values])
        tokens: torch.Tensor = self.face_resampler(values)
        return tokens

    def _pixels(self, image: Image.Image) -> torch.Tensor:
        assert_encoder = self.image_encoder
        if assert_encoder is None:
            raise ValueError("models: no image_encoder loaded")
        size = int(assert_encoder.config.image_size)
        fitted = ImageOps.fit(image.convert("RGB"), (size, size), Image.Resampling.BICUBIC)
        array: Any = np.asarray(fitted, dtype=np.float32) / 255.0
        array = (array - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(
            CLIP_STD, dtype=np.float32
        )
        return torch.from_numpy(array).permute(2, 0, 1)[None].to(self.device, self.dtype)

    def encode_image(self, image: Image.Image, *, cfg: bool) -> torch.Tensor:
        """IP-Adapter plus tokens of one photo; the CFG negative is an all-zero image."""
        if self.image_encoder is None or self.clothing_resampler is None:
            raise ValueError("models: no image_encoder/clothing_adapter loaded")
        pixels = self._pixels(image)
        if cfg:
            pixels = torch.cat([torch.zeros_like(pixels), pixels])
        states = self.image_encoder(pixels, output_hidden_states=True).hidden_states[-2]
        tokens: torch.Tensor = self.clothing_resampler(states)
        return tokens

    def _level_masks(self, mask: np.ndarray, latent_hw: tuple[int, int]) -> dict[int, torch.Tensor]:
        """One ``(1, length, 1)`` weight per UNet resolution, keyed by the sequence length."""
        tensor = torch.from_numpy(mask)[None, None].to(self.device, torch.float32)
        result: dict[int, torch.Tensor] = {}
        for level in range(self.levels):
            h, w = latent_hw[0] // 2**level, latent_hw[1] // 2**level
            resized = F.interpolate(tensor, size=(h, w), mode="area")
            result[h * w] = resized.reshape(1, h * w, 1).to(self.dtype)
        return result

    @torch.no_grad()
    def __call__(
        self, request: GenerationRequest, *, interrupt: Callable[[], None] | None = None
    ) -> GenerationResult:
        """Generate one image. ``interrupt`` is called before every denoising step (of both
        passes) and stops the generation by raising (a worker whose job was taken back)."""
        timings: dict[str, float] = {}
        started = time.perf_counter()

        # 1. Check inputs.
        self.check_request(request)
        params = request.params
        cfg = params.guidance > 1.0
        width, height = params.width, params.height
        latent_hw = (height // self.vae_scale_factor, width // self.vae_scale_factor)

        # 2. Lay out the canvas: the face's place, the control image, the regions.
        canvas = layout.place_face(
            request.face.bbox,
            request.face.kps,
            width=width,
            height=height,
            framing=self.options.framing,
        )

        # 3. Encode the prompt.
        text_embeds, pooled = self.encode_prompt(params.prompt, params.negative_prompt, cfg=cfg)

        # 4. Encode the images: face tokens, keypoint image, garments, place.
        face_tokens = (
            self.encode_face(request.face.embedding, cfg=cfg)
            if params.identity_strength > 0
            else None
        )
        identity = self._identity(face_tokens, canvas, latent_hw, params.identity_strength, cfg)
        streams = list(identity.streams)
        if params.clothing_strength > 0:
            for garment, category in request.clothing:
                streams.append(
                    adapters.ImageStream(
                        "clothing",
                        self.encode_image(garment, cfg=cfg),
                        params.clothing_strength,
                        self._level_masks(layout.garment_mask(canvas, category), latent_hw),
                    )
                )
        if params.place_strength > 0:
            streams.append(
                adapters.ImageStream(
                    "clothing",
                    self.encode_image(request.place, cfg=cfg),
                    params.place_strength,
                    self._level_masks(layout.background_mask(canvas), latent_hw),
                )
            )
        _synchronize(self.device)
        timings["encode"] = time.perf_counter() - started

        # 5. Prepare the timesteps and the initial noise.
        from diffusers.utils.torch_utils import randn_tensor

        started = time.perf_counter()
        generator = torch.Generator(device=self.device).manual_seed(request.seed)
        self.scheduler.set_timesteps(params.steps, device=self.device)
        channels = self.unet.config.in_channels
        latents = randn_tensor(
            (1, channels, *latent_hw), generator=generator, device=self.device, dtype=self.dtype
        )
        latents = latents * self.scheduler.init_noise_sigma

        # 6. Denoise.
        latents = self._denoise(
            latents,
            self.scheduler.timesteps,
            _Conditioning(text_embeds, pooled, (height, width), identity, streams),
            guidance=params.guidance,
            cfg=cfg,
            generator=generator,
            interrupt=interrupt,
        )
        _synchronize(self.device)
        timings["denoise"] = time.perf_counter() - started

        # 7. Decode.
        started = time.perf_counter()
        image = self._decode(latents)
        _synchronize(self.device)
        timings["decode"] = time.perf_counter() - started

        # 8. Refine the face (its own pass and timing).
        unrefined = None
        if self.options.refine_face and face_tokens is not None:
            started = time.perf_counter()
            unrefined = image
            with tracing.span("refine"):
                image = self._refine_face(
                    image,
                    canvas,
                    face_tokens,
                    text_embeds,
                    pooled,
                    params,
                    generator,
                    cfg=cfg,
                    interrupt=interrupt,
                )
                _synchronize(self.device)
            timings["refine"] = time.perf_counter() - started
        return GenerationResult(
            image=image, seed=request.seed, timings=timings, unrefined=unrefined
        )

    # --- the parts both passes share ------------------------------------------------------

    def _identity(
        self,
        face_tokens: torch.Tensor | None,
        canvas: layout.Canvas,
        latent_hw: tuple[int, int],
        strength: float,
        cfg: bool,
    ) -> _Identity:
        """IdentityNet's control image and region, and the face adapter's stream: both masked
        to the face region when ``control_mask`` is on (InstantID's face-region mode), so the
        face tokens do not pull the body, the clothes and the place toward a close-up."""
        if face_tokens is None:
            return _Identity()
        batch = face_tokens.shape[0]
        keypoints = np.asarray(layout.draw_keypoints(canvas), dtype=np.float32) / 255.0
        control = torch.from_numpy(keypoints).permute(2, 0, 1)[None]
        control = control.to(self.device, self.dtype).repeat(batch, 1, 1, 1)
        control_masks = None
        stream_masks = None
        if self.options.control_mask:
            region = layout.face_mask(canvas)
            control_masks = torch.from_numpy(region)[None, None].to(self.device, self.dtype)
            stream_masks = self._level_masks(region, latent_hw)
        stream = adapters.ImageStream("face", face_tokens, strength, stream_masks)
        return _Identity(face_tokens, control, control_masks, strength, (stream,))

    def _denoise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        conditioning: _Conditioning,
        *,
        guidance: float,
        cfg: bool,
        generator: torch.Generator,
        interrupt: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        text_embeds = conditioning.text_embeds
        batch = text_embeds.shape[0]
        height, width = conditioning.size
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=self.dtype)
        added_cond = {
            "text_embeds": conditioning.pooled,
            "time_ids": time_ids.to(self.device).repeat(batch, 1),
        }
        streams = conditioning.streams
        attention_kwargs = {"image_streams": streams} if streams else None
        identity = conditioning.identity
        for timestep in timesteps:
            if interrupt is not None:
                interrupt()
            model_input = torch.cat([latents] * 2) if cfg else latents
            model_input = self.scheduler.scale_model_input(model_input, timestep)
            down_residuals = mid_residual = None
            if identity.tokens is not None and identity.control is not None:
                down_residuals, mid_residual = self._controlnet_call(
                    model_input,
                    timestep,
                    encoder_hidden_states=identity.tokens,
                    controlnet_cond=identity.control,
                    conditioning_scale=identity.strength,
                    added_cond_kwargs=added_cond,
                    return_dict=False,
                )
                masks = identity.control_masks
                if masks is not None:
                    down_residuals = [
                        r * F.interpolate(masks, size=r.shape[-2:], mode="area")
                        for r in down_residuals
                    ]
                    mid_residual = mid_residual * F.interpolate(
                        masks, size=mid_residual.shape[-2:], mode="area"
                    )
            noise = self._unet_call(
                model_input,
                timestep,
                encoder_hidden_states=text_embeds,
                added_cond_kwargs=added_cond,
                cross_attention_kwargs=attention_kwargs,
                down_block_additional_residuals=down_residuals,
                mid_block_additional_residual=mid_residual,
                return_dict=False,
            )[0]
            if cfg:
                negative, positive = noise.chunk(2)
                noise = negative + guidance * (positive - negative)
            latents = self.scheduler.step(noise, timestep, latents, generator=generator).prev_sample
        return latents

    @torch.no_grad()
    def _decode(self, latents: torch.Tensor) -> Image.Image:
        """Latents to an image; in tiles above ``vae_tile_pixels`` (bounded decoder memory)."""
        pixels_out = latents.shape[-2] * latents.shape[-1] * self.vae_scale_factor**2
        tiled = pixels_out > self.options.vae_tile_pixels
        if tiled:
            self.vae.enable_tiling()
        try:
            latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
            decoded = self.vae.decode(latents, return_dict=False)[0]
        finally:
            if tiled:
                self.vae.disable_tiling()
        pixels = (decoded / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).float().cpu().numpy()
        return Image.fromarray(np.round(pixels * 255).astype(np.uint8))

    def _encode_latents(self, image: Image.Image) -> torch.Tensor:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
        pixels = torch.from_numpy(array).permute(2, 0, 1)[None].to(self.device, self.vae.dtype)
        latents: torch.Tensor = self.vae.encode(pixels).latent_dist.mode()
        scaled: torch.Tensor = latents * float(self.vae.config.scaling_factor)
        return scaled.to(self.dtype)

    def _refine_face(
        self,
        image: Image.Image,
        canvas: layout.Canvas,
        face_tokens: torch.Tensor,
        text_embeds: torch.Tensor,
        pooled: torch.Tensor,
        params: models.Params,
        generator: torch.Generator,
        *,
        cfg: bool,
        interrupt: Callable[[], None] | None = None,
    ) -> Image.Image:
        """Crop the face region, upscale it, run InstantID img2img on it, blend it back."""
        box = layout.face_crop(canvas, grow=REFINE_CROP_GROW)
        size = self.options.refine_size - self.options.refine_size % self.size_multiple
        crop = image.crop(box).resize((size, size), Image.Resampling.LANCZOS)
        crop_canvas = layout.crop_canvas(canvas, box, size=size)
        latent_hw = (size // self.vae_scale_factor, size // self.vae_scale_factor)
        identity = self._identity(
            face_tokens, crop_canvas, latent_hw, params.identity_strength, cfg
        )
        # img2img as diffusers does it: the last ``strength`` of the schedule, from the crop.
        self.scheduler.set_timesteps(params.steps, device=self.device)
        kept = min(params.steps, max(1, round(params.steps * self.options.refine_strength)))
        begin = (params.steps - kept) * self.scheduler.order
        timesteps = self.scheduler.timesteps[begin:]
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(begin)
        from diffusers.utils.torch_utils import randn_tensor

        clean = self._encode_latents(crop)
        noise = randn_tensor(clean.shape, generator=generator, device=self.device, dtype=self.dtype)
        latents = self.scheduler.add_noise(clean, noise, timesteps[:1])
        latents = self._denoise(
            latents,
            timesteps,
            _Conditioning(text_embeds, pooled, (size, size), identity, identity.streams),
            guidance=params.guidance,
            cfg=cfg,
            generator=generator,
            interrupt=interrupt,
        )
        refined = self._decode(latents).resize(
            (box[2] - box[0], box[3] - box[1]), Image.Resampling.LANCZOS
        )
        mask = layout.feathered_mask(refined.size, feather=REFINE_FEATHER)
        result = image.copy()
        result.paste(refined, box[:2], mask)
        return result


@dataclasses.dataclass(frozen=True)
class _Identity:
    """The identity conditioning of one pass (nothing when the identity strength is 0)."""

    tokens: torch.Tensor | None = None
    control: torch.Tensor | None = None
    control_masks: torch.Tensor | None = None
    strength: float = 0.0
    streams: tuple[adapters.ImageStream, ...] = ()


@dataclasses.dataclass(frozen=True)
class _Conditioning:
    text_embeds: torch.Tensor
    pooled: torch.Tensor
    size: tuple[int, int]  # (height, width) of the pass
    identity: _Identity
    streams: list[adapters.ImageStream] | tuple[adapters.ImageStream, ...]


def _fuse_lora(unet: Any, path: Path, *, scale: float) -> None:
    """Fuse a few-step LoRA (SDXL-Lightning, LCM, Hyper-SD) into the UNet, as diffusers'
    ``load_lora_weights`` + ``fuse_lora`` would: with the LoRA's ``network_alphas`` (a kohya
    LoRA of rank 4 and alpha 1 acts at 1/4 of its raw product) and the UNet's config (SDXL
    checkpoints in the SGM block layout are mapped onto diffusers' blocks)."""
    from diffusers import StableDiffusionXLPipeline

    try:
        import peft  # noqa: F401  (diffusers needs it for load_lora_adapter)
    except ImportError:
        raise ValueError("models.lora: the few-step LoRA needs the 'peft' package") from None
    state, alphas, metadata = StableDiffusionXLPipeline.lora_state_dict(
        str(path), unet_config=unet.config, return_lora_metadata=True
    )
    foreign = sorted({key.split(".", 1)[0] for key in state if not key.startswith("unet.")})
    if foreign:
        # A few-step LoRA adapts the UNet only; text-encoder layers would be silently dropped.
        raise ValueError(f"models.lora: layers for {foreign} are not supported (UNet LoRAs only)")
    if not state:
        raise ValueError(f"models.lora: {path.name} holds no LoRA layers")
    unet.load_lora_adapter(
        state,
        prefix="unet",
        network_alphas=alphas,
        metadata=metadata,
        adapter_name="few_step",
    )
    unet.fuse_lora(lora_scale=scale)
    unet.unload_lora()
