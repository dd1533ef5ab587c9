"""Builds the CompositionJob CustomResourceDefinition from the pydantic models.

The models in :mod:`compose_api.models` are the one hand-written schema. Kubernetes wants a
*structural* OpenAPI v3 schema instead of the JSON Schema pydantic emits: no ``$ref``/``$defs``,
no ``anyOf`` with ``null`` (``nullable: true`` instead), ``type`` on every node, no
``additionalProperties: false`` beside ``properties`` (unknown fields are pruned by the API server),
no ``const``, no titles. :func:`build_crd` does that translation and adds the resource's names,
printer columns and the status subresource.

Called by ``scripts/gen_crds.py`` (which writes ``crds/`` and the chart's copy and checks them for
drift) and by the CRD tests. Pure: pydantic and the standard library only, no I/O.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from compose_api import models, pools

CRD_NAME = f"{models.PLURAL}.{models.GROUP}"
POOL_CRD_NAME = f"{pools.PLURAL}.{models.GROUP}"

# JSON Schema keywords that carry over unchanged into the CRD's OpenAPI v3 subset.
_KEPT_KEYWORDS = frozenset(
    {
        "type",
        "format",
        "description",
        "enum",
        "pattern",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "multipleOf",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "nullable",
        "x-kubernetes-validations",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-int-or-string",
    }
)
# Keywords dropped on purpose: documentation-only or meaningless once inlined.
_DROPPED_KEYWORDS = frozenset({"title", "examples", "$defs", "definitions"})

PRINTER_COLUMNS: tuple[dict[str, Any], ...] = (
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Profile", "type": "string", "jsonPath": ".spec.profile"},
    {
        "name": "Attempt",
        "type": "integer",
        "jsonPath": ".status.attempt",
        "description": "Index of the latest attempt.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {
        "name": "Result",
        "type": "string",
        "jsonPath": ".status.result.s3Uri",
        "description": "S3 URI of the composed image.",
    },
    {
        "name": "Message",
        "type": "string",
        "jsonPath": ".status.message",
        "priority": 1,
        "description": "Why the job is in its phase.",
    },
    {"name": "Seed", "type": "integer", "jsonPath": ".status.seed", "priority": 1},
)


POOL_PRINTER_COLUMNS: tuple[dict[str, Any], ...] = (
    {"name": "Profile", "type": "string", "jsonPath": ".spec.profile"},
    {"name": "Min", "type": "integer", "jsonPath": ".spec.minReplicas"},
    {"name": "Max", "type": "integer", "jsonPath": ".spec.maxReplicas"},
    {
        "name": "Ready",
        "type": "integer",
        "jsonPath": ".status.readyWorkers",
        "description": "Workers loaded, warmed up and holding a fresh Lease.",
    },
    {"name": "Busy", "type": "integer", "jsonPath": ".status.busyWorkers"},
    {
        "name": "Queued",
        "type": "integer",
        "jsonPath": ".status.queued",
        "description": "Jobs waiting for a worker of this pool.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {
        "name": "Message",
        "type": "string",
        "jsonPath": ".status.message",
        "priority": 1,
        "description": "Why the pool is in its state.",
    },
)


class CrdGenerationError(ValueError):
    """The models use a JSON Schema construct that has no structural OpenAPI equivalent."""


def build_crd() -> dict[str, Any]:
    """The CompositionJob CustomResourceDefinition (apiextensions.k8s.io/v1) as a plain dict."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/part-of": "nextunicorn-compose"},
        },
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": models.KIND,
                "listKind": f"{models.KIND}List",
                "plural": models.PLURAL,
                "singular": models.SINGULAR,
                "shortNames": list(models.SHORT_NAMES),
                "categories": list(models.CATEGORIES),
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(column) for column in PRINTER_COLUMNS],
                    # Pool workers watch only the jobs assigned to them (Kubernetes >= 1.32).
                    "selectableFields": [{"jsonPath": f".{pools.ASSIGNED_WORKER_FIELD}"}],
                    "schema": {"openAPIV3Schema": build_schema()},
                },
            ],
        },
    }


def build_pool_crd() -> dict[str, Any]:
    """The CompositionPool CustomResourceDefinition, with a ``/scale`` subresource for KEDA or
    an HPA (``spec.replicas``, ``status.replicas``, ``status.selector``)."""
    spec = structural_schema(
        pools.CompositionPoolSpec.model_json_schema(by_alias=True, mode="validation"),
        object_defaults=True,
    )
    status = structural_schema(
        pools.CompositionPoolStatus.model_json_schema(by_alias=True, mode="validation"),
        object_defaults=False,
    )
    status["description"] = "Observed state, written by the operator only (status subresource)."
    schema = {
        "type": "object",
        "description": "A set of warm GPU workers for one model profile; CompositionJobs that "
        "name the pool run on its workers without a cold start.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": POOL_CRD_NAME,
            "labels": {"app.kubernetes.io/part-of": "nextunicorn-compose"},
        },
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": pools.KIND,
                "listKind": f"{pools.KIND}List",
                "plural": pools.PLURAL,
                "singular": pools.SINGULAR,
                "shortNames": list(pools.SHORT_NAMES),
                "categories": list(models.CATEGORIES),
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": [dict(c) for c in POOL_PRINTER_COLUMNS],
                    "schema": {"openAPIV3Schema": schema},
                },
            ],
        },
    }


def build_schema() -> dict[str, Any]:
    """The structural openAPIV3Schema of one CompositionJob object."""
    spec = structural_schema(
        models.CompositionJobSpec.model_json_schema(by_alias=True, mode="validation"),
        object_defaults=True,
    )
    status = structural_schema(
        models.CompositionJobStatus.model_json_schema(by_alias=True, mode="validation"),
        object_defaults=False,
    )
    status["description"] = "Observed state, written by the operator only (status subresource)."
    return {
        "type": "object",
        "description": "A request to compose one photorealistic image of a person wearing the "
        "given clothing in the given place; the result is stored in S3.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def structural_schema(json_schema: Mapping[str, Any], *, object_defaults: bool) -> dict[str, Any]:
    """Translate one pydantic JSON schema (with its ``$defs``) into a structural schema.

    With ``object_defaults``, an optional object property whose own properties are all optional
    gets ``default: {}``, so that the API server fills in the nested defaults even when the
    property is left out (its defaulting descends into a default it has just applied). The spec
    wants this: CEL rules such as the deadline order then always see both fields, and the
    immutability rules always have an old value to compare with.
    """
    defs = json_schema.get("$defs", {})
    return _convert(json_schema, defs, path="", object_defaults=object_defaults, seen=())


def _convert(
    node: Mapping[str, Any],
    defs: Mapping[str, Any],
    *,
    path: str,
    object_defaults: bool,
    seen: tuple[str, ...],
) -> dict[str, Any]:
    where = path or "<root>"
    node, seen = _resolve(node, defs, where=where, seen=seen)
    result: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYWORDS:
            continue
        if key == "default":
            if value is not None:
                result["default"] = copy.deepcopy(value)
        elif key == "const":
            result["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            result[bound] = value
            result[key] = True
        elif key == "description":
            result["description"] = _clean_description(value)
        elif key == "required":
            result["required"] = list(value)
        elif key == "properties":
            result["properties"] = {
                name: _convert(
                    prop,
                    defs,
                    path=f"{path}.{name}",
                    object_defaults=object_defaults,
                    seen=seen,
                )
                for name, prop in value.items()
            }
        elif key == "items":
            result["items"] = _convert(
                value, defs, path=f"{path}[]", object_defaults=object_defaults, seen=seen
            )
        elif key == "additionalProperties":
            if value is False or value is True:
                # false: the API server prunes unknown fields anyway (and refuses the keyword
                # beside properties); true: meaningless without preserve-unknown-fields.
                continue
            if "properties" in node:
                raise CrdGenerationError(f"{where}: additionalProperties beside properties")
            result["additionalProperties"] = _convert(
                value, defs, path=f"{path}{{}}", object_defaults=object_defaults, seen=seen
            )
        elif key in _KEPT_KEYWORDS:
            result[key] = copy.deepcopy(value)
        else:
            raise CrdGenerationError(f"{where}: JSON Schema keyword {key!r} has no CRD equivalent")
    if result.get("nullable") and "enum" in result:
        # The API server checks a null against the enum (and fails) even when nullable is set;
        # without nullable a null is pruned instead, which means the same as leaving it out.
        del result["nullable"]
    if "type" not in result and not result.get("x-kubernetes-int-or-string"):
        if "enum" in result and all(isinstance(item, str) for item in result["enum"]):
            result["type"] = "string"
        else:
            raise CrdGenerationError(f"{where}: schema has no type")
    if object_defaults and result["type"] == "object":
        for name, prop in result.get("properties", {}).items():
            if (
                prop["type"] == "object"
                and "default" not in prop
                and name not in result.get("required", ())
                and not prop.get("required")
            ):
                prop["default"] = {}
    return result


def _resolve(
    node: Mapping[str, Any], defs: Mapping[str, Any], *, where: str, seen: tuple[str, ...]
) -> tuple[Mapping[str, Any], tuple[str, ...]]:
    """Inline ``$ref``, single-branch ``allOf`` and ``anyOf [X, null]``; keep sibling keywords.

    Returns the inlined node and the definitions entered on the way (to refuse recursion)."""
    if "$ref" in node:
        ref = node["$ref"]
        name = ref.removeprefix("#/$defs/")
        if name == ref or name not in defs:
            raise CrdGenerationError(f"{where}: unresolvable reference {ref!r}")
        if name in seen:
            raise CrdGenerationError(f"{where}: recursive reference {ref!r} cannot be inlined")
        target, seen = _resolve(defs[name], defs, where=where, seen=(*seen, name))
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        return _merge(target, siblings), seen
    for combinator in ("allOf", "anyOf", "oneOf"):
        if combinator not in node:
            continue
        branches = list(node[combinator])
        non_null = [branch for branch in branches if branch.get("type") != "null"]
        nullable = len(non_null) < len(branches)
        if len(non_null) != 1 or (combinator == "allOf" and nullable):
            raise CrdGenerationError(
                f"{where}: {combinator} with {len(non_null)} non-null branches is not structural"
            )
        target, seen = _resolve(non_null[0], defs, where=where, seen=seen)
        siblings = {key: value for key, value in node.items() if key != combinator}
        if nullable:
            siblings["nullable"] = True
        return _merge(target, siblings), seen
    return node, seen


def _merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if key == "x-kubernetes-validations" and key in merged:
            merged[key] = [*merged[key], *value]
        else:
            merged[key] = value
    return merged


def _clean_description(text: str) -> str:
    """Docstrings become one paragraph per blank-line-separated block, no hard wraps."""
    paragraphs = [" ".join(block.split()) for block in text.strip().split("\n\n")]
    return "\n\n".join(paragraph for paragraph in paragraphs if paragraph)
