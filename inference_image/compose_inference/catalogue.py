"""The model profiles this image knows by name: the built-in ``smoke`` profile and the production
profiles packaged in ``profiles/default.yaml`` (plus an optional extra file).

``__main__`` looks profiles up here in local mode (``--profile NAME``) and in pod mode when the job
document names a profile without listing its models. An unknown name is UNKNOWN_PROFILE.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from compose_api import profiles
from compose_inference import errors, modelstore

SMOKE = "smoke"


def packaged_text() -> str:
    """The text of the packaged ``profiles/default.yaml``."""
    return (
        resources.files("compose_inference")
        .joinpath("profiles", "default.yaml")
        .read_text(encoding="utf-8")
    )


def packaged() -> dict[str, profiles.ModelProfile]:
    return profiles.load_profiles(packaged_text())


def from_file(path: Path) -> dict[str, profiles.ModelProfile]:
    """Profiles from a YAML file (a list, or a mapping with ``profiles:``, or one profile)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise errors.UnknownProfile(f"--profile-file {path}: {error.strerror or error}") from None
    try:
        import yaml

        data = yaml.safe_load(text)
        if isinstance(data, dict) and "profiles" not in data:
            text = yaml.safe_dump([data])
        return profiles.load_profiles(text)
    except (ValueError, yaml.YAMLError) as error:
        raise errors.UnknownProfile(f"--profile-file {path}: {error}") from None


def smoke(store: modelstore.ModelStore) -> profiles.ModelProfile:
    """The built-in smoke profile, its models as ``builtin:smoke`` sources: the model store
    builds them on first use, so cheap input checks still come before the build."""
    from compose_inference import tiny

    template = tiny.smoke_profile(store.settings.cache_dir / "builtin" / "smoke" / "models")
    lazy = {name: profiles.ModelSource(uri="builtin:smoke") for name in template.models}
    return template.model_copy(update={"models": lazy})


def names(extra: dict[str, profiles.ModelProfile] | None = None) -> list[str]:
    return sorted({SMOKE, *packaged(), *(extra or {})})


def lookup(
    name: str,
    *,
    store: modelstore.ModelStore,
    extra: dict[str, profiles.ModelProfile] | None = None,
) -> profiles.ModelProfile:
    """The profile called ``name``, or UnknownProfile listing the known ones."""
    if extra and name in extra:
        return extra[name]
    if name == SMOKE:
        return smoke(store)
    known = packaged()
    if name in known:
        return known[name]
    raise errors.UnknownProfile(
        f"profile {name!r} is not known to this image (known: {', '.join(names(extra))})"
    )
