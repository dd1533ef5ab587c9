"""The chart's warm pools: the workers' identity, CompositionPools from values, KEDA ScaledObjects.

Rendered with ``helm template`` and checked against the code they meet: the operator's own
settings read ``COMPOSE_WORKER_SERVICE_ACCOUNT`` and ``COMPOSE_DEFAULT_POOLS``; the pools are
accepted by the generated CRD and the API models; the ScaledObjects by KEDA's published CRD, with
the pool's bounds and defaults; and the worker pods the operator builds for a rendered pool run
as the chart's ServiceAccount and are selected by the chart's worker NetworkPolicy.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest
import yaml

from compose_api import models, pools
from compose_operator import pools as operator_pools
from compose_operator import settings as settings_module
from tests.deploy import helpers
from tests.deploy.helpers import Obj
from tests.support import crd_validation

Render = Callable[[str | None], list[Obj]]
ROLE_ARN = "eks.amazonaws.com/role-arn"


def _operator_settings(
    objects: list[Obj], tmp_path: pathlib.Path
) -> settings_module.OperatorSettings:
    """The operator's settings from the rendered Deployment's environment and profiles."""
    container = helpers.one(objects, "Deployment", "-operator")["spec"]["template"]["spec"][
        "containers"
    ][0]
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(helpers.one(objects, "ConfigMap", "-profiles")["data"]["profiles.yaml"])
    env = {**helpers.env_of(container), "COMPOSE_PROFILES_PATH": str(profiles)}
    return settings_module.from_environment(env)


def _pools(objects: list[Obj]) -> dict[tuple[str, str], Obj]:
    return {
        (o["metadata"]["namespace"], o["metadata"]["name"]): o
        for o in helpers.of_kind(objects, pools.KIND)
    }


def _scaled_objects(objects: list[Obj]) -> dict[tuple[str, str], Obj]:
    return {
        (o["metadata"]["namespace"], o["metadata"]["name"]): o
        for o in helpers.of_kind(objects, "ScaledObject")
    }


def _workers(objects: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["namespace"]: o for o in helpers.of_component(objects, kind, "worker")}


def test_defaults_create_the_worker_identity_and_no_pool(
    render: Render, tmp_path: pathlib.Path
) -> None:
    objects = render(None)
    # manifests/ is applied with its CRDs in one go: no custom resource in the defaults.
    assert _pools(objects) == {} and _scaled_objects(objects) == {}
    accounts = _workers(objects, "ServiceAccount")
    assert list(accounts) == [helpers.NAMESPACE]
    account = accounts[helpers.NAMESPACE]
    # Unlike the inference pods, a worker talks to the API: its token is mounted.
    assert account["automountServiceAccountToken"] is True
    assert ROLE_ARN not in account["metadata"].get("annotations", {})
    settings = _operator_settings(objects, tmp_path)
    assert settings.worker_service_account == account["metadata"]["name"]
    assert settings.worker_service_account != settings.inference_service_account
    assert settings.default_pools == {}


def test_pools_from_values(render: Render, tmp_path: pathlib.Path) -> None:
    objects = render("pools")
    settings = _operator_settings(objects, tmp_path)
    assert settings.default_pools == {"instantid-sdxl": "interactive"}
    found = _pools(objects)
    assert set(found) == {("team-a", "interactive"), ("team-b", "batch")}
    for pool in found.values():
        assert crd_validation.validate_composition_pool(pool) == []
        spec = pools.CompositionPool.model_validate(pool).spec
        assert spec.profile in settings.profiles
    interactive = found["team-a", "interactive"]
    assert interactive["spec"] == {
        "profile": "instantid-sdxl",
        "minReplicas": 1,
        "maxReplicas": 4,
        "scaleToZeroAfterSeconds": 900,
        "capacityType": "on-demand",
        "scaling": "external",  # its keda.enabled: KEDA writes spec.replicas
    }
    assert interactive["metadata"]["labels"]["tier"] == "interactive"
    # The other pool is the operator's to scale: spec as given, the CRD's default scaling.
    batch = found["team-b", "batch"]
    assert batch["spec"] == {"profile": "instantid-sdxl", "maxReplicas": 2, "capacityType": "spot"}
    assert (
        crd_validation.default_object(
            batch, crd_validation.load_schema(crd_validation.POOL_CRD_PATH)
        )["spec"]["scaling"]
        == pools.Scaling.OPERATOR
    )
    assert set(_scaled_objects(objects)) == {("team-a", "interactive")}
    # The workers' identity in both pool namespaces, with the IRSA role.
    accounts = _workers(objects, "ServiceAccount")
    assert set(accounts) == {"team-a", "team-b"}
    for account in accounts.values():
        assert account["metadata"]["name"] == settings.worker_service_account
        assert account["metadata"]["annotations"][ROLE_ARN].endswith(":role/compose-inference")


def test_keda_scales_the_pool_through_scale_from_its_demand(render: Render) -> None:
    objects = render("pools")
    scaled = _scaled_objects(objects)["team-a", "interactive"]
    assert crd_validation.validate_custom_object(scaled, helpers.KEDA_CRD) == []
    assert scaled["spec"] == {
        "scaleTargetRef": {
            "apiVersion": models.API_VERSION,
            "kind": pools.KIND,
            "name": "interactive",
        },
        "minReplicaCount": 1,
        "maxReplicaCount": 4,
        "pollingInterval": 15,
        # Down to minReplicas once the demand has fallen for scaleToZeroAfterSeconds.
        "cooldownPeriod": 900,
        "advanced": {
            "horizontalPodAutoscalerConfig": {
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 900}}
            }
        },
        "triggers": [
            {
                "type": "prometheus",
                "metadata": {
                    "activationThreshold": "0",  # the first job wakes a pool at zero
                    "query": 'max(compose_pool_demand{namespace="team-a",pool="interactive"})',
                    "serverAddress": "http://prometheus.monitoring.svc:9090",
                    # The pool's own jobsPerWorker (1) wins over pools.keda's (2).
                    "threshold": "1",
                },
            }
        ],
    }


def test_keda_for_every_pool_with_the_crds_defaults(render: Render) -> None:
    objects = render("pools-keda")
    found = _pools(objects)
    scaled = _scaled_objects(objects)
    assert (
        set(scaled)
        == set(found)
        == {
            ("gpu-jobs", "warm"),
            (helpers.NAMESPACE, "defaults"),
        }
    )
    for key, pool in found.items():
        assert pool["spec"]["scaling"] == pools.Scaling.EXTERNAL
        assert crd_validation.validate_composition_pool(pool) == []
        assert crd_validation.validate_custom_object(scaled[key], helpers.KEDA_CRD) == []
    # A pool without bounds: KEDA's are the ones the API server will default the pool to.
    stored = crd_validation.default_object(
        found[helpers.NAMESPACE, "defaults"],
        crd_validation.load_schema(crd_validation.POOL_CRD_PATH),
    )["spec"]
    fields = pools.CompositionPoolSpec.model_fields
    defaults = scaled[helpers.NAMESPACE, "defaults"]["spec"]
    assert defaults["minReplicaCount"] == stored["minReplicas"] == fields["min_replicas"].default
    assert defaults["maxReplicaCount"] == stored["maxReplicas"] == fields["max_replicas"].default
    assert (
        defaults["cooldownPeriod"]
        == stored["scaleToZeroAfterSeconds"]
        == fields["scale_to_zero_after_seconds"].default
    )
    # 7200 s to zero; the HPA's stabilisation window stops at its maximum, 3600 s.
    warm = scaled["gpu-jobs", "warm"]["spec"]
    assert warm["cooldownPeriod"] == 7200
    assert warm["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"] == {
        "stabilizationWindowSeconds": 3600
    }
    (trigger,) = warm["triggers"]
    assert trigger["metadata"] == {
        "activationThreshold": "0",
        "awsRegion": "us-east-1",
        "identityOwner": "operator",
        "query": 'max(compose_pool_demand{exported_namespace="gpu-jobs",pool="warm"})',
        "serverAddress": "https://aps-workspaces.us-east-1.amazonaws.com/workspaces/ws-example",
        "threshold": "1",
    }
    assert trigger["authenticationRef"] == {
        "name": "keda-aws-credentials",
        "kind": "ClusterTriggerAuthentication",
    }
    # The workers' account, Role and NetworkPolicy follow the pool into its own namespace.
    for kind in ("ServiceAccount", "Role", "RoleBinding", "NetworkPolicy"):
        assert set(_workers(objects, kind)) == {helpers.NAMESPACE, "gpu-jobs"}, kind


def test_a_numeric_keda_threshold_would_be_refused(render: Render) -> None:
    """The KEDA check can fail: trigger metadata are strings, and the chart quotes them."""
    scaled = _scaled_objects(render("pools"))["team-a", "interactive"]
    trigger = scaled["spec"]["triggers"][0]
    wrong = {
        **scaled,
        "spec": {**scaled["spec"], "triggers": [{**trigger, "metadata": {"threshold": 1}}]},
    }
    errors = crd_validation.validate_custom_object(wrong, helpers.KEDA_CRD)
    assert any("metadata.threshold" in error and "string" in error for error in errors), errors


def test_the_keda_example_is_what_the_chart_renders(
    tools: helpers.Tools, tmp_path: pathlib.Path
) -> None:
    path = helpers.EXAMPLES / "pools" / "keda-scaledobject.yaml"
    example = {o["kind"]: o for o in helpers.parse_documents(path.read_text())}
    pool = example[pools.KIND]
    spec = {key: value for key, value in pool["spec"].items() if key != "scaling"}
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "pools": {
                    "keda": {"enabled": True},
                    "list": [{"name": pool["metadata"]["name"], "spec": spec}],
                }
            }
        )
    )
    done = helpers.helm_template(tools, [values])
    assert done.returncode == 0, done.stderr
    rendered = helpers.parse_documents(done.stdout)
    for kind, obj in example.items():
        (mine,) = helpers.of_kind(rendered, kind)
        assert mine["metadata"]["name"] == obj["metadata"]["name"]
        assert mine["metadata"]["namespace"] == obj["metadata"]["namespace"]
        assert mine["spec"] == obj["spec"], kind


@pytest.mark.parametrize("values", ["pools", "pools-keda"])
def test_worker_pods_run_as_the_charts_account_under_its_network_policy(
    render: Render, values: str, tmp_path: pathlib.Path
) -> None:
    objects = render(values)
    settings = _operator_settings(objects, tmp_path)
    accounts = _workers(objects, "ServiceAccount")
    policies = _workers(objects, "NetworkPolicy")
    inference_policies = {
        o["metadata"]["namespace"]: o
        for o in helpers.of_component(objects, "NetworkPolicy", "inference")
    }
    for (namespace, name), body in _pools(objects).items():
        view = operator_pools.view_pool({**body, "metadata": {**body["metadata"], "uid": "u-1"}})
        assert view.spec is not None, view.spec_error
        profile = settings.profiles[view.spec.profile]
        deployment = operator_pools.build_deployment(view, profile, settings, replicas=1)
        pod = deployment["spec"]["template"]
        # The operator's worker pods run as the account the chart made in the pool's namespace,
        # with its token (the pod spec does not turn it off).
        assert pod["spec"]["serviceAccountName"] == accounts[namespace]["metadata"]["name"]
        assert pod["spec"].get("automountServiceAccountToken", True) is True
        # The chart's worker policy selects them (API egress); the inference one does not.
        labels = pod["metadata"]["labels"]
        selector = policies[namespace]["spec"]["podSelector"]
        assert selector["matchExpressions"] and all(
            rule["operator"] == "Exists" and rule["key"] in labels
            for rule in selector["matchExpressions"]
        ), name
        if namespace in inference_policies:
            rules = inference_policies[namespace]["spec"]["podSelector"]["matchExpressions"]
            assert not all(rule["key"] in labels for rule in rules), name
