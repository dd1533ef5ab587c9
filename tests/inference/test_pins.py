"""The inference extra pins the tested versions, and the Dockerfile installs that same set."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging import requirements

ROOT = Path(__file__).resolve().parents[2]
# The packages whose APIs the pipeline calls; each must be pinned to the version tested here.
PINNED = (
    "torch",
    "diffusers",
    "transformers",
    "accelerate",
    "safetensors",
    "huggingface-hub",
    "peft",
    "insightface",
    "onnxruntime",
    "opencv-python-headless",
)


def inference_requirements() -> dict[str, requirements.Requirement]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    parsed = [
        requirements.Requirement(text)
        for text in data["project"]["optional-dependencies"]["inference"]
    ]
    return {item.name.lower(): item for item in parsed}


def pinned_version(requirement: requirements.Requirement) -> str:
    specs = list(requirement.specifier)
    assert len(specs) == 1 and specs[0].operator == "==", f"{requirement} is not pinned with =="
    return specs[0].version


def test_the_pipeline_stack_is_pinned_to_the_installed_tested_versions() -> None:
    found = inference_requirements()
    for name in PINNED:
        version = pinned_version(found[name])
        installed = metadata.version(name).split("+", 1)[0]
        assert installed == version, f"{name}: pinned {version}, tested with {installed}"


def test_the_pins_are_at_least_what_the_code_needs() -> None:
    found = inference_requirements()
    # transformers' `dtype=` keyword (4.56), diffusers' load_lora_adapter (0.32).
    assert tuple(int(x) for x in pinned_version(found["transformers"]).split(".")[:2]) >= (4, 56)
    assert tuple(int(x) for x in pinned_version(found["diffusers"]).split(".")[:2]) >= (0, 32)


def test_the_dockerfile_installs_the_pinned_torch_and_the_extra() -> None:
    dockerfile = (ROOT / "inference_image" / "Dockerfile").read_text()
    torch_arg = re.search(r"^ARG TORCH_VERSION=(\S+)$", dockerfile, re.MULTILINE)
    assert torch_arg is not None
    assert torch_arg.group(1) == pinned_version(inference_requirements()["torch"])
    assert 'pip install ".[inference]"' in dockerfile
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert f'"torch=={torch_arg.group(1)}"' in setup
