"""Speed and GPU memory of generation, next to plain diffusers, one optimisation at a time.

Weights cannot be downloaded here, and compute does not depend on weight values, so the models
are the full-size SDXL architecture (UNet, IdentityNet ControlNet, VAE, both text encoders, the
ViT-H image encoder, both adapters) built from the configs written below with random weights.
On a CUDA GPU (default): 1024x1024, 30 steps, fp16, InstantID + two garments + place. Each row is
timed in the same run: diffusers' ``StableDiffusionXLControlNetPipeline`` of the same size (SDXL +
one ControlNet, no adapters) as the reference, then our pipeline with the optimisations switched
on one after another (SDPA, channels-last, fp16 VAE decode, torch.compile), then the default
profile's face-refinement pass on top (its own stage time is printed), then the few-step
path (4 steps, guidance 1 so no CFG pass; a fused LoRA costs nothing at run time). Reported: p50
seconds per image over ``--runs`` runs after warm-up, the ratio to the reference, and peak
allocated GPU memory. The targets for an A10G (g5) are p50 <= 15 s and peak <= 22 GiB.

``--tiny`` runs the same code with the tiny test components on the CPU (64x64, 2 steps), so the
script is exercised by ``tests/benchmarks/test_inference_bench.py`` and cannot rot.

Both modes then time the *cheap refusal*: ``compose`` (a fresh process, as in a pod) refusing a
PNG that declares 30000x30000 pixels, p50 of ``--runs``; the target is < 0.6 s. Its baseline,
in the same run, is the same command with torch and diffusers imported first (the order before
the request checks and image validation were moved ahead of those imports).

``--pool`` measures a warm pool worker instead (``compose worker``): the modules are saved in
the profile's on-disk layout, then a ``runner.Worker`` loads them (face analyzer and pipeline),
runs the worker's warm-up generation (``pool_worker.warm_up``) and one job: the *first-job
latency* (load + warm-up + job). Then ``--jobs`` more jobs: the *warm-job latency* p50 (no load,
no warm-up). The baselines are measured in the same run: the ratio warm/first, and warm against
what a Job pod pays per job (load + one cold generation, the warm-up's). Jobs read the built-in
sample photos and write a local PNG (encoding included, no S3). Options of the packaged
``instantid-sdxl`` profile (face refinement on); on the CPU, ``--tiny`` sizes.

    python benchmarks/inference_bench.py                # CUDA, full size
    python benchmarks/inference_bench.py --tiny --runs 1 --threads 1
    python benchmarks/inference_bench.py --pool         # CUDA, full size: a warm worker
    python benchmarks/inference_bench.py --pool --tiny --jobs 3 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from compose_api import models
from compose_inference import adapters, faces, pipeline, tiny

TARGET_SECONDS = 15.0
TARGET_GIB = 22.0
TARGET_REFUSAL_SECONDS = 0.6

SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "transformer_layers_per_block": (1, 2, 10),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
}
SDXL_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}
CLIP_L_TEXT: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
CLIP_BIGG_TEXT: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
    "hidden_act": "gelu",
}
VIT_H_VISION: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 16,
    "num_hidden_layers": 32,
    "image_size": 224,
    "patch_size": 14,
    "projection_dim": 1024,
    "hidden_act": "gelu",
}
CONTROLNET_EMBEDDING = (16, 32, 96, 256)
# A face where the astronaut's is (512x512 photo); detection is not what is measured here.
FACE_BOX = np.array([166.4, 57.6, 268.8, 172.8], dtype=np.float32)
FACE_KPS = np.array([[196, 101], [242, 101], [219, 127], [196, 152], [242, 152]], dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class Scale:
    unet: dict[str, Any]
    vae: dict[str, Any]
    text: dict[str, Any]
    text_2: dict[str, Any]
    vision: dict[str, Any]
    controlnet_embedding: tuple[int, ...]
    face_resampler: adapters.ResamplerConfig
    clothing_resampler: adapters.ResamplerConfig


FULL = Scale(
    unet=SDXL_UNET,
    vae=SDXL_VAE,
    text=CLIP_L_TEXT,
    text_2=CLIP_BIGG_TEXT,
    vision=VIT_H_VISION,
    controlnet_embedding=CONTROLNET_EMBEDDING,
    face_resampler=adapters.ResamplerConfig(
        dim=1280, depth=4, heads=20, num_queries=16, embedding_dim=512, output_dim=2048, ff_mult=4
    ),
    clothing_resampler=adapters.ResamplerConfig(
        dim=1280, depth=4, heads=20, num_queries=16, embedding_dim=1280, output_dim=2048, ff_mult=4
    ),
)
TINY = Scale(
    unet=tiny.TINY_UNET,
    vae=tiny.TINY_VAE,
    text=tiny.TINY_TEXT,
    text_2=tiny.TINY_TEXT,
    vision=tiny.TINY_VISION,
    controlnet_embedding=(16, 32),
    face_resampler=adapters.ResamplerConfig(
        dim=32, depth=4, heads=1, num_queries=16, embedding_dim=512, output_dim=64, ff_mult=4
    ),
    clothing_resampler=adapters.ResamplerConfig(
        dim=32, depth=4, heads=1, num_queries=16, embedding_dim=32, output_dim=64, ff_mult=4
    ),
)


@contextlib.contextmanager
def _building(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly on the device, in the target dtype (no CPU fp32 copy)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(previous)


def build_modules(scale: Scale, *, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Random-weight modules of the given scale; byte-level tokenizers written to a temp dir."""
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        EulerDiscreteScheduler,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    folder = Path(tempfile.mkdtemp(prefix="inference-bench-"))
    vocab_size = tiny.write_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    text_ids: dict[str, Any] = {
        "vocab_size": vocab_size,
        "max_position_embeddings": 77,
        "bos_token_id": vocab_size - 2,
        "eos_token_id": vocab_size - 1,
        "pad_token_id": vocab_size - 1,
    }
    torch.manual_seed(0)
    with _building(device, dtype):
        unet = UNet2DConditionModel(**scale.unet)
        controlnet = ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=scale.controlnet_embedding
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(**scale.text, **text_ids))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**scale.text_2, **text_ids))
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**scale.vision))
    with _building(device, torch.float32):
        vae = AutoencoderKL(**scale.vae)
    face = adapters.random_adapter_state(unet, scale.face_resampler, seed=1)
    clothing = adapters.random_adapter_state(unet, scale.clothing_resampler, seed=2)
    return {
        "unet": unet,
        "controlnet": controlnet,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer,
        "scheduler": EulerDiscreteScheduler(**tiny.SDXL_SCHEDULER),
        "image_encoder": image_encoder,
        "face_adapter": adapters.AdapterWeights(**face),
        "clothing_adapter": adapters.AdapterWeights(**clothing),
    }


@dataclasses.dataclass
class Row:
    name: str
    seconds: list[float]
    peak_gib: float | None
    stages: dict[str, float] | None = None  # the pipeline's own timings, last run

    @property
    def p50(self) -> float:
        return statistics.median(self.seconds)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    name: str, run: Callable[[], object], *, device: torch.device, warmup: int, runs: int
) -> Row:
    for _ in range(warmup):
        run()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    result: object = None
    for _ in range(runs):
        _synchronize(device)
        started = time.perf_counter()
        result = run()
        _synchronize(device)
        seconds.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    stages = getattr(result, "timings", None)
    row = Row(name, seconds, peak, dict(stages) if isinstance(stages, dict) else None)
    print(f"  measured {name}: p50 {row.p50:.3f} s", file=sys.stderr, flush=True)
    return row


def _photo(seed: int, size: int = 512) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8))


def run_benchmark(
    *,
    scale: Scale,
    device: torch.device,
    dtype: torch.dtype,
    size: int,
    steps: int,
    runs: int,
    warmup: int,
    compile_: bool,
) -> list[Row]:
    from diffusers import StableDiffusionXLControlNetPipeline

    modules = build_modules(scale, device=device, dtype=dtype)
    dtype_name = {torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(dtype, "float32")
    face = faces.Face(
        bbox=FACE_BOX,
        kps=FACE_KPS,
        embedding=np.random.default_rng(3).normal(size=512).astype(np.float32),
        det_score=1.0,
        faces_found=1,
    )
    request = pipeline.GenerationRequest(
        face=face,
        person=_photo(4),
        clothing=[
            (_photo(5), models.ClothingCategory.UPPER),
            (_photo(6), models.ClothingCategory.LOWER),
        ],
        place=_photo(7),
        # The API's Params; the tiny size is below a job's minimum, so set as a profile pins it.
        params=models.Params().model_copy(
            update={"seed": 0, "steps": steps, "width": size, "height": size}
        ),
    )
    rows: list[Row] = []

    # Reference: plain diffusers SDXL + ControlNet of the same size (SDPA, VAE upcast to fp32).
    reference = StableDiffusionXLControlNetPipeline(
        vae=modules["vae"],
        text_encoder=modules["text_encoder"],
        text_encoder_2=modules["text_encoder_2"],
        tokenizer=modules["tokenizer"],
        tokenizer_2=modules["tokenizer_2"],
        unet=modules["unet"],
        controlnet=modules["controlnet"],
        scheduler=modules["scheduler"],
    )
    reference.set_progress_bar_config(disable=True)
    control = Image.new("RGB", (size, size))
    rows.append(
        measure(
            "diffusers SDXL+ControlNet (reference)",
            lambda: reference(
                prompt=request.params.prompt,
                negative_prompt=request.params.negative_prompt,
                image=control,
                num_inference_steps=steps,
                guidance_scale=request.params.guidance,
                width=size,
                height=size,
                controlnet_conditioning_scale=0.8,
                generator=torch.Generator(device).manual_seed(0),
            ),
            device=device,
            warmup=warmup,
            runs=runs,
        )
    )

    steps_on: list[tuple[str, dict[str, Any]]] = [
        ("ours: math attention, fp32 VAE", {"sdpa": False, "vae_fp32_decode": True}),
        ("ours: + SDPA", {"sdpa": True, "vae_fp32_decode": True}),
        ("ours: + channels-last", {"channels_last": True, "vae_fp32_decode": True}),
        ("ours: + fp16 VAE decode", {"channels_last": True, "vae_fp32_decode": False}),
    ]
    if compile_:
        steps_on.append(
            (
                "ours: + torch.compile",
                {
                    "channels_last": True,
                    "vae_fp32_decode": False,
                    "compile": True,
                    "size_buckets": [[size, size]],
                },
            )
        )
    best = steps_on[-1][1]
    refined = {**best, "refine_face": True, "refine_size": size, "refine_strength": 0.35}
    few_step = {**best, "scheduler": "euler_trailing"}
    if dtype == torch.float32:  # on the CPU there is no fp16 VAE to switch to
        for _, options in steps_on:
            options["vae_fp32_decode"] = False
    variants = [
        *steps_on,
        ("ours: + face refinement (default profile)", refined),
        ("ours: few-step (4 steps, no CFG)", few_step),
    ]
    for name, options in variants:
        composed = pipeline.ComposePipeline(
            unet=modules["unet"],
            vae=modules["vae"],
            text_encoder=modules["text_encoder"],
            text_encoder_2=modules["text_encoder_2"],
            tokenizer=modules["tokenizer"],
            tokenizer_2=modules["tokenizer_2"],
            scheduler=modules["scheduler"],
            controlnet=modules["controlnet"],
            face_adapter=modules["face_adapter"],
            image_encoder=modules["image_encoder"],
            clothing_adapter=modules["clothing_adapter"],
            device=str(device),
            dtype=dtype_name,
            options=pipeline.PipelineOptions.parse(options, dtype=dtype_name),
        )
        job = request
        if "few-step" in name:
            job = dataclasses.replace(
                request,
                params=request.params.model_copy(update={"steps": min(4, steps), "guidance": 1.0}),
            )
        extra = 1 if options.get("compile") else 0
        rows.append(
            measure(
                name,
                functools.partial(composed, job),
                device=device,
                warmup=warmup + extra,
                runs=runs,
            )
        )
        del composed
    return rows


def save_models(modules: dict[str, Any], scale: Scale, root: Path) -> dict[str, Path]:
    """Write the modules in the on-disk layout a profile's sources point at (the published
    checkpoints' layout), with the tiny face models (detection is not measured); component
    name -> path."""
    base = root / "base"
    for name in ("tokenizer", "tokenizer_2"):
        modules[name].save_pretrained(str(base / name))
    tiny.save_base(
        base,
        unet=modules["unet"],
        vae=modules["vae"],
        text_encoder=modules["text_encoder"],
        text_encoder_2=modules["text_encoder_2"],
        scheduler=modules["scheduler"],
        tokenizer_class=type(modules["tokenizer"]).__name__,
    )
    modules["controlnet"].save_pretrained(str(root / "identitynet"))
    modules["image_encoder"].save_pretrained(str(root / "image_encoder"))
    paths = {
        "base": base,
        "identitynet": root / "identitynet",
        "image_encoder": root / "image_encoder",
        "face_analysis": tiny.build_face_models(root / "antelopev2"),
    }
    for name, config, seed, file in (
        ("face_adapter", scale.face_resampler, 1, tiny.FACE_ADAPTER_FILE),
        ("clothing_adapter", scale.clothing_resampler, 2, tiny.CLOTHING_ADAPTER_FILE),
    ):
        state = adapters.random_adapter_state(modules["unet"], config, seed=seed)
        path = root / name / file
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, str(path))
        paths[name] = path
    return paths


def pool_profile(
    paths: dict[str, Path], *, device: torch.device, dtype: torch.dtype, size: int, steps: int
) -> Any:
    """The packaged ``instantid-sdxl`` profile's options, its sources the saved modules, the
    size and steps pinned."""
    from compose_api import profiles
    from compose_inference import catalogue

    options = dict(catalogue.packaged()["instantid-sdxl"].options)
    options.update(device=device.type, width=size, height=size, steps=steps, refine_size=size)
    return profiles.ModelProfile.model_validate(
        {
            "name": "bench-pool",
            "dtype": str(dtype).removeprefix("torch."),
            "models": {name: {"uri": str(path)} for name, path in paths.items()},
            "options": options,
            "licence": {"name": "random weights"},
        }
    )


@dataclasses.dataclass
class PoolFigures:
    save: float
    load: float
    warm_up: float
    first_job: float
    warm_jobs: list[float]
    stages: dict[str, float]
    peak_gib: float | None

    @property
    def first(self) -> float:
        """The first job's latency: load + warm-up + the job."""
        return self.load + self.warm_up + self.first_job

    @property
    def warm(self) -> float:
        return statistics.median(self.warm_jobs)


def run_pool(
    *, scale: Scale, device: torch.device, dtype: torch.dtype, size: int, steps: int, jobs: int
) -> PoolFigures:
    with tempfile.TemporaryDirectory(prefix="pool-bench-") as folder:
        return _run_pool(
            Path(folder), scale=scale, device=device, dtype=dtype, size=size, steps=steps,
            jobs=jobs,
        )  # fmt: skip


def _run_pool(
    root: Path,
    *,
    scale: Scale,
    device: torch.device,
    dtype: torch.dtype,
    size: int,
    steps: int,
    jobs: int,
) -> PoolFigures:
    from compose_inference import fetching, modelstore, pool_worker, runner, samples

    started = time.perf_counter()
    modules = build_modules(scale, device=device, dtype=dtype)
    paths = save_models(modules, scale, root / "models")
    del modules
    if device.type == "cuda":
        torch.cuda.empty_cache()
    saving = time.perf_counter() - started
    print(f"  saved the weights in {saving:.1f} s", file=sys.stderr, flush=True)
    profile = pool_profile(paths, device=device, dtype=dtype, size=size, steps=steps)
    worker = runner.Worker(
        fetcher=fetching.Fetcher(fetching.FetchSettings(allow_local_paths=True)),
        store=modelstore.ModelStore(modelstore.StoreSettings(cache_dir=root / "cache")),
        device=str(device),
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def timed(work: Callable[[], object]) -> float:
        _synchronize(device)
        begin = time.perf_counter()
        work()
        _synchronize(device)
        return time.perf_counter() - begin

    load = timed(lambda: worker.load(profile))
    warm_up = timed(lambda: pool_worker.warm_up(worker, profile, root / "warm-up"))
    person, shirt, trousers, place = samples.write_samples(root / "inputs")
    outcomes: list[runner.Outcome] = []

    def job(seed: int) -> None:
        outcomes.append(
            worker.run(
                runner.Job(
                    label=f"bench-{seed}",
                    profile=profile,
                    person=str(person),
                    clothing=[
                        (str(shirt), models.ClothingCategory.UPPER),
                        (str(trousers), models.ClothingCategory.LOWER),
                    ],
                    place=str(place),
                    params=runner.pin_profile(models.Params(seed=seed), profile).params,
                    output_format="png",
                    target=runner.LocalTarget(root / "results" / f"{seed}.png"),
                )
            )
        )

    first_job = timed(lambda: job(1))
    warm_jobs = []
    for seed in range(2, jobs + 2):
        warm_jobs.append(timed(functools.partial(job, seed)))
        print(f"  warm job {seed - 1}: {warm_jobs[-1]:.3f} s", file=sys.stderr, flush=True)
    if worker.loads != 1 or any("load" in outcome.timings for outcome in outcomes):
        raise RuntimeError(f"a job loaded models ({worker.loads} loads): not a warm worker")
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return PoolFigures(
        save=saving,
        load=load,
        warm_up=warm_up,
        first_job=first_job,
        warm_jobs=warm_jobs,
        stages=dict(outcomes[-1].timings),
        peak_gib=peak,
    )


def format_pool(figures: PoolFigures, *, header: str) -> str:
    cold = figures.load + figures.warm_up  # a Job pod: load, then a first (cold) generation
    stages = ", ".join(f"{key} {value:.3f}" for key, value in figures.stages.items())
    peak = f"; peak {figures.peak_gib:.2f} GiB" if figures.peak_gib is not None else ""
    return "\n".join(
        [
            header,
            f"weights saved in the profile's layout: {figures.save:.1f} s (not part of a start)",
            f"first job: load {figures.load:.3f} s + warm-up {figures.warm_up:.3f} s + job"
            f" {figures.first_job:.3f} s = {figures.first:.3f} s",
            f"warm job p50 of {len(figures.warm_jobs)}: {figures.warm:.3f} s{peak}",
            f"stages of the last warm job: {stages} s",
            f"a Job pod per job (load + a cold generation): {cold:.3f} s",
            f"ratio warm/first: {figures.warm / figures.first:.3f}x;"
            f" warm/Job pod: {figures.warm / cold:.3f}x",
        ]
    )


def _huge_png(path: Path, side: int = 30000) -> Path:
    """A tiny file whose header declares ``side`` x ``side`` pixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def refusal_seconds(runs: int) -> tuple[float, float]:
    """p50 seconds for ``compose`` to refuse a 30000x30000 PNG, and the same with torch and
    diffusers imported first (the baseline)."""
    import os
    import subprocess

    from compose_inference import __main__ as entrypoint

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        samples = entrypoint.write_samples(root / "samples")
        big = _huge_png(root / "big.png")
        args = ["--person", str(big), "--clothing", str(samples[1]), "--place", str(samples[3]),
                "--out", str(root / "out.png")]  # fmt: skip
        env = dict(os.environ, COMPOSE_MODEL_CACHE=str(root / "cache"), COMPOSE_LOG_LEVEL="ERROR")
        ours = [sys.executable, "-m", "compose_inference", *args]
        before = [
            sys.executable,
            "-c",
            "import sys, torch, diffusers; from compose_inference import __main__ as m;"
            " sys.exit(m.main(sys.argv[1:]))",
            *args,
        ]

        def timed(command: list[str]) -> float:
            started = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            elapsed = time.perf_counter() - started
            if done.returncode != 10:  # INPUT_REJECTED
                raise RuntimeError(f"expected exit 10, got {done.returncode}: {done.stderr[-500:]}")
            return elapsed

        timed(ours)  # warm the file-system cache
        ours_p50 = statistics.median(timed(ours) for _ in range(max(1, runs)))
        before_p50 = statistics.median(timed(before) for _ in range(max(1, runs)))
    return ours_p50, before_p50


def format_table(rows: list[Row], *, header: str) -> str:
    reference = rows[0].p50
    lines = [
        header,
        f"{'variant':<42} {'p50 s/image':>12} {'vs reference':>13} {'peak GiB':>9}",
    ]
    for row in rows:
        peak = f"{row.peak_gib:.2f}" if row.peak_gib is not None else "-"
        lines.append(f"{row.name:<42} {row.p50:>12.3f} {row.p50 / reference:>12.2f}x {peak:>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tiny", action="store_true", help="tiny components on the CPU")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per variant (p50)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--pool", action="store_true", help="a warm pool worker's latencies")
    parser.add_argument("--jobs", type=int, default=5, help="--pool: warm jobs timed (p50)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny:
        device, dtype, scale = torch.device("cpu"), torch.float32, TINY
        size, steps = args.size or 64, args.steps or 2
        compile_ = False
    else:
        if not torch.cuda.is_available():
            print("no CUDA GPU: run with --tiny for the CPU check", file=sys.stderr)
            return 2
        device, dtype, scale = torch.device("cuda"), torch.float16, FULL
        size, steps = args.size or 1024, args.steps or 30
        compile_ = not args.no_compile
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    if args.pool:
        figures = run_pool(
            scale=scale, device=device, dtype=dtype, size=size, steps=steps, jobs=args.jobs
        )
        header = (
            f"pool benchmark: {'tiny' if args.tiny else 'full-size SDXL'} random weights,"
            f" {size}x{size}, {steps} steps, {str(dtype).removeprefix('torch.')}, {card}"
        )
        print(format_pool(figures, header=header))
        return 0
    rows = run_benchmark(
        scale=scale,
        device=device,
        dtype=dtype,
        size=size,
        steps=steps,
        runs=args.runs,
        warmup=args.warmup,
        compile_=compile_,
    )
    header = (
        f"inference benchmark: {'tiny' if args.tiny else 'full-size SDXL'} random weights,"
        f" {size}x{size}, {steps} steps, {str(dtype).removeprefix('torch.')}, {card},"
        f" p50 of {args.runs} run(s)"
    )
    print(format_table(rows, header=header))
    for row in rows:
        if row.stages:
            parts = ", ".join(f"{key} {value:.3f}" for key, value in row.stages.items())
            print(f"stages of {row.name}: {parts} s")
    refused, baseline = refusal_seconds(args.runs)
    print(
        f"cheap refusal (30000x30000 PNG, fresh process): {refused:.3f} s"
        f" (target < {TARGET_REFUSAL_SECONDS} s); torch and diffusers imported first:"
        f" {baseline:.3f} s; ratio {refused / baseline:.2f}x"
    )
    if device.type == "cuda":
        ours = [row for row in rows if row.name.startswith("ours") and "few-step" not in row.name]
        best = min(ours, key=lambda row: row.p50)
        peak = max(row.peak_gib or 0.0 for row in ours)
        print(
            f"best 30-step row: {best.name}: {best.p50:.2f} s (target <= {TARGET_SECONDS} s on an"
            f" A10G), peak {peak:.2f} GiB (target <= {TARGET_GIB} GiB) on {card}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
