"""manifests/examples/: the CompositionJobs are accepted (or, under invalid/, refused with the
message each names) by the generated CRD schema, and so are the CompositionPools by theirs; the
KEDA ScaledObjects by KEDA's published CRD; the other examples are valid Kubernetes, or at least
well-formed where their kinds are CRDs; the IAM policies are least-privilege JSON."""

from __future__ import annotations

import json
import pathlib

import pytest
import yaml

from compose_api import models, pools
from tests.deploy import helpers
from tests.support import crd_validation

GOOD = sorted(helpers.EXAMPLES.glob("*.yaml"))
BAD = sorted((helpers.EXAMPLES / "invalid").glob("*.yaml"))
OTHER = sorted(
    path
    for path in helpers.EXAMPLES.rglob("*.yaml")
    if path.parent not in {helpers.EXAMPLES, helpers.EXAMPLES / "invalid"}
)


def _documents_of_kind(kind: str) -> list[tuple[pathlib.Path, helpers.Obj]]:
    return [
        (path, obj)
        for path in OTHER
        for obj in helpers.parse_documents(path.read_text())
        if obj.get("kind") == kind
    ]


POOLS = _documents_of_kind(pools.KIND)
SCALED_OBJECTS = _documents_of_kind("ScaledObject")


def _ids(path: pathlib.Path) -> str:
    return str(path.relative_to(helpers.EXAMPLES))


def _doc_ids(item: tuple[pathlib.Path, helpers.Obj]) -> str:
    return f"{_ids(item[0])}:{item[1]['metadata']['name']}"


def test_there_are_examples_from_simple_to_full() -> None:
    assert len(GOOD) >= 3 and len(BAD) >= 5 and OTHER
    full = yaml.safe_load((helpers.EXAMPLES / "04-full.yaml").read_text())
    # The full example sets every field of the spec.
    for name, field in models.CompositionJobSpec.model_fields.items():
        assert (field.alias or name) in full["spec"], name
    for section, model in (
        ("output", models.Output),
        ("params", models.Params),
        ("execution", models.Execution),
    ):
        for name, field in model.model_fields.items():
            if name == "queue_name":  # Kueue admission: shown in 03-queued-spot.yaml
                continue
            if name == "pool":  # warm workers: shown in 05-pool.yaml
                continue
            assert (field.alias or name) in full["spec"][section], f"{section}.{name}"


@pytest.mark.parametrize("path", GOOD, ids=_ids)
def test_good_examples_are_accepted(path: pathlib.Path) -> None:
    obj = yaml.safe_load(path.read_text())
    assert crd_validation.validate_composition_job(obj) == []
    # The operator reads them into the same models.
    job = models.CompositionJob.model_validate(obj)
    assert job.metadata.namespace == helpers.NAMESPACE


def test_there_are_pool_examples_with_and_without_keda() -> None:
    scalings = {obj["spec"].get("scaling", "operator") for _, obj in POOLS}
    assert scalings == {"operator", "external"}
    assert SCALED_OBJECTS


@pytest.mark.parametrize("item", POOLS, ids=_doc_ids)
def test_pool_examples_are_accepted(item: tuple[pathlib.Path, helpers.Obj]) -> None:
    _, obj = item
    assert crd_validation.validate_composition_pool(obj) == []
    pool = pools.CompositionPool.model_validate(obj)
    assert pool.metadata.namespace == helpers.NAMESPACE


def test_a_wrong_pool_is_refused_by_the_pool_crd() -> None:
    """The pool check can fail: the CRD's bounds and CEL rule apply."""
    _, obj = POOLS[0]
    wrong = {**obj, "spec": {**obj["spec"], "minReplicas": 5, "maxReplicas": 2}}
    errors = crd_validation.validate_composition_pool(wrong)
    assert any("minReplicas must not exceed maxReplicas" in error for error in errors), errors
    unknown = {**obj, "spec": {**obj["spec"], "replica": 2}}
    assert crd_validation.validate_composition_pool(unknown) == ['unknown field "spec.replica"']


@pytest.mark.parametrize("item", SCALED_OBJECTS, ids=_doc_ids)
def test_scaled_objects_are_accepted_by_the_keda_crd(
    item: tuple[pathlib.Path, helpers.Obj],
) -> None:
    path, obj = item
    assert crd_validation.validate_custom_object(obj, helpers.KEDA_CRD) == []
    # It scales a pool of the same file, one whose replicas are left to it.
    target = obj["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == (models.API_VERSION, pools.KIND)
    (pool,) = [o for p, o in POOLS if p == path and o["metadata"]["name"] == target["name"]]
    assert pool["spec"]["scaling"] == pools.Scaling.EXTERNAL
    assert obj["spec"]["minReplicaCount"] == pool["spec"]["minReplicas"]
    assert obj["spec"]["maxReplicaCount"] == pool["spec"]["maxReplicas"]


@pytest.mark.parametrize("path", BAD, ids=_ids)
def test_bad_examples_are_refused_with_the_expected_message(path: pathlib.Path) -> None:
    expected = helpers.expected_errors(path)
    assert expected, f"{path.name} names no expected error"
    errors = crd_validation.validate_composition_job(yaml.safe_load(path.read_text()))
    assert errors, f"{path.name} was accepted"
    for message in expected:
        assert any(message in error for error in errors), (message, errors)


@pytest.mark.parametrize("path", OTHER, ids=_ids)
def test_other_examples_are_well_formed(path: pathlib.Path) -> None:
    documents = helpers.parse_documents(path.read_text())
    assert documents
    for obj in documents:
        assert obj["apiVersion"] and obj["kind"] and obj["metadata"]["name"]
        if helpers.group_of(obj) not in helpers.CRD_GROUPS:
            assert helpers.kubernetes_errors(obj) == []


@pytest.mark.parametrize("path", sorted(helpers.EXAMPLES.rglob("*.json")), ids=lambda p: p.name)
def test_iam_policies_are_least_privilege(path: pathlib.Path) -> None:
    policy = json.loads(path.read_text())
    assert policy["Version"] == "2012-10-17"
    for statement in policy["Statement"]:
        actions = statement["Action"]
        actions = [actions] if isinstance(actions, str) else actions
        assert not any(action.endswith("*") for action in actions), statement
        resources = statement.get("Resource", [])
        resources = [resources] if isinstance(resources, str) else resources
        assert "*" not in resources, statement
        if any(action.startswith("s3:") for action in actions):
            assert all(r.startswith("arn:aws:s3:::nextunicorn-compose-") for r in resources)
