"""Bad inputs through the pod entrypoint: each ends with its exit code, a termination message
naming the field and the reason, and nothing uploaded. They all fail before generation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compose_api import contract
from compose_inference import __main__ as entrypoint
from tests.inference.io.conftest import HttpServer, bucket_keys, encode, job_document
from tests.support import s3


class Case:
    """Inputs in a fresh bucket, a results bucket, and a way to run the entrypoint."""

    def __init__(self, server: s3.S3Server, tmp_path: Path, profile: dict[str, object]) -> None:
        self.server = server
        self.tmp_path = tmp_path
        self.profile = profile
        self.inputs = server.new_bucket("inputs")
        self.results = server.new_bucket("results")

    def put(self, key: str, data: bytes) -> str:
        self.server.client().put_object(Bucket=self.inputs, Key=key, Body=data)
        return f"s3://{self.inputs}/{key}"

    def run(self, document_json: str) -> tuple[int, dict[str, object]]:
        job_file = self.tmp_path / "job.json"
        job_file.write_text(document_json)
        log = self.tmp_path / "termination-log"
        env = dict(os.environ)
        env.update(
            {
                "COMPOSE_TERMINATION_LOG": str(log),
                "COMPOSE_MODEL_CACHE": str(self.tmp_path / "cache"),
                "COMPOSE_NETGUARD_ALLOW_CIDRS": "127.0.0.1/32",
                "COMPOSE_FETCH_ATTEMPTS": "2",
                "COMPOSE_FETCH_BACKOFF_SECONDS": "0.01",
            }
        )
        code = entrypoint.run_job(["--job-file", str(job_file)], environ=env)
        message = json.loads(log.read_text())
        return code, message

    def job(self, **overrides: object) -> str:
        fields: dict[str, object] = {
            "person": overrides.pop("person", None) or self.put("person.png", self.good),
            "clothing": overrides.pop("clothing", None) or [self.put("shirt.png", self.good)],
            "place": overrides.pop("place", None) or self.put("place.png", self.good),
            "bucket": self.results,
            "profile": overrides.pop("profile", self.profile),
        }
        return job_document(**fields).to_json()  # type: ignore[arg-type]

    good: bytes = b""


@pytest.fixture
def case(
    s3_env: s3.S3Server, tmp_path: Path, local_profile: dict[str, object], astronaut_png: bytes
) -> Case:
    made = Case(s3_env, tmp_path, local_profile)
    made.good = astronaut_png
    return made


def check_failed(
    case: Case, document: str, code: contract.ExitCode, reason: str, *fragments: str
) -> None:
    exit_code, message = case.run(document)
    assert exit_code == code
    assert message["exitCode"] == int(code)
    assert message["reason"] == reason
    for fragment in fragments:
        assert fragment in str(message["message"])
    assert "result" not in message
    assert bucket_keys(case.server, case.results) == []


def test_not_an_image(case: Case) -> None:
    person = case.put("person.png", b"GIF89a? no: just some text pretending to be an image")
    check_failed(
        case,
        case.job(person=person),
        contract.ExitCode.INPUT_REJECTED,
        "InputRejected",
        "spec.inputs.person.uri: not an image",
    )


def test_truncated_file(case: Case, astronaut_png: bytes) -> None:
    shirt = case.put("shirt.png", astronaut_png[: len(astronaut_png) // 3])
    check_failed(
        case,
        case.job(clothing=[shirt]),
        contract.ExitCode.INPUT_REJECTED,
        "InputRejected",
        "spec.inputs.clothing[0].uri: truncated or corrupt PNG file",
    )


def test_oversized_pixels(case: Case) -> None:
    place = case.put("place.png", encode(Image.new("1", (8000, 6000)), "PNG"))
    check_failed(
        case,
        case.job(place=place),
        contract.ExitCode.INPUT_REJECTED,
        "InputRejected",
        "spec.inputs.place.uri: 8000x6000 is 48000000 pixels",
    )


@pytest.mark.parametrize("fmt", ["GIF", "BMP"])
def test_unsupported_format(case: Case, fmt: str) -> None:
    from skimage import data

    shirt = case.put("shirt.png", encode(Image.fromarray(data.coffee()), fmt))
    check_failed(
        case,
        case.job(clothing=[case.put("ok.png", case.good), shirt]),
        contract.ExitCode.INPUT_REJECTED,
        "InputRejected",
        f"spec.inputs.clothing[1].uri: unsupported format {fmt}",
    )


def test_no_face(case: Case) -> None:
    flat = np.full((256, 256, 3), 128, dtype=np.uint8)
    person = case.put("person.png", encode(Image.fromarray(flat), "PNG"))
    check_failed(
        case,
        case.job(person=person),
        contract.ExitCode.NO_FACE,
        "NoFaceFound",
        "spec.inputs.person.uri: no face",
    )


def test_unreachable_url(case: Case) -> None:
    closed = HttpServer()
    closed.close_unstarted()
    url = f"https://127.0.0.1:{closed.port}/person.jpg"
    check_failed(
        case,
        case.job(person=url),
        contract.ExitCode.INPUT_UNAVAILABLE,
        "InputUnavailable",
        "spec.inputs.person.uri:",
        "unreachable after 2 attempts",
    )


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://169.254.169.254/latest/meta-data/iam/security-credentials/", "cloud metadata"),
        ("https://10.1.2.3/internal.png", "private address"),
        ("https://[fd00:ec2::254]/latest/", "cloud metadata"),
        ("https://127.0.0.2/x.png", "loopback address"),  # only 127.0.0.1 is allow-listed
    ],
)
def test_forbidden_address(case: Case, url: str, why: str) -> None:
    check_failed(
        case,
        case.job(place=url),
        contract.ExitCode.INPUT_REJECTED,
        "InputRejected",
        "spec.inputs.place.uri: refused",
        why,
    )


def test_missing_s3_object(case: Case) -> None:
    missing = f"s3://{case.inputs}/nobody.png"
    check_failed(
        case,
        case.job(person=missing),
        contract.ExitCode.INPUT_UNAVAILABLE,
        "InputUnavailable",
        f"spec.inputs.person.uri: {missing} does not exist",
    )


def test_unknown_profile(case: Case) -> None:
    unknown = {"name": "no-such-profile", "licence": {"name": "none"}}
    check_failed(
        case,
        case.job(profile=unknown),
        contract.ExitCode.UNKNOWN_PROFILE,
        "UnknownProfile",
        "profile 'no-such-profile' is not known to this image",
    )


def test_missing_model_is_model_load_failed(case: Case, local_profile: dict[str, object]) -> None:
    broken = json.loads(json.dumps(local_profile))
    broken["models"]["face_analysis"]["uri"] = "/nonexistent/antelopev2"
    check_failed(
        case,
        case.job(profile=broken),
        contract.ExitCode.MODEL_LOAD_FAILED,
        "ModelLoadFailed",
        "profile.models.face_analysis (/nonexistent/antelopev2)",
    )


def test_invalid_job_document(case: Case) -> None:
    check_failed(
        case,
        json.dumps({"version": 1, "job": {"name": "x"}}),
        contract.ExitCode.INPUT_REJECTED,
        "InputRejected",
        "invalid job document: jobDocument.job.namespace: Field required",
    )


def test_request_checks_come_before_any_fetch_and_name_the_field(
    case: Case, local_profile: dict[str, object]
) -> None:
    """Sizes outside the compiled buckets and clothing without a clothing adapter are refused
    before an input is read (the inputs here do not even exist) or a model loaded."""
    options = dict(local_profile["options"])  # type: ignore[call-overload]
    compiled = {
        **local_profile,
        "options": {**options, "compile": True, "size_buckets": [[128, 128]]},
    }
    missing = f"s3://{case.inputs}/missing.png"
    document = case.job(profile=compiled, person=missing)
    check_failed(
        case,
        document,
        contract.ExitCode.INPUT_REJECTED,
        "InputRejected",
        "spec.params.width/height: 64x64 is not one of the compiled size buckets [[128, 128]]",
    )
    models_ = dict(local_profile["models"])  # type: ignore[call-overload]
    del models_["image_encoder"], models_["clothing_adapter"]
    no_adapter = {**local_profile, "models": models_}
    check_failed(
        case,
        case.job(profile=no_adapter, person=missing),
        contract.ExitCode.INPUT_REJECTED,
        "InputRejected",
        "spec.params.clothingStrength: this profile has no clothing_adapter",
        "spec.params.placeStrength",
    )
    assert not (case.tmp_path / "cache" / "builtin").exists()
