"""Model store: profile sources resolved to local paths through a cache, with checksums, safe
extraction, reuse, offline mode and the Hugging Face cache layout (no network anywhere)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from compose_api import contract, profiles
from compose_inference import errors, modelstore
from tests.inference.io.conftest import SleepLog
from tests.support import s3


def tarball(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def source(uri: str, **fields: str) -> profiles.ModelSource:
    return profiles.ModelSource(uri=uri, **fields)


def store(
    cache: Path, *, offline: bool = False, sleeps: SleepLog | None = None
) -> modelstore.ModelStore:
    return modelstore.ModelStore(
        modelstore.StoreSettings(cache_dir=cache, offline=offline), sleep=sleeps or SleepLog()
    )


MODEL_FILES = {
    "base/unet/config.json": b'{"unet": true}',
    "base/model_index.json": b"{}",
    "face_adapter/ip-adapter.bin": b"adapter-bytes",
}


@pytest.fixture
def model_tarball(s3_env: s3.S3Server) -> tuple[str, str]:
    """A model.tar.gz in the local S3 server; returns its URI and sha256."""
    bucket = s3_env.new_bucket("models")
    data = tarball(MODEL_FILES)
    s3_env.client().put_object(Bucket=bucket, Key="profile/model.tar.gz", Body=data)
    return f"s3://{bucket}/profile/model.tar.gz", hashlib.sha256(data).hexdigest()


def test_tarball_with_sha256_is_extracted_and_selected(
    model_tarball: tuple[str, str], tmp_path: Path
) -> None:
    uri, digest = model_tarball
    models = store(tmp_path)
    base = models.resolve_source("base", source(uri, subfolder="base", sha256=digest))
    adapter = models.resolve_source(
        "face_adapter", source(uri, subfolder="face_adapter", filename="ip-adapter.bin")
    )
    assert (base / "unet" / "config.json").read_bytes() == b'{"unet": true}'
    assert adapter.read_bytes() == b"adapter-bytes"
    assert models.downloads == 1  # one tarball serves both components


def test_cached_tarball_is_reused_without_a_second_download(
    model_tarball: tuple[str, str], s3_env: s3.S3Server, tmp_path: Path
) -> None:
    uri, digest = model_tarball
    first = store(tmp_path).resolve_source("base", source(uri, subfolder="base", sha256=digest))
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    s3_env.client().delete_object(Bucket=bucket, Key=key)  # a second download would now fail
    again = store(tmp_path)
    second = again.resolve_source("base", source(uri, subfolder="base", sha256=digest))
    assert second == first
    assert again.downloads == 0


def test_sha256_mismatch_fails_and_leaves_nothing(
    model_tarball: tuple[str, str], tmp_path: Path
) -> None:
    uri, _ = model_tarball
    wrong = "0" * 64
    with pytest.raises(errors.ModelLoadFailed) as info:
        store(tmp_path).resolve_source("base", source(uri, subfolder="base", sha256=wrong))
    assert info.value.exit_code == contract.ExitCode.MODEL_LOAD_FAILED
    assert f"profile.models.base ({uri}): sha256 mismatch (expected {wrong}" in str(info.value)
    assert not list(tmp_path.rglob("extracted"))
    assert not list(tmp_path.rglob("*.part"))


def test_offline_mode_uses_the_cache_only(model_tarball: tuple[str, str], tmp_path: Path) -> None:
    uri, digest = model_tarball
    with pytest.raises(errors.ModelLoadFailed, match="offline mode and not in the cache"):
        store(tmp_path, offline=True).resolve_source("base", source(uri, subfolder="base"))
    store(tmp_path).resolve_source("base", source(uri, subfolder="base", sha256=digest))
    offline = store(tmp_path, offline=True)
    path = offline.resolve_source("base", source(uri, subfolder="base", sha256=digest))
    assert (path / "model_index.json").exists()
    assert offline.downloads == 0


def test_offline_from_environment() -> None:
    assert modelstore.StoreSettings.from_env({"HF_HUB_OFFLINE": "1"}).offline
    assert modelstore.StoreSettings.from_env({"COMPOSE_OFFLINE": "true"}).offline
    settings = modelstore.StoreSettings.from_env({"COMPOSE_MODEL_CACHE": "/models"})
    assert settings.cache_dir == Path("/models")
    assert not settings.offline


def test_missing_tarball_is_model_load_failed_without_retry(
    s3_env: s3.S3Server, tmp_path: Path
) -> None:
    bucket = s3_env.new_bucket("models")
    sleeps = SleepLog()
    with pytest.raises(errors.ModelLoadFailed, match="object does not exist"):
        store(tmp_path, sleeps=sleeps).resolve_source(
            "base", source(f"s3://{bucket}/none/model.tar.gz")
        )
    assert sleeps.delays == []


@pytest.mark.parametrize("member", ["../escape.txt", "/etc/evil.txt", "ok/../../escape.txt"])
def test_path_traversal_in_a_tarball_is_refused(
    s3_env: s3.S3Server, tmp_path: Path, member: str
) -> None:
    bucket = s3_env.new_bucket("models")
    s3_env.client().put_object(
        Bucket=bucket, Key="bad/model.tar.gz", Body=tarball({"good.txt": b"x", member: b"evil"})
    )
    cache = tmp_path / "cache"
    with pytest.raises(errors.ModelLoadFailed, match="unsafe path"):
        store(cache).resolve_source("base", source(f"s3://{bucket}/bad/model.tar.gz"))
    assert not (tmp_path / "escape.txt").exists()
    assert not list(cache.rglob("extracted"))


def test_symlink_leaving_the_folder_is_refused(s3_env: s3.S3Server, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        link = tarfile.TarInfo("models/passwd")
        link.type = tarfile.SYMTYPE
        link.linkname = "../../../../etc/passwd"
        tar.addfile(link)
    bucket = s3_env.new_bucket("models")
    s3_env.client().put_object(Bucket=bucket, Key="m.tar.gz", Body=buffer.getvalue())
    with pytest.raises(errors.ModelLoadFailed, match="unsafe path"):
        store(tmp_path).resolve_source("base", source(f"s3://{bucket}/m.tar.gz"))


def test_s3_prefix_downloads_every_object(s3_env: s3.S3Server, tmp_path: Path) -> None:
    bucket = s3_env.new_bucket("models")
    client = s3_env.client()
    client.put_object(Bucket=bucket, Key="vae/config.json", Body=b"{}")
    client.put_object(Bucket=bucket, Key="vae/diffusion_pytorch_model.safetensors", Body=b"w")
    client.put_object(Bucket=bucket, Key="other/x", Body=b"not this")
    path = store(tmp_path).resolve_source("vae", source(f"s3://{bucket}/vae/"))
    assert sorted(item.name for item in path.iterdir() if not item.name.startswith(".")) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]


def test_s3_prefix_downloads_only_the_allowed_patterns(s3_env: s3.S3Server, tmp_path: Path) -> None:
    bucket = s3_env.new_bucket("models")
    client = s3_env.client()
    for key in (
        "sdxl/unet/config.json",
        "sdxl/unet/diffusion_pytorch_model.fp16.safetensors",
        "sdxl/unet/diffusion_pytorch_model.safetensors",
        "sdxl/unet/diffusion_flax_model.msgpack",
        "sdxl/sd_xl_base_1.0.safetensors",
    ):
        client.put_object(Bucket=bucket, Key=key, Body=b"w")
    models = store(tmp_path)
    selective = profiles.ModelSource(
        uri=f"s3://{bucket}/sdxl/",
        allow_patterns=["unet/config.json", "unet/*.fp16.safetensors"],
    )
    root = models.resolve_source("base", selective)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == [
        ".complete",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
    ]
    assert models.downloads == 2
    # The same prefix without a selection is another cache entry: it is not served the subset.
    whole = models.resolve_source("base", source(f"s3://{bucket}/sdxl/"))
    assert (whole / "sd_xl_base_1.0.safetensors").exists()
    nothing = profiles.ModelSource(uri=f"s3://{bucket}/sdxl/", allow_patterns=["*.ckpt"])
    with pytest.raises(errors.ModelLoadFailed, match="no objects under the prefix match"):
        models.resolve_source("base", nothing)


def test_s3_single_file_with_checksum(s3_env: s3.S3Server, tmp_path: Path) -> None:
    bucket = s3_env.new_bucket("models")
    s3_env.client().put_object(Bucket=bucket, Key="lora/fast.safetensors", Body=b"lora")
    digest = hashlib.sha256(b"lora").hexdigest()
    path = store(tmp_path).resolve_source(
        "lora", source(f"s3://{bucket}/lora/fast.safetensors", sha256=digest)
    )
    assert path.name == "fast.safetensors"
    assert path.read_bytes() == b"lora"


def test_local_paths(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "adapter.bin").write_bytes(b"abc")
    models = store(tmp_path / "cache")
    assert models.resolve_source("base", source(str(tmp_path / "base"))) == tmp_path / "base"
    digest = hashlib.sha256(b"abc").hexdigest()
    assert models.resolve_source(
        "face_adapter", source(str(tmp_path), filename="adapter.bin", sha256=digest)
    ) == (tmp_path / "adapter.bin")
    with pytest.raises(errors.ModelLoadFailed, match=r"profile.models.vae .*does not exist"):
        models.resolve_source("vae", source(str(tmp_path / "missing")))
    with pytest.raises(errors.ModelLoadFailed, match="sha256 mismatch"):
        models.resolve_source("x", source(str(tmp_path / "adapter.bin"), sha256="1" * 64))


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root: Path) -> Path:
    """A Hugging Face cache laid out as the hub library writes it (blobs, refs, snapshots)."""
    repo = root / "hf" / "models--InstantX--InstantID"
    files = {
        "ControlNetModel/config.json": b'{"_class_name": "ControlNetModel"}',
        "ControlNetModel/diffusion_pytorch_model.safetensors": b"weights",
        "ip-adapter.bin": b"face-adapter",
    }
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / COMMIT / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (name.count("/") + 2)) / "blobs" / blob.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return root


def test_hf_sources_resolve_from_the_hub_cache_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = hub_cache(tmp_path)
    models = modelstore.ModelStore(
        modelstore.StoreSettings.from_env(
            {"COMPOSE_MODEL_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
        )
    )
    folder = models.resolve_source(
        "identitynet", source("hf://InstantX/InstantID", subfolder="ControlNetModel")
    )
    assert (folder / "config.json").read_bytes() == b'{"_class_name": "ControlNetModel"}'
    assert COMMIT in str(folder)
    digest = hashlib.sha256(b"face-adapter").hexdigest()
    adapter = models.resolve_source(
        "face_adapter",
        source(
            "hf://InstantX/InstantID", filename="ip-adapter.bin", revision=COMMIT, sha256=digest
        ),
    )
    assert adapter.read_bytes() == b"face-adapter"


def test_hf_source_missing_from_the_cache_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models = store(hub_cache(tmp_path), offline=True)
    with pytest.raises(errors.ModelLoadFailed) as info:
        models.resolve_source("base", source("hf://stabilityai/stable-diffusion-xl-base-1.0"))
    message = str(info.value)
    assert message.startswith(
        "profile.models.base (hf://stabilityai/stable-diffusion-xl-base-1.0): offline mode: "
        "not in the cache"
    )


def test_whole_profile_resolves(model_tarball: tuple[str, str], tmp_path: Path) -> None:
    uri, digest = model_tarball
    profile = profiles.ModelProfile.model_validate(
        {
            "name": "packed",
            "licence": {"name": "test"},
            "models": {
                "base": {"uri": uri, "subfolder": "base", "sha256": digest},
                "face_adapter": {
                    "uri": uri,
                    "subfolder": "face_adapter",
                    "filename": "ip-adapter.bin",
                },
            },
        }
    )
    paths = store(tmp_path).resolve(profile)
    assert set(paths) == {"base", "face_adapter"}
    assert all(path.exists() for path in paths.values())
