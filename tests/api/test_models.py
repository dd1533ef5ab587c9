"""The API models refuse bad specs with messages that name the field, and fill defaults."""

from __future__ import annotations

import pydantic
import pytest

from compose_api import contract, models


def _spec(**overrides: object) -> dict[str, object]:
    spec: dict[str, object] = {
        "inputs": {
            "person": {"uri": "s3://inputs-bucket/person.jpg"},
            "clothing": [{"uri": "https://example.com/shirt.jpg", "category": "upper"}],
            "place": {"uri": "s3://inputs-bucket/beach.png"},
        },
    }
    spec.update(overrides)
    return spec


def _error(spec: dict[str, object]) -> str:
    with pytest.raises(pydantic.ValidationError) as caught:
        models.CompositionJobSpec.model_validate(spec)
    return models.describe_validation_error(caught.value)


def test_defaults_are_filled() -> None:
    spec = models.CompositionJobSpec.model_validate(_spec())
    assert spec.params.steps == 30
    assert spec.output.format == "png"
    assert spec.output.bucket is None
    assert spec.execution.capacity_type == "any"
    assert spec.to_api()["execution"]["backoffLimit"] == 2


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"params": {"steps": 0}}, "spec.params.steps: Input should be greater than or equal to 1"),
        ({"params": {"width": 1000}}, "spec.params.width: Input should be a multiple of 64"),
        ({"output": {"format": "gif"}}, "spec.output.format: Input should be 'png', 'jpeg' or"),
        ({"profile": "Bad_Name"}, "spec.profile: String should match pattern"),
        ({"surprise": 1}, "spec.surprise: Extra inputs are not permitted"),
        (
            {"execution": {"startDeadlineSeconds": 3600, "activeDeadlineSeconds": 600}},
            "spec.execution: startDeadlineSeconds must not exceed activeDeadlineSeconds",
        ),
    ],
)
def test_bad_specs_name_the_field(overrides: dict[str, object], expected: str) -> None:
    assert expected in _error(_spec(**overrides))


@pytest.mark.parametrize(
    "uri",
    ["http://example.com/a.jpg", "file:///etc/passwd", "s3://UPPER/a.jpg", "s3://bucket-only"],
)
def test_image_uris_must_be_s3_or_https(uri: str) -> None:
    spec = _spec()
    spec["inputs"]["person"] = {"uri": uri}  # type: ignore[index]
    assert _error(spec).startswith("spec.inputs.person.uri: String should match pattern")


def test_clothing_list_size_and_dress_rule() -> None:
    spec = _spec()
    spec["inputs"]["clothing"] = []  # type: ignore[index]
    assert "spec.inputs.clothing: List should have at least 1 item" in _error(spec)
    spec["inputs"]["clothing"] = [{"uri": "s3://b-b/x.jpg"}] * 9  # type: ignore[index]
    assert "spec.inputs.clothing: List should have at most 8 items" in _error(spec)
    spec["inputs"]["clothing"] = [  # type: ignore[index]
        {"uri": "s3://b-b/dress.jpg", "category": "dress"},
        {"uri": "s3://b-b/top.jpg", "category": "upper"},
    ]
    assert "spec.inputs.clothing: a dress cannot be combined" in _error(spec)


def test_termination_message_round_trip_and_size_limit() -> None:
    message = contract.TerminationMessage(
        exit_code=contract.ExitCode.NO_FACE,
        reason=contract.ExitCode.NO_FACE.reason,
        message="x" * 10_000,
    )
    text = message.to_json()
    assert len(text.encode()) <= contract.TERMINATION_MESSAGE_LIMIT
    parsed = contract.TerminationMessage.parse(text)
    assert parsed is not None
    assert parsed.reason == "NoFaceFound"
    assert parsed.exit_code == 11
    assert contract.TerminationMessage.parse("not json") is None


def test_exit_codes_split_into_permanent_and_retryable() -> None:
    assert not contract.ExitCode.NO_FACE.retryable
    assert contract.ExitCode.OUT_OF_GPU_MEMORY.retryable
    assert contract.reason_for_exit_code(137) == models.Reason.CONTAINER_FAILED


def test_a_full_success_message_stays_well_under_the_kubelet_limit() -> None:
    """Every result and timing field set, a 580-character URI, a long pin note: the message
    keeps more than half of the 4096 bytes free, so it is never shortened on success."""
    result = models.Result(
        s3_uri="s3://" + "b" * 63 + "/" + "p/" * 250 + "result.webp",
        url="https://cdn.example.com/" + "x" * 200,
        sha256="0" * 64,
        width=2048,
        height=2048,
        format=models.ImageFormat.WEBP,
        bytes=25 * 1024 * 1024,
        seed=2**32 - 1,
        steps=100,
        guidance=20.0,
        identity_similarity=-0.1234,
        identity_similarity_before_refinement=-0.1234,
    )
    timings = models.Timings(**{name: 12345.678 for name in models.Timings.model_fields})
    note = (
        "composed 2048x2048 webp; profile "
        + "p" * 63
        + " pins "
        + ", ".join(
            f"{name}=2048 (asked 1024)" for name in ("steps", "guidance", "width", "height")
        )
    )
    message = contract.TerminationMessage(
        exit_code=0, reason="Completed", message=note, result=result, timings=timings
    )
    text = message.to_json()
    assert len(text.encode()) < contract.TERMINATION_MESSAGE_LIMIT // 2  # 1.6 kB today
    parsed = contract.TerminationMessage.parse(text)
    assert parsed is not None and parsed.message == note  # not shortened
    assert parsed.result is not None
    assert parsed.result.identity_similarity_before_refinement == -0.1234
    assert parsed.timings is not None and parsed.timings.refine == 12345.678
