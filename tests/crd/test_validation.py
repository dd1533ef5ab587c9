"""CompositionJobs the API server must accept or refuse, checked against the generated CRD schema
and its CEL rules, with messages that name the field."""

from __future__ import annotations

import copy
import json
from typing import Any

import pydantic
import pytest

from compose_api import models
from tests.support import crd_validation
from tests.support.crd_validation import default_object, validate_composition_job


def _job(**spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "inputs": {
            "person": {"uri": "s3://inputs-bucket/people/ana.jpg"},
            "clothing": [{"uri": "https://shop.example.com/shirt.jpg", "category": "upper"}],
            "place": {"uri": "s3://inputs-bucket/places/beach.png"},
        },
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": "compose.nextunicorn.dev/v1alpha1",
        "kind": "CompositionJob",
        "metadata": {"name": "ana-at-the-beach", "namespace": "studio"},
        "spec": spec,
    }


FULL_SPEC: dict[str, Any] = {
    "inputs": {
        "person": {"uri": "https://cdn.example.com/people/ana.jpg?size=large", "sha256": "0" * 64},
        "clothing": [
            {"uri": "s3://wardrobe/jackets/denim.png", "category": "outerwear", "sha256": "a" * 64},
            {"uri": "s3://wardrobe/shirts/white.png", "category": "upper"},
            {"uri": "s3://wardrobe/jeans/blue.png", "category": "lower"},
            {"uri": "s3://wardrobe/shoes/white.png", "category": "shoes"},
            {"uri": "s3://wardrobe/hats/straw.png", "category": "accessory"},
            {"uri": "s3://wardrobe/misc/scarf.png"},
        ],
        "place": {"uri": "s3://places.example/beach/sunset.webp"},
    },
    "output": {
        "bucket": "results-bucket",
        "prefix": "campaign-7/",
        "format": "webp",
        "reuse": False,
    },
    "params": {
        "prompt": "a person on a beach at sunset",
        "negativePrompt": "blurry",
        "seed": 4294967295,
        "steps": 100,
        "guidance": 7.5,
        "width": 768,
        "height": 2048,
        "identityStrength": 1.5,
        "clothingStrength": 0,
        "placeStrength": 0.3,
    },
    "profile": "instantid-sdxl-fast",
    "execution": {
        "backoffLimit": 10,
        "startDeadlineSeconds": 600,
        "activeDeadlineSeconds": 600,
        "priorityClassName": "gpu-batch.high",
        "priority": -1000,
        "queueName": "team-a",
        "capacityType": "on-demand",
    },
    "suspend": True,
    "ttlSecondsAfterFinished": 86400,
}


def test_minimal_job_is_accepted_and_defaulted() -> None:
    job = _job()
    assert validate_composition_job(job) == []
    stored = default_object(job)
    assert stored["spec"]["params"]["steps"] == 30
    assert stored["spec"]["output"] == {"prefix": "", "format": "png", "reuse": True}
    assert stored["spec"]["execution"]["capacityType"] == "any"
    assert stored["spec"]["profile"] == "instantid-sdxl"


def test_full_job_with_every_field_is_accepted() -> None:
    job = _job(**copy.deepcopy(FULL_SPEC))
    assert validate_composition_job(job) == []
    # Every spec field the models declare is exercised by this example.
    assert set(FULL_SPEC) == {
        field.alias for field in models.CompositionJobSpec.model_fields.values()
    }
    assert set(FULL_SPEC["params"]) == {f.alias for f in models.Params.model_fields.values()}
    # pool and queueName are exclusive: the pool is exercised by the pool job below.
    assert set(FULL_SPEC["execution"]) | {"pool"} == {
        f.alias for f in models.Execution.model_fields.values()
    }
    assert set(FULL_SPEC["output"]) == {f.alias for f in models.Output.model_fields.values()}
    # And the models agree.
    models.CompositionJobSpec.model_validate(FULL_SPEC)


def test_pool_job_is_accepted_and_pool_excludes_queue_name() -> None:
    job = _job(execution={"pool": "warm-sdxl", "priority": 5})
    assert validate_composition_job(job) == []
    assert default_object(job)["spec"]["execution"]["pool"] == "warm-sdxl"
    both = _job(execution={"pool": "warm-sdxl", "queueName": "team-a"})
    errors = validate_composition_job(both)
    assert any("pool and queueName are exclusive" in error for error in errors), errors
    with pytest.raises(pydantic.ValidationError, match="pool and queueName are exclusive"):
        models.Execution.model_validate({"pool": "warm-sdxl", "queueName": "team-a"})


def _clothing(count: int) -> list[dict[str, str]]:
    return [{"uri": f"s3://wardrobe/item-{index}.png"} for index in range(count)]


def _inputs(**overrides: Any) -> dict[str, Any]:
    inputs: dict[str, Any] = copy.deepcopy(_job()["spec"]["inputs"])
    inputs.update(overrides)
    return inputs


REFUSED: list[tuple[str, dict[str, Any], str]] = [
    (
        "steps is a string",
        {"params": {"steps": "30"}},
        'spec.params.steps: Invalid value: "string": spec.params.steps in body must be of type '
        'integer: "string"',
    ),
    (
        "suspend is not a boolean",
        {"suspend": "yes"},
        'spec.suspend: Invalid value: "string": spec.suspend in body must be of type boolean: '
        '"string"',
    ),
    (
        "ttlSecondsAfterFinished is negative",
        {"ttlSecondsAfterFinished": -1},
        "spec.ttlSecondsAfterFinished: Invalid value: -1: spec.ttlSecondsAfterFinished in body "
        "should be greater than or equal to 0",
    ),
    (
        "clothing is an object",
        {"inputs": _inputs(clothing={"uri": "s3://wardrobe/a.png"})},
        'spec.inputs.clothing: Invalid value: "object": spec.inputs.clothing in body must be of '
        'type array: "object"',
    ),
    (
        "zero steps",
        {"params": {"steps": 0}},
        "spec.params.steps: Invalid value: 0: spec.params.steps in body should be greater than or "
        "equal to 1",
    ),
    (
        "too many steps",
        {"params": {"steps": 101}},
        "spec.params.steps: Invalid value: 101: spec.params.steps in body should be less than or "
        "equal to 100",
    ),
    (
        "negative guidance",
        {"params": {"guidance": -0.5}},
        "spec.params.guidance: Invalid value: -0.5: spec.params.guidance in body should be "
        "greater than or equal to 0",
    ),
    (
        "negative seed",
        {"params": {"seed": -1}},
        "spec.params.seed: Invalid value: -1: spec.params.seed in body should be greater than or "
        "equal to 0",
    ),
    (
        "width not a multiple of 64",
        {"params": {"width": 1000}},
        "spec.params.width: Invalid value: 1000: spec.params.width in body should be a multiple "
        "of 64",
    ),
    (
        "height too small",
        {"params": {"height": 192}},
        "spec.params.height: Invalid value: 192: spec.params.height in body should be greater "
        "than or equal to 256",
    ),
    (
        "prompt too long",
        {"params": {"prompt": "x" * 2001}},
        "spec.params.prompt: Too long: may not be more than 2000 bytes",
    ),
    (
        "http person",
        {"inputs": _inputs(person={"uri": "http://example.com/ana.jpg"})},
        'spec.inputs.person.uri: Invalid value: "http://example.com/ana.jpg": '
        f"spec.inputs.person.uri in body should match '{models.IMAGE_URI_PATTERN}'",
    ),
    (
        "file place",
        {"inputs": _inputs(place={"uri": "file:///etc/passwd"})},
        'spec.inputs.place.uri: Invalid value: "file:///etc/passwd": spec.inputs.place.uri in '
        "body should match",
    ),
    (
        "clothing URI with a trailing newline",
        {"inputs": _inputs(clothing=[{"uri": "s3://wardrobe/a.png\n"}])},
        "spec.inputs.clothing[0].uri: Invalid value:",
    ),
    (
        "S3 URI without a key",
        {"inputs": _inputs(clothing=[{"uri": "s3://wardrobe"}])},
        'spec.inputs.clothing[0].uri: Invalid value: "s3://wardrobe"',
    ),
    (
        "no clothing",
        {"inputs": _inputs(clothing=[])},
        "spec.inputs.clothing: Invalid value: 0: spec.inputs.clothing in body should have at "
        "least 1 items",
    ),
    (
        "nine clothing items",
        {"inputs": _inputs(clothing=_clothing(9))},
        "spec.inputs.clothing: Too many: 9: must have at most 8 items",
    ),
    (
        "missing person",
        {"inputs": {key: v for key, v in _inputs().items() if key != "person"}},
        "spec.inputs.person: Required value",
    ),
    (
        "missing inputs",
        {"inputs": None},
        "spec.inputs: Required value",
    ),
    (
        "gif output",
        {"output": {"format": "gif"}},
        'spec.output.format: Unsupported value: "gif": supported values: "png", "jpeg", "webp"',
    ),
    (
        "unknown capacity type",
        {"execution": {"capacityType": "reserved"}},
        'spec.execution.capacityType: Unsupported value: "reserved": supported values: "spot", '
        '"on-demand", "any"',
    ),
    (
        "unknown clothing category",
        {"inputs": _inputs(clothing=[{"uri": "s3://wardrobe/a.png", "category": "hat"}])},
        'spec.inputs.clothing[0].category: Unsupported value: "hat"',
    ),
    (
        "input sha256 in capitals",
        {"inputs": _inputs(place={"uri": "s3://places/a.png", "sha256": "A" * 64})},
        "spec.inputs.place.sha256: Invalid value: ",
    ),
    (
        "input sha256 too short",
        {"inputs": _inputs(clothing=[{"uri": "s3://wardrobe/a.png", "sha256": "ab"}])},
        "spec.inputs.clothing[0].sha256: Invalid value: ",
    ),
    (
        "bucket with capitals",
        {"output": {"bucket": "Results"}},
        'spec.output.bucket: Invalid value: "Results": spec.output.bucket in body should match',
    ),
    (
        "profile with an underscore",
        {"profile": "instantid_sdxl"},
        'spec.profile: Invalid value: "instantid_sdxl": spec.profile in body should match',
    ),
    (
        "backoff limit too high",
        {"execution": {"backoffLimit": 11}},
        "spec.execution.backoffLimit: Invalid value: 11: spec.execution.backoffLimit in body "
        "should be less than or equal to 10",
    ),
    (
        "dress with an upper garment",
        {
            "inputs": _inputs(
                clothing=[
                    {"uri": "s3://wardrobe/dress.png", "category": "dress"},
                    {"uri": "s3://wardrobe/shirt.png", "category": "upper"},
                ]
            )
        },
        'spec.inputs.clothing: Invalid value: "array": a dress cannot be combined with upper or '
        "lower garments",
    ),
    (
        "start deadline after the active deadline",
        {"execution": {"startDeadlineSeconds": 3600, "activeDeadlineSeconds": 600}},
        'spec.execution: Invalid value: "object": startDeadlineSeconds must not exceed '
        "activeDeadlineSeconds",
    ),
    (
        "start deadline after the defaulted active deadline",
        {"execution": {"startDeadlineSeconds": 1801}},
        'spec.execution: Invalid value: "object": startDeadlineSeconds must not exceed '
        "activeDeadlineSeconds",
    ),
    (
        "unknown spec field",
        {"surprise": 1},
        'unknown field "spec.surprise"',
    ),
    (
        "unknown nested field",
        {"params": {"stpes": 20}},
        'unknown field "spec.params.stpes"',
    ),
]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [pytest.param(overrides, expected, id=name) for name, overrides, expected in REFUSED],
)
def test_bad_jobs_are_refused_naming_the_field(overrides: dict[str, Any], expected: str) -> None:
    job = _job(**overrides)
    if overrides.get("inputs", ...) is None:
        del job["spec"]["inputs"]
    errors = validate_composition_job(job)
    assert any(error.startswith(expected) for error in errors), errors


def test_pydantic_refuses_every_refused_spec() -> None:
    """The operator's models refuse what the API server refuses, naming the same field."""
    for name, overrides, expected in REFUSED:
        spec = _job(**overrides)["spec"]
        if overrides.get("inputs", ...) is None:
            del spec["inputs"]
        with pytest.raises(pydantic.ValidationError) as caught:
            models.CompositionJobSpec.model_validate_json(json.dumps(spec), strict=True)
        described = models.describe_validation_error(caught.value)
        field = expected.removeprefix('unknown field "').split(":")[0].split('"')[0]
        # pydantic names list items "clothing.0" where the API server says "clothing[0]".
        assert field.replace("[", ".").replace("]", "") in described, (name, described)


def test_type_errors_skip_the_cel_rules() -> None:
    job = _job(
        params={"steps": "many"},
        execution={"startDeadlineSeconds": 3600, "activeDeadlineSeconds": 600},
    )
    errors = validate_composition_job(job)
    assert errors[-1].startswith('Invalid value: "null": some validation rules were not checked')
    assert not any("startDeadlineSeconds must not exceed" in error for error in errors)


def test_every_problem_is_reported_at_once() -> None:
    job = _job(params={"steps": 0, "width": 1000}, output={"format": "gif"}, surprise=True)
    errors = validate_composition_job(job)
    assert [error.split(":")[0] for error in errors] == [
        'unknown field "spec.surprise"',
        "spec.output.format",
        "spec.params.steps",
        "spec.params.width",
        "Invalid value",  # the enum error keeps the CEL rules from running
    ]


def test_null_optional_fields_are_accepted() -> None:
    job = _job(
        params={"seed": None},
        output={"bucket": None},
        inputs=_inputs(clothing=[{"uri": "s3://wardrobe/a.png", "category": None}]),
    )
    assert validate_composition_job(job) == []
    stored = default_object(job)
    assert "category" not in stored["spec"]["inputs"]["clothing"][0]  # pruned: not nullable
    assert stored["spec"]["params"]["seed"] is None  # nullable: kept


def test_object_metadata_is_checked() -> None:
    job = _job()
    job["metadata"] = {"name": "Ana_Beach"}
    assert validate_composition_job(job) == [
        'metadata.name: Invalid value: "Ana_Beach": a lowercase RFC 1123 subdomain must consist '
        "of lower case alphanumeric characters, '-' or '.', and must start and end with an "
        "alphanumeric character"
    ]
    job["metadata"] = {}
    assert validate_composition_job(job) == [
        "metadata.name: Required value: name or generateName is required"
    ]
    job = _job()
    job["kind"] = "Job"
    assert validate_composition_job(job) == ['kind: Invalid value: "Job": must be "CompositionJob"']


# ---------------------------------------------------------------------------------------------
# Updates: transition rules


def _updated(old: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    new = copy.deepcopy(old)
    node = new["spec"]
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return new


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            ("inputs", "place"),
            {"uri": "s3://inputs-bucket/places/forest.png"},
            'spec.inputs: Invalid value: "object": spec.inputs is immutable',
        ),
        (
            ("output", "format"),
            "jpeg",
            'spec.output: Invalid value: "object": spec.output is immutable',
        ),
        (
            ("output", "bucket"),
            "other-bucket",
            'spec.output: Invalid value: "object": spec.output is immutable',
        ),
        (
            ("profile",),
            "instantid-sdxl-fast",
            'spec.profile: Invalid value: "string": spec.profile is immutable',
        ),
    ],
)
def test_inputs_output_and_profile_are_immutable(
    path: tuple[str, ...], value: Any, expected: str
) -> None:
    old = _job()
    new = _updated(old, path, value)
    assert validate_composition_job(new) == []  # fine as a create
    assert validate_composition_job(new, old) == [expected]


def test_output_set_explicitly_to_its_defaults_is_not_a_change() -> None:
    old = _job()
    new = _updated(old, ("output",), {"format": "png", "prefix": ""})
    assert validate_composition_job(new, old) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("params", "steps"), 50),
        (("params", "prompt"), "a person in a forest"),
        (("suspend",), False),
        (("ttlSecondsAfterFinished",), 60),
        (("execution", "priority"), 10),
    ],
)
def test_params_suspend_and_execution_may_change(path: tuple[str, ...], value: Any) -> None:
    old = _job(**copy.deepcopy(FULL_SPEC))
    new = _updated(old, path, value)
    assert new != old
    assert validate_composition_job(new, old) == []


def test_an_update_is_still_validated_as_a_whole() -> None:
    old = _job()
    new = _updated(old, ("params", "steps"), 0)
    assert validate_composition_job(new, old) == [
        "spec.params.steps: Invalid value: 0: spec.params.steps in body should be greater than "
        "or equal to 1"
    ]


# ---------------------------------------------------------------------------------------------
# Status, as the operator writes it through the status subresource


def _status(**overrides: Any) -> dict[str, Any]:
    status: dict[str, Any] = {
        "observedGeneration": 1,
        "phase": "Running",
        "conditions": [
            {
                "type": "Accepted",
                "status": "True",
                "reason": "Valid",
                "lastTransitionTime": "2026-01-02T03:04:05Z",
            },
            {
                "type": "Started",
                "status": "True",
                "reason": "Running",
                "message": "pod ana-0 running on ip-10-0-0-1",
                "lastTransitionTime": "2026-01-02T03:05:05+00:00",
            },
        ],
        "attempt": 0,
        "attempts": [{"index": 0, "jobName": "ana-at-the-beach-1a2b3c-0", "outcome": "Running"}],
    }
    status.update(overrides)
    return status


def test_operator_status_is_accepted() -> None:
    job = _job()
    job["status"] = _status()
    assert validate_composition_job(job) == []
    models.CompositionJobStatus.model_validate(job["status"])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"phase": "Done"},
            'status.phase: Unsupported value: "Done": supported values: "Pending", "Queued"',
        ),
        (
            {"startTime": "yesterday"},
            'status.startTime: Invalid value: "yesterday": status.startTime in body must be of '
            'type date-time: "yesterday"',
        ),
        (
            {"result": {"s3Uri": "s3://results/a.png", "sha256": "abc", "width": 1, "height": 1}},
            "status.result.seed: Required value",
        ),
        (
            {
                "conditions": [
                    {
                        "type": "Accepted",
                        "status": "True",
                        "reason": "Valid",
                        "lastTransitionTime": "2026-01-02T03:04:05Z",
                    },
                    {
                        "type": "Accepted",
                        "status": "False",
                        "reason": "InvalidSpec",
                        "lastTransitionTime": "2026-01-02T03:04:05Z",
                    },
                ]
            },
            'status.conditions[1]: Duplicate value: {"type": "Accepted"}',
        ),
    ],
)
def test_bad_status_is_refused(overrides: dict[str, Any], expected: str) -> None:
    job = _job()
    job["status"] = _status(**overrides)
    errors = validate_composition_job(job)
    assert any(error.startswith(expected) for error in errors), errors


# ---------------------------------------------------------------------------------------------
# The validator reads patterns as the API server's RE2 does


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        (r"^[^\s]+$", "a\vb", True),  # RE2's \s is [\t\n\f\r ]: no vertical tab
        (r"^[^\s]+$", "a\xa0b", True),  # nor non-ASCII spaces
        (r"^[^\s]+$", "a b", False),
        (r"^\S+$", "a\tb", False),
        (r"^a$", "a\n", False),  # $ is the end of the text, not before a final newline
        (r"^\d+$", "\u0663", False),  # ASCII digits only
        (r"^[\w.]+$", "a_b.c", True),
        (r"^[$]x$", "$x", True),  # a literal $ inside a class
    ],
)
def test_patterns_follow_re2(pattern: str, text: str, matches: bool) -> None:
    assert bool(crd_validation._compiled(pattern).search(text)) is matches
