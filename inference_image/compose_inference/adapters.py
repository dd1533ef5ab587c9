"""Image adapters: the Resampler and the decoupled image attention of InstantID and IP-Adapter.

InstantID's face adapter (``ip-adapter.bin``) and IP-Adapter SDXL "plus" (the clothing and place
adapter) share one checkpoint layout: ``{"image_proj": <Resampler state dict>, "ip_adapter":
{"<i>.to_k_ip.weight", "<i>.to_v_ip.weight", ...}}`` where ``<i>`` is the index of the UNet's
attention processor (in ``unet.attn_processors`` order) the projection belongs to. This module
rebuilds both from such a state dict and provides the attention processor that adds
``scale * attention(image tokens)`` (optionally masked to a region) to each cross-attention.

``pipeline.ComposePipeline`` installs the processors and calls the Resamplers; ``tiny`` and the
benchmark use the same classes to write checkpoints in the published layout.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Both published adapters use 64-dimensional attention heads in their Resampler; the head count
# is therefore the inner width divided by 64 (one head when the width is smaller, as in tests).
RESAMPLER_DIM_HEAD = 64


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, _ = x.shape
    return x.view(batch, length, heads, -1).transpose(1, 2)


class PerceiverAttention(nn.Module):
    """Latents attend to the image features and to themselves (Resampler block)."""

    def __init__(self, *, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.dim_head = dim_head
        self.heads = heads
        inner_dim = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(dim, inner_dim * 2, bias=False)
        self.to_out = nn.Linear(inner_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        latents = self.norm2(latents)
        batch, length, _ = latents.shape
        q = _split_heads(self.to_q(latents), self.heads)
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        k = _split_heads(k, self.heads)
        v = _split_heads(v, self.heads)
        scale = 1 / math.sqrt(math.sqrt(self.dim_head))
        weight = (q * scale) @ (k * scale).transpose(-2, -1)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        out = (weight @ v).permute(0, 2, 1, 3).reshape(batch, length, -1)
        result: torch.Tensor = self.to_out(out)
        return result


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    inner_dim = int(dim * mult)
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner_dim, bias=False),
        nn.GELU(),
        nn.Linear(inner_dim, dim, bias=False),
    )


@dataclasses.dataclass(frozen=True)
class ResamplerConfig:
    dim: int
    depth: int
    heads: int
    num_queries: int
    embedding_dim: int
    output_dim: int
    ff_mult: int
    dim_head: int = RESAMPLER_DIM_HEAD

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> ResamplerConfig:
        """Read the sizes off a Resampler state dict (the checkpoints carry no config)."""
        try:
            latents = state["latents"]
            inner = state["layers.0.0.to_q.weight"].shape[0]
            ff_inner = state["layers.0.1.1.weight"].shape[0]
            embedding_dim = state["proj_in.weight"].shape[1]
            output_dim = state["proj_out.weight"].shape[0]
        except KeyError as error:
            raise ValueError(f"image_proj: missing Resampler weight {error.args[0]!r}") from None
        depth = len({key.split(".")[1] for key in state if key.startswith("layers.")})
        dim = int(latents.shape[2])
        dim_head = RESAMPLER_DIM_HEAD if inner >= RESAMPLER_DIM_HEAD else inner
        return cls(
            dim=dim,
            depth=depth,
            heads=max(1, inner // dim_head),
            num_queries=int(latents.shape[1]),
            embedding_dim=int(embedding_dim),
            output_dim=int(output_dim),
            ff_mult=max(1, ff_inner // dim),
            dim_head=dim_head,
        )


class Resampler(nn.Module):
    """Perceiver resampler: image features -> ``num_queries`` tokens in the UNet's context width.

    InstantID: one 512-d ArcFace embedding -> 16 face tokens. IP-Adapter plus: the CLIP image
    encoder's penultimate hidden states -> 16 image tokens. Same weights layout as both repos.
    """

    def __init__(self, config: ResamplerConfig) -> None:
        super().__init__()
        self.config = config
        self.latents = nn.Parameter(
            torch.randn(1, config.num_queries, config.dim) / config.dim**0.5
        )
        self.proj_in = nn.Linear(config.embedding_dim, config.dim)
        self.proj_out = nn.Linear(config.dim, config.output_dim)
        self.norm_out = nn.LayerNorm(config.output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PerceiverAttention(
                        dim=config.dim, dim_head=config.dim_head, heads=config.heads
                    ),
                    _feed_forward(config.dim, config.ff_mult),
                ]
            )
            for _ in range(config.depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        latents = self.latents.repeat(x.size(0), 1, 1)
        x = self.proj_in(x)
        for block in self.layers:
            attention, feed_forward = typing.cast(nn.ModuleList, block)
            latents = attention(x, latents) + latents
            latents = feed_forward(latents) + latents
        result: torch.Tensor = self.norm_out(self.proj_out(latents))
        return result


class ImageProjection(nn.Module):
    """One adapter's key/value projections for one cross-attention layer (to_k_ip, to_v_ip)."""

    def __init__(self, context_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.to_k_ip = nn.Linear(context_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(context_dim, hidden_size, bias=False)


@dataclasses.dataclass
class ImageStream:
    """Image tokens added to every cross-attention: ``scale * attn(q, k(tokens), v(tokens))``.

    ``adapter`` names whose projections to use (``face`` or ``clothing``); ``masks`` maps a
    sequence length (one per UNet resolution) to a ``(batch or 1, length, 1)`` region weight.
    """

    adapter: str
    tokens: torch.Tensor
    scale: float
    masks: dict[int, torch.Tensor] | None = None


def _attend(
    attn: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, sdpa: bool
) -> torch.Tensor:
    """Multi-head attention on ``(batch, length, inner)`` tensors."""
    batch = query.shape[0]
    head_dim = key.shape[-1] // attn.heads
    if sdpa:
        q = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        k = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        v = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
    q = attn.head_to_batch_dim(query)
    k = attn.head_to_batch_dim(key)
    v = attn.head_to_batch_dim(value)
    probs = attn.get_attention_scores(q, k, None)
    result: torch.Tensor = attn.batch_to_head_dim(torch.bmm(probs, v))
    return result


class ComposeAttnProcessor(nn.Module):
    """Attention processor for every UNet attention layer.

    Self-attention layers hold no projections and behave like diffusers' ``AttnProcessor2_0``.
    Cross-attention layers hold one :class:`ImageProjection` per loaded adapter and add each
    :class:`ImageStream` given in ``cross_attention_kwargs["image_streams"]`` whose adapter they
    know. A stream that is not passed costs nothing, which is how a zero strength is honoured.
    """

    def __init__(self, *, sdpa: bool = True) -> None:
        super().__init__()
        self.sdpa = sdpa
        self.projections = nn.ModuleDict()

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        image_streams: Sequence[ImageStream] | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        if attention_mask is not None:
            raise ValueError("attention_mask is not supported by ComposeAttnProcessor")
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if encoder_hidden_states is not None else hidden_states
        if attn.norm_cross and is_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.to_q(hidden_states)
        out = _attend(attn, query, attn.to_k(context), attn.to_v(context), sdpa=self.sdpa)

        if is_cross and image_streams:
            length = hidden_states.shape[1]
            for stream in image_streams:
                if stream.adapter not in self.projections:
                    continue
                projection = typing.cast(ImageProjection, self.projections[stream.adapter])
                tokens = stream.tokens.to(query.dtype)
                extra = _attend(
                    attn,
                    query,
                    projection.to_k_ip(tokens),
                    projection.to_v_ip(tokens),
                    sdpa=self.sdpa,
                )
                if stream.masks is not None:
                    extra = extra * stream.masks[length].to(extra.dtype)
                out = out + stream.scale * extra

        hidden_states = attn.to_out[1](attn.to_out[0](out.to(query.dtype)))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        result: torch.Tensor = hidden_states / attn.rescale_output_factor
        return result


@dataclasses.dataclass
class AdapterWeights:
    """An adapter checkpoint split into its Resampler and its per-layer projections."""

    image_proj: dict[str, torch.Tensor]
    ip_adapter: dict[str, torch.Tensor]


def load_adapter_file(path: Path) -> AdapterWeights:
    """Read ``ip-adapter.bin`` / ``ip-adapter-plus_sdxl_vit-h.bin`` (or their safetensors form)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        flat = load_file(str(path))
        nested: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        for key, value in flat.items():
            group, _, rest = key.partition(".")
            if group in nested:
                nested[group][rest] = value
        state: Any = nested
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not {"image_proj", "ip_adapter"} <= set(state):
        raise ValueError(f"{path.name}: expected an adapter with 'image_proj' and 'ip_adapter'")
    return AdapterWeights(
        image_proj=dict(state["image_proj"]), ip_adapter=dict(state["ip_adapter"])
    )


def build_resampler(weights: AdapterWeights) -> Resampler:
    resampler = Resampler(ResamplerConfig.from_state_dict(weights.image_proj))
    resampler.load_state_dict(weights.image_proj)
    return resampler


def cross_attention_layers(unet: Any) -> dict[int, tuple[str, int]]:
    """Processor index -> (processor name, hidden size) for the UNet's cross-attention layers.

    The index is the position in ``unet.attn_processors``: the numbering of the published
    ``ip_adapter`` keys.
    """
    names = list(unet.attn_processors.keys())
    modules = dict(unet.named_modules())
    layers: dict[int, tuple[str, int]] = {}
    for index, name in enumerate(names):
        if not name.endswith("attn2.processor"):
            continue
        attention = modules[name.removesuffix(".processor")]
        layers[index] = (name, int(attention.to_q.out_features))
    return layers


def install_processors(
    unet: Any, adapters: Mapping[str, AdapterWeights], *, sdpa: bool
) -> dict[str, ComposeAttnProcessor]:
    """Give every attention layer a :class:`ComposeAttnProcessor` holding the adapters' weights."""
    layers = cross_attention_layers(unet)
    processors: dict[str, ComposeAttnProcessor] = {}
    for index, name in enumerate(unet.attn_processors.keys()):
        processor = ComposeAttnProcessor(sdpa=sdpa)
        if index in layers:
            _, hidden_size = layers[index]
            for adapter_name, weights in adapters.items():
                try:
                    k = weights.ip_adapter[f"{index}.to_k_ip.weight"]
                    v = weights.ip_adapter[f"{index}.to_v_ip.weight"]
                except KeyError:
                    raise ValueError(
                        f"{adapter_name} adapter: no to_k_ip/to_v_ip for attention layer {index}"
                        " (the adapter does not match this UNet)"
                    ) from None
                if k.shape[0] != hidden_size:
                    raise ValueError(
                        f"{adapter_name} adapter: layer {index} projects to {k.shape[0]},"
                        f" the UNet expects {hidden_size}"
                    )
                projection = ImageProjection(int(k.shape[1]), hidden_size)
                projection.load_state_dict({"to_k_ip.weight": k, "to_v_ip.weight": v})
                # Where the UNet already is (loaded straight to the GPU in its dtype).
                projection.to(device=unet.device, dtype=unet.dtype)
                processor.projections[adapter_name] = projection
        processors[name] = processor
    unet.set_attn_processor(processors)
    return processors


def random_adapter_state(
    unet: Any, config: ResamplerConfig, *, seed: int
) -> dict[str, dict[str, torch.Tensor]]:
    """A random adapter checkpoint for ``unet`` in the published layout (tests, benchmark)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        resampler = Resampler(config)
    ip_adapter: dict[str, torch.Tensor] = {}
    for index, (_, hidden_size) in cross_attention_layers(unet).items():
        for name in ("to_k_ip", "to_v_ip"):
            weight = torch.randn(hidden_size, config.output_dim, generator=generator)
            ip_adapter[f"{index}.{name}.weight"] = weight / math.sqrt(config.output_dim)
    return {
        "image_proj": {
            key: value.detach().clone() for key, value in resampler.state_dict().items()
        },
        "ip_adapter": ip_adapter,
    }
