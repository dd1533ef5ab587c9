"""manifests/examples/: the CompositionJobs are accepted (or, under invalid/, refused with the
message each names) by the generated CRD schema; the other examples are valid Kubernetes, or at
least well-formed where their kinds are CRDs; the IAM policies are least-privilege JSON."""

from __future__ import annotations

import json
import pathlib

import pytest
import yaml

from compose_api import models
from tests.deploy import helpers
from tests.support import crd_validation

GOOD = sorted(helpers.EXAMPLES.glob("*.yaml"))
BAD = sorted((helpers.EXAMPLES / "invalid").glob("*.yaml"))
OTHER = sorted(
    path
    for path in helpers.EXAMPLES.rglob("*.yaml")
    if path.parent not in {helpers.EXAMPLES, helpers.EXAMPLES / "invalid"}
)


def _ids(path: pathlib.Path) -> str:
    return str(path.relative_to(helpers.EXAMPLES))


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
