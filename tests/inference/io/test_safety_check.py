"""The profile's safety check through the pod entrypoint, with inputs and results in a real S3
(moto server) and tiny checkers whose decision is set: a flagged image fails the job with
ContentRejected (exit code 24) and nothing is stored; an unflagged one is uploaded; a flagged
input is refused before any model for generation is loaded; a check that is off loads no
checker at all."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from compose_api import contract
from compose_inference import __main__ as entrypoint
from compose_inference import tiny
from tests.inference.io.conftest import bucket_keys, encode, job_document
from tests.support import s3

pytestmark = pytest.mark.slow

MISSING = "/nonexistent/models"


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    from skimage import data

    names = ("astronaut", "coffee", "chelsea", "rocket")
    return {name: Image.fromarray(getattr(data, name)()).convert("RGB") for name in names}


@pytest.fixture(scope="module")
def flag_all_checker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.build_safety_checker(tmp_path_factory.mktemp("flag-all"), flag_all=True)


@pytest.fixture(scope="module")
def rocket_checker(
    tmp_path_factory: pytest.TempPathFactory, photos: dict[str, Image.Image]
) -> Path:
    """Flags the rocket photo; the astronaut, coffee and cat photos pass."""
    passed = [photos[name] for name in ("astronaut", "coffee", "chelsea")]
    return tiny.build_safety_checker(
        tmp_path_factory.mktemp("rocket"), flagged=[photos["rocket"]], passed=passed
    )


class Case:
    """Photos in an inputs bucket, a results bucket, and the entrypoint run on a job."""

    def __init__(self, server: s3.S3Server, tmp_path: Path, photos: dict[str, Image.Image]):
        self.server = server
        self.tmp_path = tmp_path
        self.inputs = server.new_bucket("inputs")
        self.results = server.new_bucket("results")
        for name, image in photos.items():
            body = encode(image, "PNG")
            server.client().put_object(Bucket=self.inputs, Key=f"{name}.png", Body=body)

    def uri(self, name: str) -> str:
        return f"s3://{self.inputs}/{name}.png"

    def run(
        self,
        profile: dict[str, object],
        *,
        person: str = "astronaut",
        clothing: tuple[str, ...] = ("coffee", "chelsea"),
        place: str = "chelsea",
    ) -> tuple[int, dict[str, object]]:
        document = job_document(
            person=self.uri(person),
            clothing=[self.uri(name) for name in clothing],
            place=self.uri(place),
            bucket=self.results,
            profile=profile,
        )
        job_file = self.tmp_path / "job.json"
        job_file.write_text(document.to_json())
        log = self.tmp_path / "termination-log"
        env = dict(os.environ)
        env.update(
            {
                "COMPOSE_TERMINATION_LOG": str(log),
                "COMPOSE_MODEL_CACHE": str(self.tmp_path / "cache"),
            }
        )
        code = entrypoint.run_job(["--job-file", str(job_file)], environ=env)
        message: dict[str, object] = json.loads(log.read_text())
        return code, message

    def stored(self) -> list[str]:
        """The results (the reuse index beside them left out)."""
        return [
            key for key in bucket_keys(self.server, self.results) if ".reuse" not in key.split("/")
        ]


@pytest.fixture
def case(s3_env: s3.S3Server, tmp_path: Path, photos: dict[str, Image.Image]) -> Case:
    return Case(s3_env, tmp_path, photos)


def with_checker(
    profile: dict[str, object], checker: Path | str, **safety: object
) -> dict[str, object]:
    """``profile`` with ``models.safety_checker`` at ``checker`` and the ``safety`` block given
    (None: no block)."""
    changed = copy.deepcopy(profile)
    models = changed["models"]
    assert isinstance(models, dict)
    models["safety_checker"] = {"uri": str(checker)}
    if safety.get("block", True) is None:
        changed.pop("safety", None)
    else:
        changed["safety"] = {key: value for key, value in safety.items() if key != "block"}
    return changed


def timings(message: dict[str, object]) -> dict[str, float]:
    value = message.get("timings")
    assert isinstance(value, dict)
    return value


def test_a_flagged_output_fails_the_job_and_nothing_is_stored(
    case: Case, local_profile: dict[str, object], flag_all_checker: Path
) -> None:
    code, message = case.run(with_checker(local_profile, flag_all_checker, output=True))
    assert code == contract.ExitCode.CONTENT_REJECTED == 24
    assert not contract.ExitCode(code).retryable  # the operator's podFailurePolicy fails at once
    assert message["exitCode"] == 24
    assert message["reason"] == "ContentRejected"
    assert (
        message["message"] == "the generated image: flagged by the safety check (nsfw concepts 0)"
    )
    assert "result" not in message
    assert case.stored() == []
    stages = timings(message)
    assert stages["inference"] > 0  # the image was made, then refused
    assert stages["safetyCheck"] >= 0
    assert "upload" not in stages and "postprocess" not in stages


def test_an_unflagged_output_is_uploaded(
    case: Case, local_profile: dict[str, object], rocket_checker: Path
) -> None:
    profile = with_checker(local_profile, rocket_checker, output=True, inputs=True)
    code, message = case.run(profile)
    assert (code, message["reason"]) == (0, "Completed"), message["message"]
    key = "results/team-a/look-1/uid-1234/result.png"
    assert case.stored() == [key]
    result = message["result"]
    assert isinstance(result, dict)
    assert result["s3Uri"] == f"s3://{case.results}/{key}"
    assert timings(message)["safetyCheck"] > 0  # inputs and output were checked


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ({"person": "rocket"}, "spec.inputs.person.uri"),
        ({"clothing": ("coffee", "rocket")}, "spec.inputs.clothing[1].uri"),
        ({"place": "rocket"}, "spec.inputs.place.uri"),
    ],
)
def test_a_flagged_input_is_refused_before_any_model_for_generation(
    case: Case,
    local_profile: dict[str, object],
    rocket_checker: Path,
    inputs: dict[str, object],
    field: str,
) -> None:
    profile = with_checker(local_profile, rocket_checker, output=True, inputs=True)
    models = profile["models"]
    assert isinstance(models, dict)
    for name in models:
        if name != "safety_checker":  # face and generation models would fail to load
            models[name] = {"uri": f"{MISSING}/{name}"}
    code, message = case.run(profile, **inputs)  # type: ignore[arg-type]
    assert (code, message["reason"]) == (24, "ContentRejected"), message["message"]
    assert message["message"] == f"{field}: flagged by the safety check (nsfw concepts 0)"
    assert case.stored() == []
    stages = timings(message)
    assert "faceAnalysis" not in stages and "inference" not in stages
    assert stages["safetyCheck"] >= 0


@pytest.mark.parametrize(
    "safety",
    [
        {"block": None},
        {"output": False, "inputs": False},
    ],
    ids=["no-safety-block", "output-and-inputs-off"],
)
def test_with_the_check_off_no_checker_is_loaded(
    case: Case, local_profile: dict[str, object], safety: dict[str, object]
) -> None:
    # The checker's source does not exist: reading it would fail the job.
    profile = with_checker(local_profile, f"{MISSING}/safety_checker", **safety)
    code, message = case.run(profile, place="rocket")
    assert (code, message["reason"]) == (0, "Completed"), message["message"]
    assert "safetyCheck" not in timings(message)
    assert len(case.stored()) == 1


def test_a_check_that_is_on_loads_its_checker(case: Case, local_profile: dict[str, object]) -> None:
    """The counterpart of the test above: the same missing checker, with the inputs check on,
    fails as a model load, naming the component."""
    profile = with_checker(local_profile, f"{MISSING}/safety_checker", output=False, inputs=True)
    code, message = case.run(profile)
    assert (code, message["reason"]) == (20, "ModelLoadFailed")
    assert "profile.models.safety_checker" in str(message["message"])
    assert case.stored() == []
