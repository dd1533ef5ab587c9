"""The CRD generator emits a structural, valid apiextensions.k8s.io/v1 CRD, and the committed
files are exactly its output."""

from __future__ import annotations

import copy
import datetime
import importlib.util
import pathlib
import re
import sys
from collections.abc import Iterator
from typing import Any

import celpy
import kubernetes_validate
import pydantic
import pytest
import yaml

from compose_api import crdgen, models
from tests.support import crd_validation

ROOT = pathlib.Path(__file__).resolve().parents[2]
FORBIDDEN_KEYS = {"$ref", "$defs", "definitions", "anyOf", "allOf", "oneOf", "title", "const"}


def _load_gen_crds() -> Any:
    spec = importlib.util.spec_from_file_location("gen_crds", ROOT / "scripts" / "gen_crds.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_crds"] = module
    spec.loader.exec_module(module)
    return module


gen_crds = _load_gen_crds()


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path or "<root>", schema
    for name, child in schema.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def _node(schema: dict[str, Any], dotted: str) -> dict[str, Any]:
    node = schema
    for part in dotted.strip(".").split("."):
        node = node["items"] if part == "[]" else node["properties"][part]
    return node


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return crdgen.build_crd()


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return result


def test_names_scope_and_version(crd: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "compositionjobs.compose.nextunicorn.dev"
    spec = crd["spec"]
    assert spec["group"] == "compose.nextunicorn.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "CompositionJob",
        "listKind": "CompositionJobList",
        "plural": "compositionjobs",
        "singular": "compositionjob",
        "shortNames": ["cjob", "cj"],
        "categories": ["compose"],
    }
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns(crd: dict[str, Any], schema: dict[str, Any]) -> None:
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [(c["name"], c["jsonPath"]) for c in columns if not c.get("priority")] == [
        ("Phase", ".status.phase"),
        ("Profile", ".spec.profile"),
        ("Attempt", ".status.attempt"),
        ("Age", ".metadata.creationTimestamp"),
        ("Result", ".status.result.s3Uri"),
    ]
    kinds = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean"}
    for column in columns:
        if column["jsonPath"].startswith(".metadata."):
            assert column["type"] == "date"
            continue
        # Every column points at a declared field of a matching type (a typo shows nothing).
        node = _node(schema, column["jsonPath"])
        assert kinds[node["type"]] == column["type"], column


def test_schema_is_structural(schema: dict[str, Any]) -> None:
    problems = []
    for path, node in _nodes(schema):
        if FORBIDDEN_KEYS & node.keys():
            problems.append(f"{path}: {sorted(FORBIDDEN_KEYS & node.keys())}")
        if "type" not in node:
            problems.append(f"{path}: no type")
        if "additionalProperties" in node and (
            "properties" in node or node["additionalProperties"] is False
        ):
            problems.append(f"{path}: additionalProperties beside properties")
        if node.get("x-kubernetes-preserve-unknown-fields"):
            problems.append(f"{path}: preserves unknown fields")
        if node.get("nullable") and "enum" in node:
            problems.append(f"{path}: nullable enum (the server checks null against the enum)")
        for key, value in node.items():
            if isinstance(value, dict) and key not in (
                "properties",
                "items",
                "additionalProperties",
                "default",
            ):
                problems.append(f"{path}: unexpected nested schema under {key}")
    assert problems == []
    assert schema["properties"]["metadata"] == {"type": "object"}
    assert schema["required"] == ["spec"]


def test_optional_fields_are_nullable_and_defaults_are_kept(schema: dict[str, Any]) -> None:
    assert _node(schema, "spec.params.seed") == {
        "type": "integer",
        "nullable": True,
        "minimum": 0,
        "maximum": 4294967295,
        "description": "Random seed; the same seed and inputs give the same image. Empty: chosen "
        "by the operator and recorded in status.result.seed.",
    }
    assert _node(schema, "spec.params.width") == {
        "type": "integer",
        "default": 1024,
        "minimum": 256,
        "maximum": 2048,
        "multipleOf": 64,
        "description": "Output width in pixels.",
    }
    category = _node(schema, "spec.inputs.clothing.[].category")
    assert category["enum"] == [item.value for item in models.ClothingCategory]
    assert "nullable" not in category
    for optional_object in ("output", "params", "execution"):
        assert _node(schema, f"spec.{optional_object}")["default"] == {}
    assert "default" not in _node(schema, "spec.inputs")
    assert _node(schema, "spec.inputs")["required"] == ["person", "clothing", "place"]


def test_conditions_are_a_map_list_keyed_by_type(schema: dict[str, Any]) -> None:
    conditions = _node(schema, "status.conditions")
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]


def test_cel_rules_compile_and_have_bounded_cost(schema: dict[str, Any]) -> None:
    environment = celpy.Environment()
    rules = []
    for path, node in _nodes(schema):
        for rule in node.get("x-kubernetes-validations", []):
            environment.program(environment.compile(rule["rule"]))
            assert rule.get("message"), f"{path}: rule without a message"
            rules.append((path, rule["rule"]))
            # The API server estimates each rule's cost from the sizes below it: every string
            # and list a rule can reach must be bounded.
            for inner_path, inner in _nodes(node, path):
                if inner["type"] == "string" and "enum" not in inner:
                    assert "maxLength" in inner, inner_path
                if inner["type"] == "array":
                    assert "maxItems" in inner, inner_path
    assert sorted(rules) == [
        (".spec.execution", "!has(self.pool) || !has(self.queueName)"),
        (
            ".spec.execution",
            "!has(self.startDeadlineSeconds) || !has(self.activeDeadlineSeconds)"
            " || self.startDeadlineSeconds <= self.activeDeadlineSeconds",
        ),
        (".spec.inputs", "self == oldSelf"),
        (
            ".spec.inputs.clothing",
            "!(self.exists(c, has(c.category) && c.category == 'dress') && self.exists(c, "
            "has(c.category) && (c.category == 'upper' || c.category == 'lower')))",
        ),
        (".spec.output", "self == oldSelf"),
        (".spec.profile", "self == oldSelf"),
    ]


def test_crd_is_valid_apiextensions_v1(crd: dict[str, Any]) -> None:
    for version in ("1.30", "1.33"):
        kubernetes_validate.validate(crd, version, strict=True)


def test_the_crd_check_can_fail(crd: dict[str, Any]) -> None:
    broken = copy.deepcopy(crd)
    broken["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "unknownKeyword"
    ] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.33", strict=True)


def test_defaults_are_valid_and_match_the_models() -> None:
    minimal = {
        "inputs": {
            "person": {"uri": "s3://inputs-bucket/person.jpg"},
            "clothing": [{"uri": "https://example.com/shirt.jpg"}],
            "place": {"uri": "s3://inputs-bucket/beach.png"},
        },
    }
    job = {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "metadata": {"name": "minimal"},
        "spec": minimal,
    }
    stored = crd_validation.default_object(job)
    # What the API server stores is what the models fill in: defaults cannot drift.
    assert stored["spec"] == models.CompositionJobSpec.model_validate(minimal).to_api()
    assert crd_validation.validate_composition_job(stored) == []


def test_every_status_field_survives_pruning() -> None:
    now = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    status = models.CompositionJobStatus(
        observed_generation=2,
        phase=models.Phase.SUCCEEDED,
        message="done",
        conditions=[
            models.Condition(
                type=kind,
                status=models.ConditionStatus.TRUE,
                reason="Completed",
                message="m",
                last_transition_time=now,
                observed_generation=2,
            )
            for kind in models.ConditionType
        ],
        attempt=1,
        attempts=[
            models.Attempt(
                index=index,
                job_name=f"job-{index}",
                pod_name="pod",
                node_name="node",
                instance_type="g5.xlarge",
                capacity_type="spot",
                start_time=now,
                end_time=now,
                outcome=models.AttemptOutcome.SUCCEEDED,
                reason="Completed",
                message="ok",
                exit_code=0,
            )
            for index in range(2)
        ],
        seed=7,
        queue_position=0,
        start_time=now,
        completion_time=now,
        timings=models.Timings(**{name: 1.5 for name in models.Timings.model_fields}),
        result=models.Result(
            s3_uri="s3://results/a.png",
            url="https://results.s3.amazonaws.com/a.png",
            sha256="0" * 64,
            width=1024,
            height=1024,
            format=models.ImageFormat.PNG,
            bytes=123,
            seed=7,
            identity_similarity=0.7,
        ),
    ).to_api()
    # Every field is set, so every field is exercised.
    assert _leaf_count(status) > 60
    schema = crd_validation.load_schema()
    pruned, unknown = crd_validation.prune(status, schema["properties"]["status"], "status")
    assert unknown == []
    assert pruned == status


def _leaf_count(value: Any) -> int:
    if isinstance(value, dict):
        return sum(_leaf_count(item) for item in value.values())
    if isinstance(value, list):
        return sum(_leaf_count(item) for item in value)
    return 1


def test_descriptions_are_kept_and_titles_dropped(schema: dict[str, Any]) -> None:
    assert _node(schema, "spec.params.steps")["description"] == "Denoising steps."
    assert _node(schema, "spec.inputs")["description"].startswith("The three kinds of input")
    text = yaml.safe_dump(schema)
    assert not re.search(r"^\s*title:", text, re.MULTILINE)


# ---------------------------------------------------------------------------------------------
# The generator's translation rules, on small models


class _Color(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    name: str = pydantic.Field(title="Name", max_length=10)


class _Palette(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    main: _Color
    accent: _Color | None = None
    ratio: float = pydantic.Field(default=0.5, gt=0, lt=1)
    kind: str = pydantic.Field(default="warm", json_schema_extra={"const": "warm"})


def test_refs_nullable_and_exclusive_bounds_are_translated() -> None:
    result = crdgen.structural_schema(_Palette.model_json_schema(), object_defaults=True)
    assert result == {
        "type": "object",
        "required": ["main"],
        "properties": {
            "main": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string", "maxLength": 10}},
            },
            "accent": {
                "type": "object",
                "nullable": True,
                "required": ["name"],
                "properties": {"name": {"type": "string", "maxLength": 10}},
            },
            "ratio": {
                "type": "number",
                "default": 0.5,
                "minimum": 0,
                "exclusiveMinimum": True,
                "maximum": 1,
                "exclusiveMaximum": True,
            },
            "kind": {"type": "string", "default": "warm", "enum": ["warm"]},
        },
    }


class _Either(pydantic.BaseModel):
    value: int | str


class _Tree(pydantic.BaseModel):
    children: list[_Tree] = []


def test_constructs_without_a_structural_form_are_refused_by_path() -> None:
    with pytest.raises(crdgen.CrdGenerationError, match=r"\.value: anyOf with 2 non-null"):
        crdgen.structural_schema(_Either.model_json_schema(), object_defaults=False)
    with pytest.raises(crdgen.CrdGenerationError, match="recursive reference"):
        crdgen.structural_schema(_Tree.model_json_schema(), object_defaults=False)


# ---------------------------------------------------------------------------------------------
# The committed files and the drift check


def test_committed_files_equal_the_generated_crd() -> None:
    expected = gen_crds.expected_files()
    assert len(expected) == 4  # two CRDs, each in crds/ and in the chart
    for target, text in expected.items():
        assert (ROOT / target).read_text(encoding="utf-8") == text, (
            f"{target} is stale: run python scripts/gen_crds.py"
        )
        assert text.startswith("# Generated from compose_api.models by")
    jobs = yaml.safe_load(expected[pathlib.Path("crds") / f"{crdgen.CRD_NAME}.yaml"])
    assert jobs == crdgen.build_crd()
    pools = yaml.safe_load(expected[pathlib.Path("crds") / f"{crdgen.POOL_CRD_NAME}.yaml"])
    assert pools == crdgen.build_pool_crd()


def test_check_names_each_file_that_differs(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gen_crds.main(["--check", "--root", str(tmp_path)]) == 1
    assert "crds/compositionjobs.compose.nextunicorn.dev.yaml: missing" in capsys.readouterr().err

    assert gen_crds.main(["--root", str(tmp_path)]) == 0
    assert gen_crds.main(["--check", "--root", str(tmp_path)]) == 0

    chart_copy = tmp_path / gen_crds.TARGETS[1]
    chart_copy.write_text(
        chart_copy.read_text().replace("shortNames:\n    - cjob", "shortNames:\n    - xx")
    )
    capsys.readouterr()
    assert gen_crds.main(["--check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{gen_crds.TARGETS[1]}: differs from the generated CRD" in err
    assert "-    - xx" in err and "+    - cj" in err
    assert f"\n{gen_crds.TARGETS[0]}:" not in f"\n{err}"
