"""The flat view of the API's Params (command-line flags, form fields) and the profile-pin rule."""

from __future__ import annotations

import pytest

from compose_api import models, parameters


def test_one_flat_field_per_params_field_with_the_api_bounds() -> None:
    fields = {field.name: field for field in parameters.fields()}
    assert list(fields) == list(models.Params.model_fields)
    steps = fields["steps"]
    assert (steps.alias, steps.flag, steps.kind, steps.default) == ("steps", "--steps", int, 30)
    assert (steps.minimum, steps.maximum) == (1, 100)
    strength = fields["identity_strength"]
    assert (strength.alias, strength.flag, strength.kind) == (
        "identityStrength",
        "--identity-strength",
        float,
    )
    assert strength.maximum == models.Params.model_fields["identity_strength"].metadata[1].le
    assert fields["width"].multiple_of == 64
    assert fields["seed"].kind is int and fields["seed"].default is None
    assert fields["prompt"].max_length == 2000
    for field in fields.values():
        assert field.description, field.name


def test_build_takes_either_spelling_and_names_the_fields_at_fault() -> None:
    params = parameters.build({"identityStrength": 0.5, "steps": 4})
    assert (params.identity_strength, params.steps) == (0.5, 4)
    assert params.width == models.Params().width
    with pytest.raises(ValueError) as info:
        parameters.build({"steps": 0, "placeStrength": 1.6})
    message = str(info.value)
    assert "spec.params.steps: Input should be greater than or equal to 1" in message
    assert "spec.params.placeStrength: Input should be less than or equal to 1.5" in message
    with pytest.raises(ValueError, match=r"^spec\.params\.colour: Extra inputs"):
        parameters.build({"colour": "red"})


def test_the_profile_wins_and_says_what_it_changed() -> None:
    job = models.Params(steps=30, guidance=5.0, width=1024, height=1024, seed=3)
    pinned = parameters.pin(job, {"steps": 4, "guidance": 1, "width": 1024, "sdpa": True})
    assert (pinned.params.steps, pinned.params.guidance, pinned.params.width) == (4, 1.0, 1024)
    assert pinned.params.seed == 3
    # Only what changed is reported; the width was asked as pinned.
    assert pinned.changed == {"steps": (30, 4), "guidance": (5.0, 1.0)}
    assert pinned.describe("lightning") == (
        "profile lightning pins steps=4 (asked 30), guidance=1.0 (asked 5.0)"
    )
    unchanged = parameters.pin(job, {"sdpa": True})
    assert unchanged.params == job and unchanged.changed == {} and unchanged.describe("x") == ""


def test_pins_follow_their_own_rule_not_the_job_bounds() -> None:
    # The smoke profile pins 64x64, below a job's minimum of 256.
    pinned = parameters.pin(models.Params(), {"width": 64, "height": 64, "steps": 2})
    assert (pinned.params.width, pinned.params.height, pinned.params.steps) == (64, 64, 2)
    for options, message in [
        ({"width": "big"}, r"^profile\.options\.width: expected a positive integer"),
        ({"steps": 0}, r"^profile\.options\.steps: expected a positive integer"),
        ({"steps": True}, r"^profile\.options\.steps"),
        ({"guidance": -1}, r"^profile\.options\.guidance: expected a number >= 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            parameters.pin(models.Params(), options)
