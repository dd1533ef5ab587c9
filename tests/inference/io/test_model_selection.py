"""The packaged profiles download only what the pipeline reads.

The file lists of the public Hugging Face repositories are kept in ``tests/inference/data/
hf_listings`` (one JSON file per repository: path -> bytes, as the hub's file browser shows them),
so the selection of each source (``allowPatterns``, ``subfolder``, ``filename``) is checked
against the real repositories without a download; a second test applies the same patterns to the
tiny models written in the same layout, with the same distractors, and loads the pipeline from
what is left, so a pattern that misses a file the loader reads fails here and not in a GPU pod.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from compose_api import profiles
from compose_inference import catalogue, pipeline

LISTINGS = Path(__file__).resolve().parents[1] / "data" / "hf_listings"
GB = 1e9
# Formats no component of these profiles reads: a pattern that selects one downloads waste.
FOREIGN = (".msgpack", ".onnx", ".onnx_data", "openvino_model.bin", "openvino_model.xml", ".png")


def listing(repo: str) -> dict[str, int]:
    path = LISTINGS / f"{repo.replace('/', '--')}.json"
    data = json.loads(path.read_text())
    assert data["repo"] == repo
    files: dict[str, int] = data["files"]
    return files


def hf_sources(profile: profiles.ModelProfile) -> dict[str, profiles.ModelSource]:
    return {name: s for name, s in profile.models.items() if s.uri.startswith("hf://")}


def selected(source: profiles.ModelSource) -> dict[str, int]:
    files = listing(source.uri.removeprefix("hf://"))
    return {path: size for path, size in files.items() if source.selects(path)}


@pytest.fixture(scope="module")
def packaged() -> dict[str, profiles.ModelProfile]:
    return catalogue.packaged()


def test_the_default_profile_downloads_about_15_gb_of_the_77_gb_repositories(
    packaged: dict[str, profiles.ModelProfile],
) -> None:
    profile = packaged["instantid-sdxl"]
    chosen = {name: selected(source) for name, source in hf_sources(profile).items()}
    total = sum(sum(files.values()) for files in chosen.values())
    assert 14 * GB <= total <= 16 * GB, f"{total / GB:.2f} GB selected"
    whole_base = sum(listing("stabilityai/stable-diffusion-xl-base-1.0").values())
    assert whole_base > 75 * GB  # what the base source pulled without a filter
    # The base: the fp16 UNet and text encoders, configs, tokenizers, scheduler; no VAE (the
    # fp16-fix VAE replaces it).
    assert set(chosen["base"]) == {
        "scheduler/scheduler_config.json",
        *(
            f"{t}/{f}"
            for t in ("tokenizer", "tokenizer_2")
            for f in (
                "merges.txt",
                "special_tokens_map.json",
                "tokenizer_config.json",
                "vocab.json",
            )
        ),
        "text_encoder/config.json",
        "text_encoder/model.fp16.safetensors",
        "text_encoder_2/config.json",
        "text_encoder_2/model.fp16.safetensors",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
    }
    assert set(chosen["vae"]) == {"config.json", "diffusion_pytorch_model.safetensors"}
    assert set(chosen["identitynet"]) == {
        "ControlNetModel/config.json",
        "ControlNetModel/diffusion_pytorch_model.safetensors",
    }
    assert set(chosen["image_encoder"]) == {
        "models/image_encoder/config.json",
        "models/image_encoder/model.safetensors",
    }
    assert set(chosen["face_adapter"]) == {"ip-adapter.bin"}
    assert set(chosen["clothing_adapter"]) == {"sdxl_models/ip-adapter-plus_sdxl_vit-h.bin"}
    # The safety checker: its fp16 weights and two configs, 0.6 of the 3.7 GB of its folders.
    assert chosen["safety_checker"] == {
        "safety_checker/config.json": 4560,
        "safety_checker/model.fp16.safetensors": 608_000_000,
        "feature_extractor/preprocessor_config.json": 342,
    }


@pytest.mark.parametrize("name", ["instantid-sdxl", "instantid-sdxl-lightning"])
def test_every_source_selects_one_copy_of_each_file_it_loads(
    packaged: dict[str, profiles.ModelProfile], name: str
) -> None:
    for component, source in hf_sources(packaged[name]).items():
        files = selected(source)
        label = f"{name}.models.{component}"
        assert files, f"{label}: selects nothing in {source.uri}"
        for path in files:
            assert not path.endswith(FOREIGN), f"{label}: {path} is a format nothing loads"
        weights = [p for p in files if p.endswith((".safetensors", ".bin"))]
        folders = {p.rsplit("/", 1)[0] if "/" in p else "" for p in weights}
        # One weights file per model folder: never both .bin and .safetensors, fp16 and fp32.
        assert len(weights) == len(folders), f"{label}: several copies {sorted(weights)}"
        if source.variant:
            assert all(f".{source.variant}." in p for p in weights), (label, weights)
        if source.allow_patterns is not None:
            # Every pattern matches something: a renamed file upstream shows up here.
            for pattern in source.allow_patterns:
                probe = source.model_copy(update={"allow_patterns": [pattern]})
                assert selected(probe), f"{label}: allowPatterns {pattern!r} matches no file"


def test_the_lightning_profile_adds_only_its_lora(
    packaged: dict[str, profiles.ModelProfile],
) -> None:
    lightning = hf_sources(packaged["instantid-sdxl-lightning"])
    default = hf_sources(packaged["instantid-sdxl"])
    assert set(lightning) - set(default) == {"lora"}
    assert selected(lightning["lora"]) == {"sdxl_lightning_4step_lora.safetensors": 394_000_000}
    for component in default:
        assert selected(lightning[component]) == selected(default[component]), component


def test_revisions_are_commit_hashes_or_said_to_be_unpinned(
    packaged: dict[str, profiles.ModelProfile],
) -> None:
    text = catalogue.packaged_text()
    for profile in packaged.values():
        for component, source in hf_sources(profile).items():
            if source.revision is None:
                assert "unpinned" in text, f"{profile.name}.models.{component}"
            else:
                assert len(source.revision) == 40, source.revision
                int(source.revision, 16)


def test_patterns_are_relative_to_the_subfolder() -> None:
    source = profiles.ModelSource(
        uri="hf://o/r", subfolder="models/image_encoder", allow_patterns=["*.json"]
    )
    assert source.selects("models/image_encoder/config.json")
    assert not source.selects("models/image_encoder/model.safetensors")
    assert not source.selects("sdxl_models/image_encoder/config.json")
    assert source.download_patterns() == ["models/image_encoder/*.json"]
    assert profiles.ModelSource(uri="hf://o/r").download_patterns() is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"filename": "a.bin", "allowPatterns": ["*"]}, "not with filename"),
        ({"allowPatterns": ["../x"]}, "must be relative"),
        ({"allowPatterns": ["/etc/*"]}, "must be relative"),
        ({"allowPatterns": []}, "at least 1"),
        ({"variant": "FP16!"}, "pattern"),
    ],
)
def test_bad_selections_are_refused_naming_the_field(
    fields: dict[str, object], message: str
) -> None:
    text = json.dumps(
        [
            {
                "name": "p",
                "models": {"base": {"uri": "hf://o/r", **fields}},
                "licence": {"name": "x"},
            }
        ]
    )
    with pytest.raises(ValueError, match=message) as info:
        profiles.load_profiles(text)
    assert str(info.value).startswith("profiles[p].models.base")


# -- the same patterns on the tiny models in the real layout -------------------------------------


def _with_distractors(tiny_models: dict[str, Path], root: Path) -> dict[str, Path]:
    """The tiny components re-saved as the hub repositories hold them: an fp16 variant next to
    the fp32 weights, ``.bin`` copies, and formats nothing reads."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    base = root / "base"
    shutil.copytree(tiny_models["base"], base)
    unet = UNet2DConditionModel.from_pretrained(str(base), subfolder="unet")
    unet.to(torch.float16).save_pretrained(str(base / "unet"), variant="fp16")
    for folder, cls in (
        ("text_encoder", CLIPTextModel),
        ("text_encoder_2", CLIPTextModelWithProjection),
    ):
        encoder = cls.from_pretrained(str(base / folder))
        encoder.to(torch.float16).save_pretrained(str(base / folder), variant="fp16")
        # The fp32 copy is corrupted: loading it instead of the fp16 variant fails loudly.
        (base / folder / "model.safetensors").write_bytes(b"not the variant")
        (base / folder / "flax_model.msgpack").write_bytes(b"flax")
    (base / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not the variant")
    (base / "sd_xl_base_1.0.safetensors").write_bytes(b"single file")
    vae = root / "vae"
    shutil.copytree(tiny_models["base"] / "vae", vae)
    (vae / "diffusion_pytorch_model.bin").write_bytes(b"pickle copy")
    identitynet = root / "InstantID" / "ControlNetModel"
    shutil.copytree(tiny_models["identitynet"], identitynet)
    encoder = root / "IP-Adapter" / "models" / "image_encoder"
    shutil.copytree(tiny_models["image_encoder"], encoder)
    (encoder / "pytorch_model.bin").write_bytes(b"pickle copy")
    return {
        "base": base,
        "vae": vae,
        "identitynet": identitynet.parent,
        "image_encoder": encoder.parents[1],
    }


def _download(source: profiles.ModelSource, repo: Path, target: Path) -> Path:
    """What ``snapshot_download(allow_patterns=...)`` leaves: only the selected files."""
    for path in sorted(repo.rglob("*")):
        relative = path.relative_to(repo).as_posix()
        if path.is_file() and source.selects(relative):
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / relative)
    return target / source.subfolder if source.subfolder else target


@pytest.mark.slow
def test_the_pipeline_loads_from_the_selected_files_only(
    tiny_models: dict[str, Path], tmp_path: Path, packaged: dict[str, profiles.ModelProfile]
) -> None:
    repos = _with_distractors(tiny_models, tmp_path / "repos")
    profile = packaged["instantid-sdxl"]
    components: dict[str, Path] = {}
    for name, repo in repos.items():
        source = profile.models[name]
        components[name] = _download(source, repo, tmp_path / "downloads" / name)
    downloaded = {p.name for p in (tmp_path / "downloads").rglob("*") if p.is_file()}
    assert not any(name.endswith((".bin", ".msgpack")) for name in downloaded), downloaded
    assert "diffusion_pytorch_model.fp16.safetensors" in downloaded
    components["face_adapter"] = tiny_models["face_adapter"]
    components["clothing_adapter"] = tiny_models["clothing_adapter"]
    loaded = pipeline.ComposePipeline.load(
        components,
        dtype="float32",
        device="cpu",
        options={},
        variants={name: source.variant for name, source in profile.models.items()},
    )
    assert tuple(loaded.unet.config.block_out_channels) == (32, 64)
    # Without the variant the loader looks for the fp32 files, which were not downloaded.
    with pytest.raises(Exception, match=r"diffusion_pytorch_model|safetensors|no file"):
        pipeline.ComposePipeline.load(components, dtype="float32", device="cpu", options={})


@pytest.mark.slow
def test_the_safety_checker_loads_from_the_selected_files_only(
    tmp_path: Path, packaged: dict[str, profiles.ModelProfile]
) -> None:
    """The tiny checker re-saved as the SD v1-4 repository holds it: an fp16 variant beside
    the fp32 weights and ``.bin`` copies; the profile's selection loads the fp16 file."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from skimage import data

    from compose_inference import moderation, tiny

    rocket = Image.fromarray(data.rocket())
    coffee = Image.fromarray(data.coffee())
    repo = tiny.build_safety_checker(tmp_path / "repo", flagged=[rocket], passed=[coffee])
    folder = repo / "safety_checker"
    model = StableDiffusionSafetyChecker.from_pretrained(str(folder))
    model.to(torch.float16).save_pretrained(str(folder), variant="fp16")
    torch.save(model.state_dict(), str(folder / "pytorch_model.fp16.bin"))
    # The fp32 copies are corrupted: loading one instead of the variant fails loudly.
    (folder / "model.safetensors").write_bytes(b"not the variant")
    (folder / "pytorch_model.bin").write_bytes(b"pickle copy")
    source = packaged["instantid-sdxl"].models["safety_checker"]
    downloaded = _download(source, repo, tmp_path / "download")
    names = {p.relative_to(downloaded).as_posix() for p in downloaded.rglob("*") if p.is_file()}
    assert names == {
        "safety_checker/config.json",
        "safety_checker/model.fp16.safetensors",
        "feature_extractor/preprocessor_config.json",
    }
    checker = moderation.SafetyChecker.load(downloaded, variant=source.variant)
    assert [v.flagged for v in checker.judge([rocket, coffee])] == [True, False]
    with pytest.raises(Exception, match=r"model\.safetensors|no file"):
        moderation.SafetyChecker.load(downloaded)  # without the variant: the fp32 file
