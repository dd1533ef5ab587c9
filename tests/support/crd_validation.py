"""Validates CompositionJob objects against the generated CRD the way the API server would.

No real API server runs in the tests, and the Kubernetes emulator admits anything. This module
stands in for the API server's admission of a CompositionJob: it reads the committed CRD
(``crds/compositionjobs.compose.nextunicorn.dev.yaml``, the file a cluster would install) and
does the steps below. :func:`validate_composition_pool` does the same for a CompositionPool
(``crds/compositionpools.compose.nextunicorn.dev.yaml``), and :func:`validate_custom_object` for
an object of any CRD file (the chart's KEDA ScaledObjects against KEDA's published CRD).


1. refuses unknown fields (the server prunes them; ``kubectl --validate=strict`` refuses them),
   and prunes nulls of non-nullable fields, as the server does;
2. applies the schema's defaults (structural defaulting, descending into applied defaults);
3. validates with ``jsonschema`` against the OpenAPI v3 subset (nullable, formats, RE2 patterns,
   enums, ranges, multipleOf, list and string sizes, required) and checks map-list keys;
4. evaluates every ``x-kubernetes-validations`` CEL rule with cel-python, transition rules (those
   using ``oldSelf``) only on update and only where the old object has the same node.

Messages name the field the way the API server does, for example
``spec.params.steps: Invalid value: 0: spec.params.steps in body should be greater than or equal
to 1`` and ``spec.inputs: Invalid value: "object": spec.inputs is immutable``.

Used by the CRD tests (``tests/crd``) and by the chart and example checks (manifests/examples).
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
import pathlib
import re
from collections.abc import Iterator, Mapping
from typing import Any

import celpy
import jsonschema
import yaml
from celpy import adapter, celtypes, evaluation

from compose_api import crdgen, models, pools

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / f"{crdgen.CRD_NAME}.yaml"
POOL_CRD_PATH = ROOT / "crds" / f"{crdgen.POOL_CRD_NAME}.yaml"

_NOT_CHECKED = (
    'Invalid value: "null": some validation rules were not checked because the object was '
    "invalid; correct the existing errors to complete validation"
)
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DATE_TIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:?\d{2})?$"
)


@functools.cache
def _load_crd(path: pathlib.Path) -> dict[str, Any]:
    crd: dict[str, Any] = next(
        doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc
    )
    return crd


@functools.cache
def load_schema(path: pathlib.Path = CRD_PATH) -> dict[str, Any]:
    """The openAPIV3Schema of the CRD's storage version, read from the committed file."""
    crd = _load_crd(path)
    for version in crd["spec"]["versions"]:
        if version.get("storage"):
            schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
            return schema
    raise ValueError(f"{path}: no storage version")


def _identity_of(path: pathlib.Path) -> tuple[str, str]:
    """(apiVersion of the storage version, kind) of a CRD file."""
    spec = _load_crd(path)["spec"]
    version = next(v["name"] for v in spec["versions"] if v.get("storage"))
    return f"{spec['group']}/{version}", spec["names"]["kind"]


def validate_composition_job(
    obj: Mapping[str, Any],
    old: Mapping[str, Any] | None = None,
    *,
    schema: Mapping[str, Any] | None = None,
) -> list[str]:
    """Every reason the API server would refuse ``obj`` (a create, or an update of ``old``).

    An empty list means the object is accepted.
    """
    schema = load_schema() if schema is None else schema
    return _validate(obj, old, schema, api_version=models.API_VERSION, kind=models.KIND)


def validate_composition_pool(
    obj: Mapping[str, Any], old: Mapping[str, Any] | None = None
) -> list[str]:
    """:func:`validate_composition_job` for a CompositionPool, against its generated CRD."""
    schema = load_schema(POOL_CRD_PATH)
    return _validate(obj, old, schema, api_version=models.API_VERSION, kind=pools.KIND)


def validate_custom_object(
    obj: Mapping[str, Any], crd_path: pathlib.Path, old: Mapping[str, Any] | None = None
) -> list[str]:
    """:func:`validate_composition_job` for an object of the CRD in ``crd_path`` (any group)."""
    api_version, kind = _identity_of(crd_path)
    return _validate(obj, old, load_schema(crd_path), api_version=api_version, kind=kind)


def _validate(
    obj: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    schema: Mapping[str, Any],
    *,
    api_version: str,
    kind: str,
) -> list[str]:
    errors = _check_identity(obj, api_version=api_version, kind=kind)
    new, unknown = prune(obj, schema)
    errors += [f'unknown field "{path}"' for path in unknown]
    new = apply_defaults(new, schema)
    schema_errors, blocking = _schema_errors(new, schema)
    errors += schema_errors
    errors += _list_map_errors(new, schema, "")
    if blocking:
        errors.append(_NOT_CHECKED)
    else:
        old_defaulted = None
        if old is not None:
            old_defaulted = apply_defaults(prune(old, schema)[0], schema)
        errors += _cel_errors(new, old_defaulted, schema, "")
    return errors


def default_object(obj: Mapping[str, Any], schema: Mapping[str, Any] | None = None) -> Any:
    """``obj`` as the API server stores it: unknown fields and stray nulls pruned, defaulted."""
    schema = load_schema() if schema is None else schema
    return apply_defaults(prune(obj, schema)[0], schema)


# ---------------------------------------------------------------------------------------------
# Pruning and defaulting


def prune(value: Any, schema: Mapping[str, Any], path: str = "") -> tuple[Any, list[str]]:
    """Drop fields the schema does not declare (returning their paths) and nulls of non-nullable
    fields that have no default (the API server drops those before validation)."""
    unknown: list[str] = []
    if isinstance(value, dict) and schema.get("type") == "object":
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return copy.deepcopy(value), unknown
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        if properties is None and not isinstance(additional, Mapping):
            return copy.deepcopy(value), unknown  # e.g. metadata: checked by the server itself
        result = {}
        for key, item in value.items():
            child_path = f"{path}.{key}" if path else key
            child = properties.get(key) if properties is not None else additional
            if child is None:
                unknown.append(child_path)
                continue
            if item is None and not child.get("nullable") and "default" not in child:
                continue
            result[key], nested = prune(item, child, child_path)
            unknown += nested
        return result, unknown
    if isinstance(value, list) and schema.get("type") == "array" and "items" in schema:
        items = []
        for index, item in enumerate(value):
            pruned, nested = prune(item, schema["items"], f"{path}[{index}]")
            items.append(pruned)
            unknown += nested
        return items, unknown
    return copy.deepcopy(value), unknown


def apply_defaults(value: Any, schema: Mapping[str, Any]) -> Any:
    """Structural defaulting: a missing (or non-nullable null) property with a default gets a
    copy of it, and defaulting then descends into every property, applied defaults included."""
    value = copy.deepcopy(value)
    _default_in_place(value, schema)
    return value


def _default_in_place(value: Any, schema: Mapping[str, Any]) -> None:
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key, child in properties.items():
            if "default" not in child:
                continue
            if key not in value or (value[key] is None and not child.get("nullable")):
                value[key] = copy.deepcopy(child["default"])
        for key, item in value.items():
            child = properties.get(key)
            if child is None and isinstance(schema.get("additionalProperties"), Mapping):
                child = schema["additionalProperties"]
            if child is not None:
                _default_in_place(item, child)
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _default_in_place(item, schema["items"])


# ---------------------------------------------------------------------------------------------
# OpenAPI v3 validation through jsonschema


def _re2_to_python(pattern: str) -> str:
    """Translate an RE2 (Go) pattern into Python ``re`` with the same meaning for the constructs
    CRDs use: ``$`` matches only at the very end, ``\\s``/``\\d``/``\\w`` are ASCII-only."""
    classes = {"s": "\\t\\n\\f\\r ", "d": "0-9", "w": "0-9A-Za-z_"}
    out: list[str] = []
    in_class = False
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            escaped = pattern[index + 1]
            if escaped.lower() in classes:
                members = classes[escaped.lower()]
                if in_class and escaped.islower():
                    out.append(members)
                elif escaped.islower():
                    out.append(f"[{members}]")
                elif not in_class:
                    out.append(f"[^{members}]")
                else:
                    raise ValueError(f"pattern {pattern!r}: negated class inside a class")
            else:
                out.append(pattern[index : index + 2])
            index += 2
            continue
        if char == "[" and not in_class:
            in_class = True
            out.append(char)
            if pattern[index + 1 : index + 2] == "^":
                out.append("^")
                index += 1
            if pattern[index + 1 : index + 2] == "]":
                out.append("\\]")
                index += 1
        elif char == "]" and in_class:
            in_class = False
            out.append(char)
        elif char == "$" and not in_class:
            out.append("\\Z")
        else:
            out.append(char)
        index += 1
    return "".join(out)


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(_re2_to_python(pattern))


def _pattern(
    validator: jsonschema.protocols.Validator, pattern: str, instance: Any, schema: Any
) -> Iterator[jsonschema.ValidationError]:
    if isinstance(instance, str) and not _compiled(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def _is_date_time(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    if not _DATE_TIME.match(instance):
        return False
    try:
        datetime.datetime.fromisoformat(instance.replace("z", "Z").replace(" ", "T"))
    except ValueError:
        return False
    return True


_FORMATS = jsonschema.FormatChecker(formats=())
_FORMATS.checks("date-time")(_is_date_time)
_Validator = jsonschema.validators.extend(jsonschema.Draft4Validator, {"pattern": _pattern})


def _to_json_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The structural schema as Draft 4 JSON Schema: ``nullable`` becomes a type union, and
    Kubernetes-only keywords are dropped (handled separately)."""
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "default", "description"):
            continue
        if key == "properties":
            result[key] = {name: _to_json_schema(child) for name, child in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, Mapping):
            result[key] = _to_json_schema(value)
        else:
            result[key] = value
    if schema.get("nullable") and "type" in result:
        result["type"] = [result["type"], "null"]
    return result


@functools.cache
def _validator_for(schema_json: str) -> jsonschema.protocols.Validator:
    validator: jsonschema.protocols.Validator = _Validator(
        _to_json_schema(json.loads(schema_json)), format_checker=_FORMATS
    )
    return validator


def _schema_errors(value: Any, schema: Mapping[str, Any]) -> tuple[list[str], bool]:
    """Messages in the API server's words, and whether any of them blocks the CEL rules."""
    validator = _validator_for(json.dumps(schema, sort_keys=True))
    messages: list[str] = []
    blocking = False
    for error in sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.path))):
        path = _path(error.absolute_path)
        kind = error.validator
        bound = error.validator_value
        instance = error.instance
        if kind == "required":
            present = instance if isinstance(instance, dict) else {}
            for name in bound:
                if name not in present:
                    messages.append(f"{_join(path, name)}: Required value")
            continue
        if kind == "type":
            blocking = True
            actual = _type_name(instance)
            expected = bound[0] if isinstance(bound, list) else bound
            messages.append(
                f'{path}: Invalid value: "{actual}": {path} in body must be of type '
                f'{expected}: "{actual}"'
            )
        elif kind == "enum":
            blocking = True
            supported = ", ".join(json.dumps(item) for item in bound)
            messages.append(
                f"{path}: Unsupported value: {_show(instance)}: supported values: {supported}"
            )
        elif kind == "format":
            messages.append(
                f"{path}: Invalid value: {_show(instance)}: {path} in body must be of type "
                f"{bound}: {_show(instance)}"
            )
        elif kind == "maxLength":
            messages.append(f"{path}: Too long: may not be more than {bound} bytes")
        elif kind == "maxItems":
            messages.append(f"{path}: Too many: {len(instance)}: must have at most {bound} items")
        else:
            detail, shown = _detail(kind, bound, error.schema, instance)
            messages.append(f"{path}: Invalid value: {shown}: {path} in body {detail}")
    return messages, blocking


def _detail(kind: Any, bound: Any, schema: Any, instance: Any) -> tuple[str, str]:
    if kind == "minimum":
        exclusive = schema.get("exclusiveMinimum") is True
        word = "greater than" if exclusive else "greater than or equal to"
        return f"should be {word} {_number(bound)}", _show(instance)
    if kind == "maximum":
        exclusive = schema.get("exclusiveMaximum") is True
        word = "less than" if exclusive else "less than or equal to"
        return f"should be {word} {_number(bound)}", _show(instance)
    if kind == "multipleOf":
        return f"should be a multiple of {_number(bound)}", _show(instance)
    if kind == "pattern":
        return f"should match '{bound}'", _show(instance)
    if kind == "minLength":
        return f"should be at least {bound} chars long", _show(instance)
    if kind == "minItems":
        return f"should have at least {bound} items", str(len(instance))
    return f"fails {kind}: {bound}", _show(instance)


def _list_map_errors(value: Any, schema: Mapping[str, Any], path: str) -> list[str]:
    """``x-kubernetes-list-type: map`` lists must not repeat a key."""
    errors: list[str] = []
    if isinstance(value, dict):
        for key, child in schema.get("properties", {}).items():
            if key in value:
                errors += _list_map_errors(value[key], child, _join(path, key))
    elif isinstance(value, list) and "items" in schema:
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen: set[str] = set()
        for index, item in enumerate(value):
            item_path = f"{path}[{index}]"
            if schema.get("x-kubernetes-list-type") == "map" and isinstance(item, dict):
                identity = {key: item.get(key) for key in keys}
                marker = json.dumps(identity, sort_keys=True)
                if marker in seen:
                    errors.append(f"{item_path}: Duplicate value: {marker}")
                seen.add(marker)
            errors += _list_map_errors(item, schema["items"], item_path)
    return errors


# ---------------------------------------------------------------------------------------------
# CEL rules


_ENV = celpy.Environment()
_OLD_SELF = re.compile(r"\boldSelf\b")


@functools.cache
def _program(rule: str) -> celpy.Runner:
    return _ENV.program(_ENV.compile(rule))


def _cel_errors(value: Any, old: Any, schema: Mapping[str, Any], path: str) -> list[str]:
    errors: list[str] = []
    if value is None:
        return errors
    for rule in schema.get("x-kubernetes-validations", []):
        errors += _evaluate(rule, value, old, schema, path)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key, child in properties.items():
            if key in value:
                old_child = old.get(key) if isinstance(old, dict) else None
                errors += _cel_errors(value[key], old_child, child, _join(path, key))
    elif isinstance(value, list) and "items" in schema:
        old_items = _correlate(value, old, schema)
        for index, item in enumerate(value):
            errors += _cel_errors(item, old_items[index], schema["items"], f"{path}[{index}]")
    return errors


def _correlate(value: list[Any], old: Any, schema: Mapping[str, Any]) -> list[Any]:
    """Old items matched to new ones: by key for map lists; atomic lists have no correlation."""
    if schema.get("x-kubernetes-list-type") != "map" or not isinstance(old, list):
        return [None] * len(value)
    keys = schema.get("x-kubernetes-list-map-keys", [])

    def identity(item: Any) -> str:
        return json.dumps({key: item.get(key) for key in keys} if isinstance(item, dict) else None)

    by_key = {identity(item): item for item in old}
    return [by_key.get(identity(item)) for item in value]


def _evaluate(
    rule: Mapping[str, Any], value: Any, old: Any, schema: Mapping[str, Any], path: str
) -> list[str]:
    expression = rule["rule"]
    transition = bool(_OLD_SELF.search(expression))
    if transition and old is None:
        return []
    activation: dict[str, Any] = {"self": to_cel(value, schema)}
    if transition:
        activation["oldSelf"] = to_cel(old, schema)
    field = path
    if rule.get("fieldPath"):
        field = path + rule["fieldPath"]
    type_name = schema.get("type", "object")
    try:
        outcome = _program(expression).evaluate(activation)
    except evaluation.CELEvalError as error:
        return [f'{field}: Invalid value: "{type_name}": rule evaluation error: {error.args[0]}']
    if isinstance(outcome, evaluation.CELEvalError):
        return [f'{field}: Invalid value: "{type_name}": rule evaluation error: {outcome.args[0]}']
    if outcome:
        return []
    message = rule.get("message") or f"failed rule: {expression}"
    if rule.get("messageExpression"):
        message = str(_program(rule["messageExpression"]).evaluate(activation))
    reason = rule.get("reason", "FieldValueInvalid")
    if reason == "FieldValueForbidden":
        return [f"{field}: Forbidden: {message}"]
    if reason == "FieldValueRequired":
        return [f"{field}: Required value: {message}"]
    if reason == "FieldValueDuplicate":
        return [f'{field}: Duplicate value: "{type_name}": {message}']
    return [f'{field}: Invalid value: "{type_name}": {message}']


def to_cel(value: Any, schema: Mapping[str, Any]) -> Any:
    """A JSON value as the CEL type the API server gives it: ``number`` fields are doubles even
    when written as integers, objects are maps of their declared fields."""
    if value is None:
        return None
    kind = schema.get("type")
    if kind == "object" and isinstance(value, dict):
        properties = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        return celtypes.MapType(
            {
                celtypes.StringType(key): to_cel(
                    item, properties.get(key, additional if isinstance(additional, Mapping) else {})
                )
                for key, item in value.items()
            }
        )
    if kind == "array" and isinstance(value, list):
        return celtypes.ListType([to_cel(item, schema.get("items", {})) for item in value])
    if kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return celtypes.DoubleType(float(value))
    return adapter.json_to_cel(value)


# ---------------------------------------------------------------------------------------------
# The parts of the object the API server checks outside the schema


def _check_identity(obj: Mapping[str, Any], *, api_version: str, kind: str) -> list[str]:
    errors = []
    if obj.get("apiVersion") != api_version:
        errors.append(
            f'apiVersion: Invalid value: {_show(obj.get("apiVersion"))}: must be "{api_version}"'
        )
    if obj.get("kind") != kind:
        errors.append(f'kind: Invalid value: {_show(obj.get("kind"))}: must be "{kind}"')
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return [*errors, "metadata: Required value"]
    name = metadata.get("name")
    if not name and not metadata.get("generateName"):
        errors.append("metadata.name: Required value: name or generateName is required")
    elif name and (not isinstance(name, str) or len(name) > 253 or not _DNS_SUBDOMAIN.match(name)):
        errors.append(
            f"metadata.name: Invalid value: {_show(name)}: a lowercase RFC 1123 subdomain must "
            "consist of lower case alphanumeric characters, '-' or '.', and must start and end "
            "with an alphanumeric character"
        )
    return errors


# ---------------------------------------------------------------------------------------------
# Formatting


def _path(parts: Any) -> str:
    path = ""
    for part in parts:
        path = f"{path}[{part}]" if isinstance(part, int) else _join(path, str(part))
    return path


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    return json.dumps(value)
