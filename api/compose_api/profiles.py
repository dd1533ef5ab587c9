"""Model profiles: which image, GPU placement and model weights a CompositionJob runs with.

Profiles are configuration, not code: the Helm chart ships them in a ConfigMap the operator reads
(``profiles.yaml``: a list of profiles), and the inference image's local mode reads the same YAML
from a file or uses its built-in ``smoke`` profile. The operator uses the image, resources and
placement; it copies the whole profile into the job document so the pod needs no API access to
learn where its weights are.
"""

from __future__ import annotations

import fnmatch
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import alias_generators

from compose_api import models

# hf://org/repo, s3://bucket/key (a model.tar.gz or a prefix ending in /), or a local path.
SOURCE_PATTERN = r"^(hf://[A-Za-z0-9][\w.\-]*/[\w.\-]+|s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/.*|/.*|builtin:[a-z0-9\-]+)$"


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(
        alias_generator=alias_generators.to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
    )


class ModelSource(_Model):
    """Where one component's weights come from."""

    uri: str = pydantic.Field(
        pattern=SOURCE_PATTERN,
        description="hf://org/repo, s3://bucket/model.tar.gz, s3://bucket/prefix/, or /local/path.",
    )
    revision: str | None = pydantic.Field(
        default=None, description="Hugging Face revision (a commit hash pins it)."
    )
    subfolder: str | None = None
    filename: str | None = pydantic.Field(
        default=None, description="A single file inside the source, when the component is one file."
    )
    allow_patterns: list[Annotated[str, pydantic.Field(min_length=1, max_length=200)]] | None = (
        pydantic.Field(
            default=None,
            min_length=1,
            max_length=64,
            description="Only the files matching one of these glob patterns (relative to the "
            "subfolder when one is given, fnmatch rules: '*' also matches '/') are downloaded. "
            "Empty: every file of the folder.",
        )
    )
    variant: str | None = pydantic.Field(
        default=None,
        pattern=r"^[a-z0-9_]+$",
        max_length=32,
        description="Weights variant loaded from the folder ('fp16': "
        "diffusion_pytorch_model.fp16.safetensors, model.fp16.safetensors).",
    )
    sha256: str | None = pydantic.Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="Checksum of the downloaded file (tarball or single file).",
    )

    @pydantic.model_validator(mode="after")
    def _patterns_select_inside_a_folder(self) -> ModelSource:
        if self.allow_patterns is not None:
            if self.filename:
                raise ValueError("allowPatterns: not with filename (one file is already selected)")
            for pattern in self.allow_patterns:
                if pattern.startswith("/") or ".." in pattern.split("/"):
                    raise ValueError(f"allowPatterns: {pattern!r} must be relative, without '..'")
        return self

    def selects(self, path: str) -> bool:
        """True when ``path`` (relative to the source root) is one of the files to download."""
        relative = path
        if self.subfolder:
            prefix = self.subfolder.strip("/") + "/"
            if not path.startswith(prefix):
                return False
            relative = path[len(prefix) :]
        if self.filename:
            return relative == self.filename
        if self.allow_patterns is None:
            return True
        return any(fnmatch.fnmatchcase(relative, pattern) for pattern in self.allow_patterns)

    def download_patterns(self) -> list[str] | None:
        """The patterns relative to the repository root (huggingface_hub's ``allow_patterns``)."""
        prefix = self.subfolder.strip("/") + "/" if self.subfolder else ""
        if self.filename:
            return [prefix + self.filename]
        if self.allow_patterns is None:
            return [f"{prefix}*"] if prefix else None
        return [prefix + pattern for pattern in self.allow_patterns]


class Licence(_Model):
    name: str
    commercial_use: bool = False
    note: str = ""


class Resources(_Model):
    gpu: int = pydantic.Field(default=1, ge=0, le=8)
    cpu: str = "3"
    memory: str = "14Gi"
    ephemeral_storage: str | None = "30Gi"


class Placement(_Model):
    """Where the pods may run."""

    instance_types: list[str] = pydantic.Field(
        default_factory=lambda: ["g5.xlarge", "g5.2xlarge", "g5.4xlarge", "g5.8xlarge"]
    )
    node_selector: dict[str, str] = pydantic.Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = pydantic.Field(
        default_factory=lambda: [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    )
    capacity_type: models.CapacityType | None = pydantic.Field(
        default=None, description="Default when the job says 'any'; empty: spot or on-demand."
    )


class SafetyCheck(_Model):
    """The content safety check of a profile: a classifier (``models[component]``, the Stable
    Diffusion safety checker) run on the generated image before upload and, when ``inputs`` is
    on, on the input photos before any model for generation is loaded. A flagged image fails the
    job with ContentRejected and nothing is uploaded.

    The checker compares the CLIP image embedding with its concept embeddings: a concept's score
    is ``cosine - threshold + adjustment`` (the thresholds are part of the checker's weights),
    and the image is flagged when any concept scores above 0, exactly as
    ``StableDiffusionSafetyChecker`` decides with ``adjustment`` 0 (see
    ``compose_inference.moderation``)."""

    component: str = pydantic.Field(
        default="safety_checker",
        pattern=r"^[a-z][a-z0-9_]*$",
        max_length=63,
        description="The entry of models that holds the checker.",
    )
    output: bool = pydantic.Field(
        default=True, description="Check the generated image before it is uploaded."
    )
    inputs: bool = pydantic.Field(
        default=False,
        description="Check the person, clothing and place photos once they are validated, "
        "before any model for generation is loaded.",
    )
    adjustment: float = pydantic.Field(
        default=0.0,
        ge=-0.1,
        le=0.1,
        description="Added to every concept score before the '> 0' test: positive flags more "
        "images, negative fewer; 0 is the checker as published.",
    )

    @property
    def enabled(self) -> bool:
        """True when a check is on, i.e. when the checker is loaded at all."""
        return self.output or self.inputs


class ModelProfile(_Model):
    name: str = pydantic.Field(pattern=models.DNS_LABEL_PATTERN, max_length=63)
    description: str = ""
    image: str | None = pydantic.Field(
        default=None, description="Inference image; empty: the operator's default image."
    )
    resources: Resources = pydantic.Field(default_factory=Resources)
    placement: Placement = pydantic.Field(default_factory=Placement)
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    models: dict[str, ModelSource] = pydantic.Field(
        default_factory=dict, description="Component name -> weights source."
    )
    options: dict[str, Any] = pydantic.Field(
        default_factory=dict,
        description="Pipeline options (torch compile, channels-last, few-step LoRA, ...).",
    )
    min_identity_similarity: float = pydantic.Field(default=0.0, ge=0.0, le=1.0)
    identity_retries: int = pydantic.Field(default=0, ge=0, le=5)
    safety: SafetyCheck | None = pydantic.Field(
        default=None,
        description="The content safety check; empty (or output and inputs both off): no check, "
        "and no checker is loaded.",
    )
    licence: Licence

    @pydantic.model_validator(mode="after")
    def _safety_names_a_component(self) -> ModelProfile:
        safety = self.safety
        if safety is not None and safety.enabled and safety.component not in self.models:
            raise ValueError(
                f"safety.component: {safety.component!r} is not one of models"
                f" ({', '.join(sorted(self.models)) or 'none'})"
            )
        return self

    def safety_component(self) -> str | None:
        """The models entry of the safety checker when a check is on, else None."""
        if self.safety is None or not self.safety.enabled:
            return None
        return self.safety.component


def load_profiles(text: str) -> dict[str, ModelProfile]:
    """Parse ``profiles.yaml`` (a list of profiles, or a mapping with ``profiles:``).

    Raises ValueError naming the profile and field at fault.
    """
    data = yaml.safe_load(text) or []
    if isinstance(data, dict):
        data = data.get("profiles", [])
    if not isinstance(data, list):
        raise ValueError("profiles: expected a list of profiles")
    result: dict[str, ModelProfile] = {}
    for index, item in enumerate(data):
        label = item.get("name", f"#{index}") if isinstance(item, dict) else f"#{index}"
        try:
            profile = ModelProfile.model_validate(item)
        except pydantic.ValidationError as error:
            detail = models.describe_validation_error(error, root=f"profiles[{label}]")
            raise ValueError(detail) from None
        if profile.name in result:
            raise ValueError(f"profiles[{profile.name}]: duplicate profile name")
        result[profile.name] = profile
    return result
