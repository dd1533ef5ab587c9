"""The API's Params and the pipeline agree, as the CRD and the models do: one parameter type,
the API's bounds the only bounds, every category placed, every field a command-line flag."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from compose_api import models, parameters
from compose_inference import __main__ as entrypoint
from compose_inference import checks, errors, layout, pipeline, runner


def test_the_pipeline_takes_the_api_params_and_nothing_restated() -> None:
    hints = typing.get_type_hints(pipeline.GenerationRequest)
    assert hints["params"] is models.Params
    inputs = {f.name for f in dataclasses.fields(pipeline.GenerationRequest)}
    assert inputs == {"face", "person", "clothing", "place", "params"}
    assert typing.get_type_hints(runner.Job)["params"] is models.Params
    assert not hasattr(runner, "Params")


def _extremes() -> list[models.Params]:
    """Params at each field's API minimum and maximum (sizes on the 64 grid)."""
    result = []
    for field in parameters.fields():
        if field.kind is str or field.name == "seed":
            continue
        for value in (field.minimum, field.maximum):
            result.append(models.Params(seed=0, **{field.name: field.kind(value)}))
    return result


@pytest.mark.parametrize("params", _extremes(), ids=lambda p: str(p.model_dump()))
def test_whatever_the_api_admits_the_pipeline_checks_accept(params: models.Params) -> None:
    checks.check_request(
        params,
        list(models.ClothingCategory),
        options=checks.PipelineOptions.parse({}, dtype="float16"),
        has_image_encoder=True,
        size_multiple=64,
    )


def test_every_api_category_has_a_layout_region() -> None:
    assert set(layout.CATEGORY_BANDS) - {None} == set(models.ClothingCategory)


def test_every_params_field_is_a_command_line_flag_with_the_api_bounds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = entrypoint._local_parser()
    flags = {action.dest: action for action in parser._actions}
    for field in parameters.fields():
        action = flags[field.name]
        assert field.flag in action.option_strings
        assert action.type is field.kind and action.default is None
    base = ["--person", "p", "--clothing", "c", "--place", "x", "--out", "o.png"]
    options = parser.parse_args([*base, "--identity-strength", "1.6", "--steps", "4"])
    with pytest.raises(errors.InputRejected) as info:
        entrypoint._params(options, seed=1)
    assert str(info.value).startswith("--identity-strength: Input should be less than or equal")
    options = parser.parse_args([*base, "--steps", "4"])
    params = entrypoint._params(options, seed=1)
    assert (params.steps, params.seed, params.guidance) == (4, 1, models.Params().guidance)
