"""The two validation layers cannot drift: for generated specs, good and bad, what the pydantic
models accept (the gateway's view) the generated CRD admits (the API server's view), what the
CRD refuses the models refuse, and what the API server stores from an admitted spec validates
into the same model, defaults included. The one tolerated gap: the server replaces a null by
the field's default (or prunes it) where the models, given the raw null, refuse it.

Specs start valid and get up to three fields replaced by values on either side of each rule
(types, ranges, patterns with whitespace and control characters, enums, list sizes, CEL rules).
The models are used in strict JSON mode, the way a body from the API arrives: lax mode would
turn ``"30"`` into ``30``, which the API server refuses.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from compose_api import models
from tests.support.crd_validation import default_object, validate_composition_job

_MISSING = object()

# Characters that separate the regular-expression engines (RE2 for the API server, Rust regex for
# pydantic) and the URI rules: whitespace of every kind, separators, non-ASCII letters.
_TRICKY = "\t\n\v\f\r \x00\x7f\x85\xa0\u2003\u2028/.?#$%é"
_uri_text = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(_TRICKY), max_size=12)

_good_uris = st.one_of(
    st.sampled_from(["s3://inputs-bucket/person.jpg", "https://cdn.example.com/a.png?x=1"]),
    st.from_regex(r"\As3://[a-z0-9][a-z0-9.\-]{1,8}[a-z0-9]/[!-~é]{1,10}\Z"),
    st.from_regex(r"\Ahttps://[a-z0-9][!-~é]{0,12}\Z"),
)
_any_uris = st.one_of(
    _good_uris,
    st.sampled_from(
        [
            "http://example.com/a.jpg",
            "file:///etc/passwd",
            "s3://UPPER/a.jpg",
            "s3://bucket-only",
            "s3://ab/a.jpg",
            "https://",
            "https://.example.com/a.jpg",
            "https://" + "a" * 2041,
            "https://" + "a" * 2040,
            "",
        ]
    ),
    st.builds(lambda tail: "s3://inputs-bucket/" + tail, _uri_text),
    st.builds(lambda tail: "https://" + tail, _uri_text),
    st.text(max_size=5),
    st.integers(),
    st.none(),
)
_good_names = st.from_regex(r"\A[a-z0-9]([a-z0-9\-]{0,12}[a-z0-9])?\Z")
_any_names = st.one_of(
    _good_names,
    st.from_regex(r"\A[a-z0-9][a-z0-9.\-]{0,12}[a-z0-9]\Z"),
    st.text(alphabet="aZ09-._ \n", max_size=70),
    st.just("a" * 64),
    st.just("a" * 63),
    st.none(),
)
_any_strength = st.one_of(
    st.floats(min_value=-0.5, max_value=2, allow_nan=False), st.integers(-1, 2), st.just("1")
)
_good_strength = st.floats(min_value=0, max_value=1.5, allow_nan=False)


def _item(uri: Any, category: Any) -> dict[str, Any]:
    item = {"uri": uri}
    if category is not _MISSING:
        item["category"] = category
    return item


_good_clothing = st.lists(
    st.builds(
        _item,
        _good_uris,
        st.sampled_from(
            ["upper", "lower", "outerwear", "shoes", "accessory", None, _MISSING]  # no dress
        ),
    ),
    min_size=1,
    max_size=8,
)
_any_clothing = st.one_of(
    st.lists(
        st.builds(
            _item,
            _any_uris,
            st.sampled_from([*models.ClothingCategory, "hat", "", "Upper", 3, None, _MISSING]),
        ),
        min_size=0,
        max_size=9,
    ),
    st.just({"uri": "s3://inputs-bucket/a.jpg"}),
)

# (path, valid values, any values): every spec field, with values on both sides of each rule.
FIELDS: list[tuple[tuple[str, ...], st.SearchStrategy[Any], st.SearchStrategy[Any]]] = [
    (("inputs", "person", "uri"), _good_uris, _any_uris),
    (("inputs", "clothing"), _good_clothing, _any_clothing),
    (("inputs", "place", "uri"), _good_uris, _any_uris),
    (
        ("output", "bucket"),
        st.one_of(_good_names.filter(lambda n: len(n) >= 3), st.none()),
        _any_names,
    ),
    (
        ("output", "prefix"),
        st.from_regex(r"\A([a-z0-9_.()\-]+/){0,2}[a-z0-9]*\Z"),
        st.one_of(st.text(max_size=6), st.just("a/" * 256), st.just("a/" * 257)),
    ),
    (
        ("output", "format"),
        st.sampled_from(["png", "jpeg", "webp"]),
        st.sampled_from(["gif", "PNG", 1, None]),
    ),
    (
        ("params", "prompt"),
        st.text(max_size=10),
        st.one_of(st.just("p" * 2000), st.just("p" * 2001), st.integers()),
    ),
    (("params", "negativePrompt"), st.text(max_size=10), st.one_of(st.just(None), st.just([]))),
    (
        ("params", "seed"),
        st.one_of(st.integers(0, 2**32 - 1), st.none()),
        st.one_of(st.integers(-2, 1), st.integers(2**32 - 2, 2**32 + 2), st.just("7")),
    ),
    (
        ("params", "steps"),
        st.integers(1, 100),
        st.one_of(st.integers(-1, 102), st.just("30"), st.just(30.5), st.booleans()),
    ),
    (
        ("params", "guidance"),
        st.floats(min_value=0, max_value=20, allow_nan=False),
        st.one_of(st.floats(min_value=-1, max_value=21, allow_nan=False), st.integers(-1, 21)),
    ),
    (
        ("params", "width"),
        st.integers(4, 32).map(lambda n: n * 64),
        st.one_of(st.integers(128, 2200), st.integers(2, 34).map(lambda n: n * 64)),
    ),
    (
        ("params", "height"),
        st.integers(4, 32).map(lambda n: n * 64),
        st.integers(3, 33).map(lambda n: n * 64),
    ),
    (("params", "identityStrength"), _good_strength, _any_strength),
    (("params", "clothingStrength"), _good_strength, _any_strength),
    (("params", "placeStrength"), _good_strength, _any_strength),
    (("profile",), _good_names, st.one_of(_any_names, st.text(max_size=65))),
    (("execution", "backoffLimit"), st.integers(0, 10), st.integers(-1, 11)),
    (("execution", "startDeadlineSeconds"), st.integers(30, 1800), st.integers(0, 90000)),
    (("execution", "activeDeadlineSeconds"), st.integers(1800, 86400), st.integers(0, 90000)),
    (("execution", "priorityClassName"), _good_names, _any_names),
    (("execution", "priority"), st.integers(-1000, 1000), st.integers(-1001, 1001)),
    (("execution", "queueName"), _good_names, _any_names),
    (
        ("execution", "capacityType"),
        st.sampled_from(["spot", "on-demand", "any"]),
        st.sampled_from(["reserved", "Spot", None]),
    ),
    (("suspend",), st.booleans(), st.sampled_from(["yes", 0, None])),
    (
        ("ttlSecondsAfterFinished",),
        st.integers(0, models.MAX_TTL_SECONDS_AFTER_FINISHED),
        st.one_of(st.integers(-3, -1), st.just(models.MAX_TTL_SECONDS_AFTER_FINISHED + 1)),
    ),
    (("surprise",), st.nothing(), st.just(1)),
    (("params", "stpes"), st.nothing(), st.just(1)),
]
_REQUIRED = {("inputs", "person", "uri"), ("inputs", "clothing"), ("inputs", "place", "uri")}


def _set(spec: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = spec
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


@st.composite
def _specs(draw: st.DrawFn) -> dict[str, Any]:
    """Valid specs with 0 to 3 fields replaced by any value (valid or not), or left out."""
    spec: dict[str, Any] = {}
    wild = set(draw(st.lists(st.sampled_from(range(len(FIELDS))), max_size=3)))
    for index, (path, good, anything) in enumerate(FIELDS):
        if index in wild:
            if draw(st.integers(0, 4)) > 0:
                _set(spec, path, draw(anything))
        elif (path in _REQUIRED or draw(st.booleans())) and not good.is_empty:
            _set(spec, path, draw(good))
    return spec


def _wrap(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "metadata": {"name": "generated"},
        "spec": spec,
    }


def _pydantic_errors(spec: dict[str, Any]) -> str:
    try:
        models.CompositionJobSpec.model_validate_json(json.dumps(spec), strict=True)
    except pydantic.ValidationError as error:
        return models.describe_validation_error(error)
    return ""


_VALID = {
    "inputs": {
        "person": {"uri": "s3://inputs-bucket/person.jpg"},
        "clothing": [{"uri": "https://cdn.example.com/a.png", "category": "dress"}],
        "place": {"uri": "s3://inputs-bucket/place.jpg"},
    },
}


@settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(_specs())
@example(_VALID)
@example({**_VALID, "params": {"seed": None}, "output": {"bucket": None}})
@example({**_VALID, "execution": {"startDeadlineSeconds": 1801}})
@example({"inputs": {**_VALID["inputs"], "person": {"uri": "s3://inputs-bucket/a\xa0b.jpg"}}})
@example({"inputs": {**_VALID["inputs"], "person": {"uri": "s3://inputs-bucket/a.jpg\n"}}})
def test_crd_and_models_accept_the_same_specs(spec: dict[str, Any]) -> None:
    crd_errors = validate_composition_job(_wrap(spec))
    model_errors = _pydantic_errors(spec)
    if not model_errors:
        # What the models accept (the gateway), the API server admits.
        assert crd_errors == [], (crd_errors, spec)
        return
    if crd_errors:
        return  # both refuse
    # The API server admitted what the models refused as written. The only allowed reason: a
    # null the server prunes or replaces by the field's default. What it stores, the operator
    # must accept.
    assert _has_null(spec), (model_errors, spec)
    stored = default_object(_wrap(spec))["spec"]
    assert _pydantic_errors(stored) == "", (model_errors, stored)


def test_what_the_server_stores_has_the_models_defaults() -> None:
    """Defaults agree: the stored form of any accepted spec validates into the same model."""

    @settings(max_examples=100, deadline=None, database=None)
    @given(_specs())
    def check(spec: dict[str, Any]) -> None:
        if _pydantic_errors(spec):
            return
        stored = default_object(_wrap(spec))["spec"]
        expected = models.CompositionJobSpec.model_validate_json(json.dumps(spec), strict=True)
        assert models.CompositionJobSpec.model_validate(stored) == expected
        assert _without_nulls(stored) == expected.to_api()

    check()


def _has_null(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, dict):
        return any(_has_null(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_null(item) for item in value)
    return False


def _without_nulls(value: Any) -> Any:
    """``value`` without null-valued keys (``to_api`` leaves unset optionals out)."""
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value
