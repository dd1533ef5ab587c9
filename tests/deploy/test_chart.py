"""The Helm chart: lint, render with several value sets, Kubernetes schema validity, hardening,
the behaviour each value set asks for, and refusal of wrong values with a clear message."""

from __future__ import annotations

import importlib
import pathlib
import re
import subprocess
from collections.abc import Callable

import pytest
import yaml

from compose_api import profiles as profiles_module
from compose_operator import retention
from tests.deploy import helpers
from tests.deploy.helpers import Obj

Render = Callable[[str | None], list[Obj]]


@pytest.mark.parametrize("values", helpers.VALUE_SETS)
def test_helm_lint_passes(tools: helpers.Tools, values: str | None) -> None:
    command = [tools.helm, "lint", "--strict", str(helpers.CHART), "--namespace", "lint"]
    command += ["--values", str(helpers.REQUIRED_VALUES)]
    if values:
        command += ["--values", str(helpers.VALUES / f"{values}.yaml")]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("values", helpers.VALUE_SETS)
def test_rendered_objects_are_valid_kubernetes(render: Render, values: str | None) -> None:
    objects = render(values)
    checked = [obj for obj in objects if helpers.group_of(obj) not in helpers.CRD_GROUPS]
    errors = [error for obj in checked for error in helpers.kubernetes_errors(obj)]
    assert errors == []
    assert len(checked) >= 6
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "nextunicorn-compose"
        if obj["kind"] not in {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}:
            assert obj["metadata"].get("namespace"), f"{obj['kind']} has no namespace"


@pytest.mark.parametrize("values", helpers.VALUE_SETS)
def test_pods_are_hardened(render: Render, values: str | None) -> None:
    workloads = list(helpers.pod_templates(render(values)))
    assert workloads
    for owner, template in workloads:
        name = owner["metadata"]["name"]
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert container["resources"]["requests"]["cpu"], name
            assert container["resources"]["limits"]["memory"], name
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
            assert container["readinessProbe"]["httpGet"]["path"], name
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]], name


def test_cluster_wide_mode_runs_active_standby(render: Render) -> None:
    objects = render("cluster-wide")
    deployment = helpers.one(objects, "Deployment", "-operator")
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = helpers.env_of(container)
    assert env["COMPOSE_NAMESPACES"] == ""
    assert env["COMPOSE_STANDALONE"] == "false"
    assert env["COMPOSE_PEERING_NAME"] == "nextunicorn-compose"
    # Replicas get distinct priorities: the operator adds its own per-pod offset, no shell.
    assert container["command"] == ["compose-operator"]
    assert env["COMPOSE_PEERING_PRIORITY_JITTER"] == "true"
    # Retention: the chart's default is the operator's own, and results are kept.
    kept = retention.RetentionSettings.from_environment(env)
    assert kept.default_ttl_seconds_after_finished == retention.DEFAULT_TTL_SECONDS
    assert kept.delete_results is False
    # The operator creates its peering object itself: the chart ships no custom resource, so
    # a plain `kubectl apply` of the rendered chart works before the CRDs are established.
    assert helpers.of_kind(objects, "ClusterKopfPeering") == []
    assert helpers.of_kind(objects, "KopfPeering") == []
    assert helpers.one(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert helpers.of_component(objects, "Role", "operator") == []
    assert helpers.one(objects, "ClusterRoleBinding")["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": deployment["spec"]["template"]["spec"]["serviceAccountName"],
            "namespace": helpers.NAMESPACE,
        }
    ]
    inference = helpers.one(objects, "ServiceAccount", "-inference")
    assert inference["metadata"]["name"] == env["COMPOSE_INFERENCE_SERVICE_ACCOUNT"]
    assert inference["metadata"]["namespace"] == helpers.NAMESPACE
    assert inference["automountServiceAccountToken"] is False
    service = helpers.one(objects, "Service", "-metrics")
    assert service["spec"]["ports"][0]["port"] == int(env["COMPOSE_METRICS_PORT"]) == 8080
    assert helpers.of_kind(objects, "ServiceMonitor") == []


def test_defaults_are_namespaced_with_network_policies(render: Render) -> None:
    objects = render(None)
    container = helpers.one(objects, "Deployment", "-operator")["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert helpers.env_of(container)["COMPOSE_NAMESPACES"] == helpers.NAMESPACE
    # The operator creates its KopfPeering itself (the chart ships no custom resource).
    assert helpers.of_kind(objects, "ClusterKopfPeering") == []
    assert helpers.of_kind(objects, "KopfPeering") == []
    roles = helpers.of_component(objects, "Role", "operator")
    assert [o["metadata"]["namespace"] for o in roles] == [helpers.NAMESPACE]
    # No cluster-wide rule reaches CompositionJobs, Jobs or Pods.
    for role in helpers.of_kind(objects, "ClusterRole"):
        for rule in role["rules"]:
            assert not {"compositionjobs", "jobs", "pods"} & set(rule.get("resources", [])), rule
    policies = {o["metadata"]["name"] for o in helpers.of_kind(objects, "NetworkPolicy")}
    assert {
        "nextunicorn-compose-operator",
        "nextunicorn-compose-inference",
        "nextunicorn-compose-worker",
    } <= policies


def test_bare_defaults_require_the_api_server_cidrs(tools: helpers.Tools) -> None:
    done = helpers.helm_template(tools, bare=True)
    assert done.returncode != 0
    assert "apiServerCidrs" in done.stderr


def test_namespaced_mode_grants_only_the_watched_namespaces(render: Render) -> None:
    objects = render("namespaced")
    env = helpers.env_of(
        helpers.one(objects, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]
    )
    assert env["COMPOSE_NAMESPACES"] == "team-a,team-b"
    for kind in ("Role", "RoleBinding"):
        for component in ("operator", "worker"):
            found = helpers.of_component(objects, kind, component)
            assert sorted(o["metadata"]["namespace"] for o in found) == ["team-a", "team-b"], kind
    assert helpers.of_kind(objects, "ClusterKopfPeering") == []
    assert helpers.of_kind(objects, "KopfPeering") == []
    inference = [
        o
        for o in helpers.of_kind(objects, "ServiceAccount")
        if o["metadata"]["name"] == env["COMPOSE_INFERENCE_SERVICE_ACCOUNT"]
    ]
    assert sorted(o["metadata"]["namespace"] for o in inference) == ["team-a", "team-b"]
    for account in inference:
        assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == (
            "arn:aws:iam::123456789012:role/compose-inference"
        )
    operator_account = helpers.one(objects, "ServiceAccount", "-operator")
    assert operator_account["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/compose-operator",
        "owner": "platform-team",
    }
    # commonLabels and commonAnnotations reach every object and the pods.
    for obj in objects:
        assert obj["metadata"]["labels"]["cost-centre"] == "imaging", obj["kind"]
        assert obj["metadata"]["annotations"]["owner"] == "platform-team", obj["kind"]
    for _, template in helpers.pod_templates(objects):
        assert template["metadata"]["labels"]["cost-centre"] == "imaging"
    assert helpers.one(objects, "Deployment", "-operator")["spec"]["replicas"] == 3


def test_metrics_off_and_standalone(render: Render) -> None:
    objects = render("metrics-off")
    assert [o for o in helpers.of_kind(objects, "Service")] == []
    assert helpers.of_kind(objects, "PodDisruptionBudget") == []
    assert helpers.of_kind(objects, "ClusterKopfPeering") == []
    container = helpers.one(objects, "Deployment", "-operator")["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["command"] == ["compose-operator"]
    assert helpers.env_of(container)["COMPOSE_STANDALONE"] == "true"


def test_network_policies_and_service_monitor(render: Render) -> None:
    objects = render("networkpolicy")
    policies = {o["metadata"]["name"]: o for o in helpers.of_kind(objects, "NetworkPolicy")}
    assert set(policies) == {
        "nextunicorn-compose-operator",
        "nextunicorn-compose-inference",
        "nextunicorn-compose-worker",
    }
    operator = policies["nextunicorn-compose-operator"]["spec"]
    assert operator["ingress"] == [
        {
            "ports": [{"port": "metrics", "protocol": "TCP"}],
            "from": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    }
                }
            ],
        }
    ]
    api = [rule for rule in operator["egress"] if "to" in rule]
    assert api == [
        {
            "to": [{"ipBlock": {"cidr": "10.0.0.0/16"}}],
            "ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}],
        }
    ]
    inference = policies["nextunicorn-compose-inference"]["spec"]
    assert "ingress" not in inference and "Ingress" in inference["policyTypes"]
    monitor = helpers.one(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # honorLabels: the metrics' own namespace label (the job's or pool's) is kept, which the
    # KEDA queries of pools.keda select on.
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "honorLabels": True}
    ]
    # The workers reach the API server (their Lease and assignments) and HTTPS, nothing else.
    worker = policies["nextunicorn-compose-worker"]["spec"]
    assert "ingress" not in worker and "Ingress" in worker["policyTypes"]
    assert [rule for rule in worker["egress"] if "to" in rule] == api


def test_tracing_reaches_the_operator_the_gateway_and_the_collector(
    render: Render, tmp_path: pathlib.Path
) -> None:
    objects = render("tracing")
    wanted = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://adot-collector.observability:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,cloud.platform=aws_eks",
    }
    for component in ("operator", "gateway"):
        (container,) = helpers.one(objects, "Deployment", f"-{component}")["spec"]["template"][
            "spec"
        ]["containers"]
        env = helpers.env_of(container)
        assert {k: v for k, v in env.items() if k.startswith("OTEL_")} == {
            **wanted,
            "OTEL_SERVICE_NAME": f"compose-{component}",
        }
    # The operator hands the export settings on to its pods (not its own service name).
    settings_module = importlib.import_module("compose_operator.settings")
    operator = helpers.one(objects, "Deployment", "-operator")["spec"]["template"]["spec"]
    env = helpers.env_of(operator["containers"][0])
    profiles_file = tmp_path / "profiles.yaml"
    profiles_file.write_text(
        helpers.one(objects, "ConfigMap", "-profiles")["data"]["profiles.yaml"]
    )
    settings = settings_module.from_environment(
        {**env, "COMPOSE_PROFILES_PATH": str(profiles_file)}
    )
    assert settings.tracing_env == wanted
    # Every component may reach the collector's port in its namespace, and only there.
    collector = {
        "ports": [{"port": 4318, "protocol": "TCP"}],
        "to": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}
        ],
    }
    policies = helpers.of_kind(objects, "NetworkPolicy")
    assert {p["metadata"]["name"].removeprefix("nextunicorn-compose-") for p in policies} >= {
        "operator",
        "inference",
        "gateway",
    }
    for policy in policies:
        assert collector in policy["spec"]["egress"], policy["metadata"]["name"]
    # Off by default: not one OTEL_ variable, not one rule more.
    default = render(None)
    for deployment in helpers.of_kind(default, "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert not [k for k in helpers.env_of(container) if k.startswith("OTEL_")]


def _rendered_profiles(objects: list[Obj]) -> dict[str, profiles_module.ModelProfile]:
    config_map = helpers.one(objects, "ConfigMap", "-profiles")
    return profiles_module.load_profiles(config_map["data"]["profiles.yaml"])


def test_spot_only_overrides_every_profile_placement(render: Render) -> None:
    default = _rendered_profiles(render(None))
    spot = _rendered_profiles(render("spot-only"))
    assert spot.keys() == default.keys() and spot
    for name, profile in spot.items():
        assert profile.placement.capacity_type == "spot"
        assert profile.placement.instance_types == ["g5.xlarge", "g5.2xlarge"]
        assert profile.placement.node_selector == {
            **default[name].placement.node_selector,
            "karpenter.sh/nodepool": "gpu-g5",
        }
        assert profile.placement.tolerations == default[name].placement.tolerations
        assert profile.model_dump(exclude={"placement"}) == default[name].model_dump(
            exclude={"placement"}
        )


def test_default_profiles_are_the_inference_image_defaults(render: Render) -> None:
    source = helpers.ROOT / "inference_image" / "compose_inference" / "profiles" / "default.yaml"
    assert _rendered_profiles(render(None)) == profiles_module.load_profiles(source.read_text())
    # Verbatim, licence comments included, when no placement override applies.
    config_map = helpers.one(render(None), "ConfigMap", "-profiles")
    assert config_map["data"]["profiles.yaml"].rstrip().endswith(source.read_text().rstrip())


def test_gateway(render: Render, monkeypatch: pytest.MonkeyPatch) -> None:
    settings_module = importlib.import_module("compose_gateway.settings")
    objects = render("gateway")
    deployment = helpers.one(objects, "Deployment", "-gateway")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = helpers.env_of(container)
    fields = settings_module.Settings.model_fields
    for name in env:
        if name.startswith("COMPOSE_GATEWAY_"):
            assert name.removeprefix("COMPOSE_GATEWAY_").lower() in fields, name
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = settings_module.Settings()
    assert settings.namespace == helpers.NAMESPACE
    assert settings.port == container["ports"][0]["containerPort"]
    assert settings.cors_origins == ["https://app.example.com"]
    assert settings.rate_limit_burst == 5
    assert settings.cdn_base_url == "https://images.example.com"
    assert settings.default_pool == "interactive"
    assert settings.pools == ["batch", "interactive-eu"]
    # The API keys and the callback key are files from the referenced Secrets.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert str(settings.api_keys_file).startswith(mounts["api-keys"] + "/")
    assert volumes["api-keys"]["secret"]["secretName"] == "compose-gateway-api-keys"
    assert volumes["api-keys"]["secret"]["items"][0]["path"] == settings.api_keys_file.name
    assert settings.callback_secret_file is not None
    assert volumes["callback"]["secret"]["secretName"] == "compose-gateway-callback"
    assert "replicas" not in deployment["spec"]  # the HorizontalPodAutoscaler owns it
    hpa = helpers.one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    ingress = helpers.one(objects, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "alb"
    assert ingress["spec"]["rules"][0]["host"] == "compose.example.com"
    account = helpers.one(objects, "ServiceAccount", "-gateway")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(
        "role/compose-gateway"
    )
    binding = helpers.one(objects, "RoleBinding", "-gateway")
    assert binding["metadata"]["namespace"] == settings.namespace
    assert binding["subjects"][0]["name"] == account["metadata"]["name"]
    # /metrics on its own port and its own ClusterIP Service; the Ingress routes only "http".
    env = helpers.env_of(deployment["spec"]["template"]["spec"]["containers"][0])
    assert settings.metrics_port == int(env["COMPOSE_GATEWAY_METRICS_PORT"]) == 9090
    assert settings.metrics_port != settings.port
    metrics_service = helpers.one(objects, "Service", "-gateway-metrics")
    assert metrics_service["spec"]["type"] == "ClusterIP"
    assert [p["name"] for p in metrics_service["spec"]["ports"]] == ["metrics"]
    api_service = helpers.one(objects, "Service", "-gateway")
    assert [p["name"] for p in api_service["spec"]["ports"]] == ["http"]
    ingress = helpers.one(objects, "Ingress", "-gateway")
    backends = [path["backend"]["service"] for rule in ingress["spec"]["rules"]
                for path in rule["http"]["paths"]]  # fmt: skip
    assert backends == [{"name": api_service["metadata"]["name"], "port": {"name": "http"}}]
    monitor = helpers.one(objects, "ServiceMonitor", "-gateway")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= metrics_service["metadata"]["labels"].items()
    assert not selected.items() <= api_service["metadata"]["labels"].items()
    policy = helpers.one(objects, "NetworkPolicy", "-gateway")
    assert policy["spec"]["ingress"] == [
        {"ports": [{"port": "http", "protocol": "TCP"}]},
        {"ports": [{"port": "metrics", "protocol": "TCP"}]},
    ]


def test_gateway_is_off_by_default(render: Render) -> None:
    assert [o for o in render(None) if "gateway" in o["metadata"]["name"]] == []


@pytest.mark.parametrize("values", helpers.VALUE_SETS)
def test_operator_settings_accept_the_rendered_environment(
    render: Render, values: str | None, tmp_path: pathlib.Path
) -> None:
    settings_module = importlib.import_module("compose_operator.settings")
    objects = render(values)
    container = helpers.one(objects, "Deployment", "-operator")["spec"]["template"]["spec"][
        "containers"
    ][0]
    env = helpers.env_of(container)
    fields = settings_module.OperatorSettings.model_fields
    # COMPOSE_RETENTION_* belong to the retention settings, read (and checked) on their own.
    retention.RetentionSettings.from_environment(env)
    for name in env:
        if name.startswith("COMPOSE_") and not name.startswith("COMPOSE_RETENTION_"):
            assert name.removeprefix("COMPOSE_").lower() in fields, name
    config_map = helpers.one(objects, "ConfigMap", "-profiles")
    mount = next(m for m in container["volumeMounts"] if m["name"] == "profiles")
    assert env["COMPOSE_PROFILES_PATH"] == mount["mountPath"] + "/profiles.yaml"
    profiles_file = tmp_path / "profiles.yaml"
    profiles_file.write_text(config_map["data"]["profiles.yaml"])
    settings = settings_module.from_environment(
        {**env, "COMPOSE_PROFILES_PATH": str(profiles_file)}
    )
    assert settings.profiles
    assert settings.inference_service_account == env["COMPOSE_INFERENCE_SERVICE_ACCOUNT"]
    assert settings.output_bucket == "nextunicorn-compose-results"


@pytest.mark.parametrize(
    "values_file",
    sorted((helpers.VALUES / "invalid").glob("*.yaml")),
    ids=lambda path: path.stem,
)
def test_wrong_values_fail_with_a_clear_message(
    tools: helpers.Tools, values_file: pathlib.Path
) -> None:
    expected = helpers.expected_errors(values_file)
    assert expected, f"{values_file.name} names no expected error"
    done = helpers.helm_template(tools, [values_file])
    assert done.returncode != 0, f"{values_file.name} was accepted"
    for message in expected:
        assert message in done.stderr, done.stderr


def _documented_keys(text: str) -> tuple[set[str], set[str]]:
    """(every key path in values.yaml, the key paths some comment starts with)."""
    keys: set[str] = set()
    documented: set[str] = set()
    stack: list[tuple[int, str]] = []
    for line in text.splitlines():
        comment = re.match(r"^\s*# ([A-Za-z][\w.]*) -- ", line)
        if comment:
            documented.add(comment.group(1))
            continue
        match = re.match(r"^(\s*)([A-Za-z][\w]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([*(name for _, name in stack), match.group(2)])
        keys.add(path)
        stack.append((indent, match.group(2)))
    return keys, documented


def test_every_value_is_documented_by_a_comment_starting_with_its_key() -> None:
    text = (helpers.CHART / "values.yaml").read_text()
    keys, documented = _documented_keys(text)
    values = yaml.safe_load(text)

    def is_group(path: str) -> bool:
        node = values
        for part in path.split("."):
            node = node[part]
        return isinstance(node, dict) and bool(node)

    undocumented = [
        key
        for key in sorted(keys)
        if key not in documented
        # A map of settings is documented by its own keys' comments, a documented value covers
        # everything inside it (resources, security contexts).
        and not is_group(key)
        and not any(key.startswith(doc + ".") for doc in documented)
    ]
    assert undocumented == []
    assert documented <= keys, documented - keys


def test_inference_network_policy_selects_the_operators_pods(render: Render) -> None:
    names = importlib.import_module("compose_operator.names")
    policy = helpers.one(render("networkpolicy"), "NetworkPolicy", "-inference")
    expressions = policy["spec"]["podSelector"]["matchExpressions"]
    assert expressions == [{"key": names.JOB_LABEL, "operator": "Exists"}]
    assert names.JOB_LABEL in names.labels("cj", "uid", 0, "instantid-sdxl")


def test_custom_profiles_replace_the_built_in_ones(render: Render) -> None:
    profiles = _rendered_profiles(render("custom-profiles"))
    assert list(profiles) == ["sdxl-small"]
    placement = profiles["sdxl-small"].placement
    assert placement.instance_types == ["g5.xlarge"]
    assert placement.capacity_type == "on-demand"
    assert profiles["sdxl-small"].licence.commercial_use is True
