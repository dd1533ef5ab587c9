"""Helpers of the deployment checks: running helm, picking objects out of a render, validating
objects against the Kubernetes OpenAPI schemas. Used by the tests in this folder only."""

from __future__ import annotations

import dataclasses
import pathlib
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "nextunicorn-compose"
MANIFESTS = ROOT / "manifests"
EXAMPLES = MANIFESTS / "examples"
VALUES = pathlib.Path(__file__).resolve().parent / "values"
# What the chart requires and has no default for (the API server's CIDRs of the NetworkPolicies,
# on by default); manifests/ is rendered with it too. "The defaults" below mean these plus it.
REQUIRED_VALUES = ROOT / "scripts" / "manifests-values.yaml"
# KEDA's published ScaledObject CRD (schemas/README.md says where it comes from).
KEDA_CRD = pathlib.Path(__file__).resolve().parent / "schemas" / "keda.sh_scaledobjects.yaml"
RELEASE = "nextunicorn-compose"
NAMESPACE = "nextunicorn-compose"
# A recent Kubernetes release that EKS runs and kubernetes-validate ships schemas for.
KUBERNETES_VERSION = "1.33"
# Value sets under values/ rendered by the parametrised tests (besides the defaults, None).
VALUE_SETS: tuple[str | None, ...] = (
    None,
    "cluster-wide",
    "namespaced",
    "networkpolicy",
    "metrics-off",
    "spot-only",
    "gateway",
    "custom-profiles",
    "pools",
    "pools-keda",
    "tracing",
)
# API groups whose kinds are CRDs: not in the Kubernetes OpenAPI schemas, so not validated there.
CRD_GROUPS = frozenset(
    {
        "kopf.dev",
        "monitoring.coreos.com",
        "compose.nextunicorn.dev",
        "karpenter.sh",
        "karpenter.k8s.aws",
        "kueue.x-k8s.io",
        "keda.sh",
        "opentelemetry.io",
        "argoproj.io",
        "source.toolkit.fluxcd.io",
        "helm.toolkit.fluxcd.io",
        "kustomize.toolkit.fluxcd.io",
        "kustomize.config.k8s.io",
    }
)

Obj = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Tools:
    helm: str
    kubectl: str


def helm_template(
    tools: Tools,
    values: Sequence[pathlib.Path] = (),
    *,
    include_crds: bool = False,
    bare: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``helm template`` with REQUIRED_VALUES and then ``values`` (``bare``: without
    REQUIRED_VALUES, the chart's defaults alone)."""
    command = [tools.helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    if include_crds:
        command.append("--include-crds")
    for path in values if bare else [REQUIRED_VALUES, *values]:
        command += ["--values", str(path)]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)


def parse_documents(text: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def group_of(obj: Obj) -> str:
    api_version = str(obj["apiVersion"])
    return api_version.split("/")[0] if "/" in api_version else ""


def kubernetes_errors(obj: Obj) -> list[str]:
    """Why the Kubernetes OpenAPI schema (strict: unknown fields refused) refuses ``obj``."""
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(part) for part in error.path)
        return [f"{obj['kind']}/{obj['metadata'].get('name')}: {path}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [error.message]
    return []


def of_kind(objects: Sequence[Obj], kind: str) -> list[Obj]:
    return [obj for obj in objects if obj["kind"] == kind]


def of_component(objects: Sequence[Obj], kind: str, component: str) -> list[Obj]:
    """The objects of ``kind`` labelled ``app.kubernetes.io/component: <component>``."""
    return [
        obj
        for obj in of_kind(objects, kind)
        if obj["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
    ]


def one(objects: Sequence[Obj], kind: str, name_suffix: str = "") -> Obj:
    found = [obj for obj in of_kind(objects, kind) if obj["metadata"]["name"].endswith(name_suffix)]
    if len(found) != 1:
        names = [obj["metadata"]["name"] for obj in of_kind(objects, kind)]
        raise LookupError(f"expected one {kind} named *{name_suffix}, found {names}")
    return found[0]


def pod_templates(objects: Sequence[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(owner, pod template) of every workload in a render."""
    for obj in objects:
        if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            yield obj, obj["spec"]["template"]


def env_of(container: Obj) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


def expected_errors(path: pathlib.Path) -> list[str]:
    """The ``# expected-error: ...`` lines of an example or value file."""
    marker = "# expected-error:"
    return [
        line.removeprefix(marker).strip()
        for line in path.read_text().splitlines()
        if line.startswith(marker)
    ]


def rule_triples(rules: Sequence[Obj]) -> set[tuple[str, str, str]]:
    """Every (apiGroup, resource, verb) a list of RBAC rules grants."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }
