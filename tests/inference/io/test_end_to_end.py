"""End to end: tiny models packed as model.tar.gz in S3, inputs in S3, the real entrypoint run as
a subprocess (pod mode), the result in S3 and the termination message checked against it."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from compose_api import contract
from tests.inference.io.conftest import bucket_keys, encode, job_document
from tests.support import s3

pytestmark = pytest.mark.slow


def pack(root: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
    return buffer.getvalue()


def tarball_profile(
    tiny_models: dict[str, Path], root: Path, uri: str, digest: str
) -> dict[str, object]:
    """Every component points into the one tarball, selected by subfolder/filename."""
    models: dict[str, dict[str, str]] = {}
    for name, path in tiny_models.items():
        relative = path.relative_to(root)
        entry = {"uri": uri, "sha256": digest}
        if path.is_file():
            entry.update({"subfolder": str(relative.parent), "filename": relative.name})
        else:
            entry["subfolder"] = str(relative)
        models[name] = entry
    return {
        "name": "tiny-packed",
        "dtype": "float32",
        "models": models,
        # The face refinement on (as in the default profile), at the tiny models' size.
        "options": {
            "device": "cpu",
            "steps": 2,
            "width": 64,
            "height": 64,
            "refine_face": True,
            "refine_size": 64,
            "refine_strength": 0.5,
        },
        "licence": {"name": "Apache-2.0", "commercialUse": True},
    }


def test_job_runs_end_to_end_from_s3_to_s3(
    s3_server: s3.S3Server,
    tiny_models: dict[str, Path],
    tiny_root: Path,
    astronaut_png: bytes,
    tmp_path: Path,
) -> None:
    from skimage import data

    client = s3_server.client()
    inputs = s3_server.new_bucket("inputs")
    results = s3_server.new_bucket("results")
    model_bucket = s3_server.new_bucket("models")
    archive = pack(tiny_root)
    digest = hashlib.sha256(archive).hexdigest()
    client.put_object(Bucket=model_bucket, Key="tiny/model.tar.gz", Body=archive)
    uploads = {
        "person.png": astronaut_png,
        "shirt.jpg": encode(Image.fromarray(data.coffee()), "JPEG"),
        "trousers.webp": encode(Image.fromarray(data.chelsea()), "WEBP"),
        "place.jpg": encode(Image.fromarray(data.rocket()), "JPEG"),
    }
    for key, body in uploads.items():
        client.put_object(Bucket=inputs, Key=key, Body=body)
    document = job_document(
        person=f"s3://{inputs}/person.png",
        clothing=[f"s3://{inputs}/shirt.jpg", f"s3://{inputs}/trousers.webp"],
        place=f"s3://{inputs}/place.jpg",
        bucket=results,
        profile=tarball_profile(
            tiny_models, tiny_root, f"s3://{model_bucket}/tiny/model.tar.gz", digest
        ),
        seed=1234,
    )
    log = tmp_path / "termination-log"
    env = dict(os.environ)
    env.update(s3_server.env())
    env.update(
        {
            contract.JOB_DOCUMENT_ENV: document.to_json(),
            "COMPOSE_TERMINATION_LOG": str(log),
            "COMPOSE_MODEL_CACHE": str(tmp_path / "cache"),
        }
    )
    completed = subprocess.run(
        [sys.executable, "-m", "compose_inference"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]

    message = contract.TerminationMessage.parse(log.read_text())
    assert message is not None
    assert (message.exit_code, message.reason) == (0, "Completed")
    assert message.result is not None
    key = "results/team-a/look-1/uid-1234/result.png"
    # The result, and the reuse index entry that offers it to later jobs of the namespace.
    keys = bucket_keys(s3_server, results)
    assert key in keys
    (index_key,) = set(keys) - {key}
    assert index_key.startswith("results/.reuse/team-a/") and index_key.endswith(".json")
    entry = json.loads(client.get_object(Bucket=results, Key=index_key)["Body"].read())
    assert entry["job"] == {"namespace": "team-a", "name": "look-1", "uid": "uid-1234"}
    assert entry["result"]["s3Uri"] == f"s3://{results}/{key}"
    assert message.result.s3_uri == f"s3://{results}/{key}"

    stored = client.get_object(Bucket=results, Key=key)
    body = stored["Body"].read()
    sha = hashlib.sha256(body).hexdigest()
    assert message.result.sha256 == sha
    assert message.result.bytes == len(body)
    assert message.result.seed == 1234
    assert (message.result.width, message.result.height) == (64, 64)
    assert stored["ContentType"] == "image/png"
    assert stored["Metadata"]["sha256"] == sha
    assert stored["Metadata"]["seed"] == "1234"
    assert stored["Metadata"]["profile"] == "tiny-packed"
    assert stored["Metadata"]["job"] == "team-a/look-1"
    with Image.open(io.BytesIO(body)) as image:
        assert image.format == "PNG"
        assert image.size == (64, 64)

    timings = message.timings
    assert timings is not None
    for stage in ("fetch", "face_analysis", "model_load", "inference", "postprocess", "upload"):
        value = getattr(timings, stage)
        assert value is not None and value >= 0, stage
    assert timings.total is not None and timings.total >= (timings.inference or 0) > 0
    assert timings.refine is not None and timings.refine > 0  # its own stage
    assert timings.reuse is not None and timings.reuse >= 0  # the lookup and the index entry
    # The values used are in the result, and what the profile's pins changed is said.
    assert (message.result.steps, message.result.guidance) == (2, 5.0)
    assert message.message == (
        "composed 64x64 png; profile tiny-packed pins steps=2 (asked 30),"
        " width=64 (asked 1024), height=64 (asked 1024)"
    )
    # Identity similarity before and after the refinement pass (the tiny detector may find no
    # face in noise, so each is a number or absent, never invented).
    raw = json.loads(log.read_text())["result"]
    assert set(raw) >= {"steps", "guidance"}
    assert len(log.read_bytes()) < contract.TERMINATION_MESSAGE_LIMIT
    # The same JSON went to stdout, for `kubectl logs`.
    assert json.loads(completed.stdout.strip().splitlines()[-1])["result"]["sha256"] == sha


def test_a_flagged_result_fails_the_process_and_nothing_is_stored(
    s3_server: s3.S3Server,
    tiny_models: dict[str, Path],
    tiny_root: Path,
    astronaut_png: bytes,
    tmp_path: Path,
) -> None:
    """The safety check in the real process: the checker, one that flags every image, comes
    from an S3 prefix with the profile's file selection (a pickled copy beside it is not
    downloaded); the process exits 24 (ContentRejected) and the results bucket stays empty."""
    from compose_inference import tiny

    client = s3_server.client()
    inputs = s3_server.new_bucket("inputs")
    results = s3_server.new_bucket("results")
    model_bucket = s3_server.new_bucket("models")
    archive = pack(tiny_root)
    client.put_object(Bucket=model_bucket, Key="tiny/model.tar.gz", Body=archive)
    checker = tiny.build_safety_checker(tmp_path / "checker", flag_all=True)
    for path in sorted(checker.rglob("*")):
        if path.is_file():
            key = f"checker/{path.relative_to(checker).as_posix()}"
            client.put_object(Bucket=model_bucket, Key=key, Body=path.read_bytes())
    client.put_object(
        Bucket=model_bucket, Key="checker/safety_checker/pytorch_model.bin", Body=b"not read"
    )
    for key in ("person.png", "shirt.png", "place.png"):
        client.put_object(Bucket=inputs, Key=key, Body=astronaut_png)
    profile = tarball_profile(
        tiny_models,
        tiny_root,
        f"s3://{model_bucket}/tiny/model.tar.gz",
        hashlib.sha256(archive).hexdigest(),
    )
    models = profile["models"]
    assert isinstance(models, dict)
    models["safety_checker"] = {
        "uri": f"s3://{model_bucket}/checker/",
        "allowPatterns": [
            "safety_checker/config.json",
            "safety_checker/model.safetensors",
            "feature_extractor/preprocessor_config.json",
        ],
    }
    profile["safety"] = {"output": True}
    document = job_document(
        person=f"s3://{inputs}/person.png",
        clothing=[f"s3://{inputs}/shirt.png"],
        place=f"s3://{inputs}/place.png",
        bucket=results,
        profile=profile,
        seed=99,
    )
    log = tmp_path / "termination-log"
    cache = tmp_path / "cache"
    env = dict(os.environ)
    env.update(s3_server.env())
    env.update(
        {
            contract.JOB_DOCUMENT_ENV: document.to_json(),
            "COMPOSE_TERMINATION_LOG": str(log),
            "COMPOSE_MODEL_CACHE": str(cache),
        }
    )
    completed = subprocess.run(
        [sys.executable, "-m", "compose_inference"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == contract.ExitCode.CONTENT_REJECTED, completed.stderr[-3000:]
    message = contract.TerminationMessage.parse(log.read_text())
    assert message is not None
    assert (message.exit_code, message.reason) == (24, "ContentRejected")
    assert message.message == "the generated image: flagged by the safety check (nsfw concepts 0)"
    assert message.result is None
    assert message.timings is not None and message.timings.safety_check is not None
    assert bucket_keys(s3_server, results) == []
    assert json.loads(completed.stdout.strip().splitlines()[-1])["reason"] == "ContentRejected"
    downloaded = {p.name for p in cache.rglob("*") if p.is_file()}
    assert "model.safetensors" in downloaded and "pytorch_model.bin" not in downloaded
