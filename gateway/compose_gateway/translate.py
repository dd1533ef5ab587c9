"""The original ``POST /generate`` request, and its translation into a CompositionJob.

Pure: no I/O, no clock. The HTTP handler (``app``) parses the body into :class:`GenerateRequest`
(the original field names: ``personImage``, ``clothingImages``, ``placeImage`` plus optional
generation parameters and ``callbackUrl``), then calls :func:`build_job`, which builds the spec
through ``compose_api.models`` so the gateway refuses exactly what the CRD refuses. Every
validation problem, wherever it is found, comes back as a :class:`FieldError` naming the field as
the client spelled it (``clothingImages[1]``, ``steps``), never the CRD's path.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import ipaddress
import json
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import pydantic
from pydantic import alias_generators

from compose_api import models, netguard
from compose_gateway import naming

IMAGE_MESSAGE = "must be an https:// URL or an s3:// URI of a JPEG, PNG or WebP image"
CLOTHING_ITEM_MESSAGE = "must be an image URL string or an object {url, category}"

# The parameters a client may set, by their request name; each is a field of models.Params.
PARAM_FIELDS = (
    "prompt",
    "negativePrompt",
    "seed",
    "steps",
    "guidance",
    "width",
    "height",
    "identityStrength",
    "clothingStrength",
    "placeStrength",
)


@dataclasses.dataclass(frozen=True)
class FieldError:
    """One problem with the request, named by the client's field path."""

    field: str
    message: str


class RequestError(ValueError):
    """The request is invalid; ``errors`` name each field and why."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = tuple(errors)
        super().__init__(describe(self.errors))


def describe(errors: Sequence[FieldError]) -> str:
    return "; ".join(f"{error.field}: {error.message}" for error in errors)


class _Request(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(
        alias_generator=alias_generators.to_camel,
        populate_by_name=False,
        extra="forbid",
    )


class ClothingImage(_Request):
    """A garment photo with an optional category (where it is worn)."""

    url: models.ImageUri = pydantic.Field(description=IMAGE_MESSAGE)
    category: models.ClothingCategory | None = pydantic.Field(
        default=None, description="upper, lower, dress, outerwear, shoes or accessory."
    )


_CLOTHING_ITEM_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "maxLength": models.MAX_URI_LENGTH},
        {
            "type": "object",
            "properties": {
                "url": {"type": "string", "maxLength": models.MAX_URI_LENGTH},
                "category": {"type": "string", "enum": [c.value for c in models.ClothingCategory]},
            },
            "required": ["url"],
            "additionalProperties": False,
        },
    ],
}


def _param(name: str) -> Any:
    """The field ``models.Params.<name>`` (type bounds, description) with no default: unset in a
    request means the API's default."""
    field = copy.copy(models.Params.model_fields[name])
    field.default = None
    field.default_factory = None
    return field


class GenerateRequest(_Request):
    """The original request body, plus optional parameters. Unknown fields are refused.

    Image URLs and parameters have the API's own annotated types (``models.ImageUri``, the fields
    of ``models.Params``), so their problems are found here and named as the client sent them;
    what only the whole spec can tell (a dress with an upper garment, the s3 prefix) comes from
    :func:`build_job`."""

    person_image: models.ImageUri = pydantic.Field(
        description=f"The person photo; {IMAGE_MESSAGE}."
    )
    clothing_images: Annotated[
        list[ClothingImage],
        pydantic.WithJsonSchema(
            {
                "type": "array",
                "items": _CLOTHING_ITEM_SCHEMA,
                "minItems": 1,
                "maxItems": models.MAX_CLOTHING_ITEMS,
            }
        ),
    ] = pydantic.Field(
        description=f"1 to {models.MAX_CLOTHING_ITEMS} garment photos: URL strings or "
        "{url, category} objects.",
    )
    place_image: models.ImageUri = pydantic.Field(description=f"The place photo; {IMAGE_MESSAGE}.")
    # The generation parameters carry the API's own types and bounds (models.Params), so a bad
    # value is refused here, named as the client sent it, with the CRD's limits.
    prompt: str | None = _param("prompt")
    negative_prompt: str | None = _param("negative_prompt")
    seed: int | None = _param("seed")
    steps: int | None = _param("steps")
    guidance: float | None = _param("guidance")
    width: int | None = _param("width")
    height: int | None = _param("height")
    identity_strength: float | None = _param("identity_strength")
    clothing_strength: float | None = _param("clothing_strength")
    place_strength: float | None = _param("place_strength")
    format: Literal["png", "jpeg", "webp"] | None = pydantic.Field(
        default=None, description="png (default), jpeg or webp."
    )
    callback_url: str | None = pydantic.Field(
        default=None,
        max_length=models.MAX_URI_LENGTH,
        description="HTTPS URL that receives a signed POST with the result when the job ends.",
    )
    pool: str | None = pydantic.Field(
        default=None,
        max_length=63,
        pattern=models.DNS_LABEL_PATTERN,
        description="The pool of warm workers that runs the job (one the gateway offers); unset: "
        "the gateway's default pool, if any.",
    )
    reuse: bool | None = pydantic.Field(
        default=None,
        description="true (default): an earlier job that had the same input contents, "
        "parameters, seed and format answers at once with a copy of its result; false: always "
        "generate, and offer the result to no later job (spec.output.reuse).",
    )

    @pydantic.field_validator("clothing_images", mode="before")
    @classmethod
    def _strings_are_urls(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"url": item} if isinstance(item, str) else item for item in value]
        return value


@dataclasses.dataclass(frozen=True)
class JobTarget:
    """Where and how the gateway creates jobs (from its settings)."""

    namespace: str
    profile: str | None = None
    output_bucket: str | None = None
    output_prefix: str = ""
    # s3:// URIs in a request must start with this (the caller's uploads); None: refused.
    allowed_s3_prefix: str | None = None
    default_pool: str | None = None  # spec.execution.pool when the request names none
    pools: frozenset[str] = frozenset()  # the pools a request may name, besides the default

    def pool_for(self, asked: str | None) -> str | None:
        """The pool a job runs on; raises RequestError for a pool this gateway does not offer."""
        if asked is None:
            return self.default_pool
        offered = self.pools | ({self.default_pool} if self.default_pool else set())
        if asked not in offered:
            names = ", ".join(sorted(offered)) or "none"
            raise RequestError([FieldError("pool", f"{asked!r} is not offered here ({names})")])
        return asked


def parse_request(payload: Any) -> GenerateRequest:
    """Validate a decoded JSON body; RequestError names each bad field."""
    try:
        return GenerateRequest.model_validate(payload)
    except pydantic.ValidationError as error:
        raw = payload.get("clothingImages") if isinstance(payload, dict) else None
        raise RequestError(_field_errors(error, raw_clothing=raw, crd=False)) from None


CATEGORIES_FIELD = "clothingCategories"


def attach_categories(payload: dict[str, Any]) -> dict[str, Any]:
    """A multipart form's ``clothingCategories`` (one text field per garment, in the order of
    the ``clothingImages`` files; empty for none) merged into ``clothingImages`` as
    ``{url, category}`` objects; the payload unchanged without it. RequestError when a category
    is not one of the API's or the counts differ."""
    if CATEGORIES_FIELD not in payload:
        return payload
    merged = dict(payload)
    categories = merged.pop(CATEGORIES_FIELD)
    found = merged.get("clothingImages")
    images = found if isinstance(found, list) else []
    known = [c.value for c in models.ClothingCategory]
    errors = [
        FieldError(f"{CATEGORIES_FIELD}[{i}]", f"must be one of {', '.join(known)} (or empty)")
        for i, category in enumerate(categories)
        if category and category not in known
    ]
    if len(images) != len(categories):
        errors.append(
            FieldError(
                CATEGORIES_FIELD,
                f"gives {len(categories)} categories for {len(images)} clothingImages: send "
                "one per garment, in the same order (empty for none)",
            )
        )
    if errors:
        raise RequestError(errors)
    merged["clothingImages"] = [
        {"url": url, "category": category} if category else url
        for url, category in zip(images, categories, strict=True)
    ]
    return merged


def request_sha256(request: GenerateRequest, *, uploads: Sequence[str] = ()) -> str:
    """A digest of what the request asks for (and of uploaded file contents), for idempotency."""
    document = {
        "request": request.model_dump(mode="json", by_alias=True, exclude_none=True),
        "uploads": list(uploads),
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_callback_url(url: str, policy: netguard.Policy) -> str | None:
    """Why a callback URL is refused at request time, or None.

    Names are resolved only when the callback is sent (``callbacks``); here the scheme, the host
    and literal addresses are checked, so ``https://10.0.0.1/`` fails at once.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in policy.schemes:
        return "must be an https:// URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "has an invalid port"
    try:
        address = ipaddress.ip_address(parts.hostname.strip("[]"))
    except ValueError:
        return None
    reason = netguard.forbidden_reason(address, policy)
    return f"must not point to a {reason}" if reason else None


def build_job(
    request: GenerateRequest,
    *,
    name: str,
    owner: str,
    target: JobTarget,
    request_hash: str,
    idempotency_key: str | None = None,
    callback_policy: netguard.Policy | None = None,
    raw_clothing: Any = None,
    digests: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The CompositionJob to create for ``request``, as the API carries it.

    ``callback_policy`` None means callbacks are not enabled, so a ``callbackUrl`` is refused.
    ``digests`` (the SHA-256 of the files this request uploaded, by ``s3://`` URI) go into the
    inputs that name them (``sha256``). Raises RequestError naming each bad field in the
    request's own names.
    """
    errors = _check_uris(request, target)
    if request.callback_url is not None:
        if callback_policy is None:
            errors.append(FieldError("callbackUrl", "callbacks are not enabled on this gateway"))
        else:
            problem = check_callback_url(request.callback_url, callback_policy)
            if problem:
                errors.append(FieldError("callbackUrl", problem))
    try:
        target.pool_for(request.pool)
    except RequestError as error:
        errors.extend(error.errors)
    spec_document = _spec_document(request, target, digests or {})
    try:
        spec = models.CompositionJobSpec.model_validate(spec_document)
    except pydantic.ValidationError as error:
        errors.extend(_field_errors(error, raw_clothing=raw_clothing, crd=True))
        raise RequestError(_unique(errors)) from None
    if errors:
        raise RequestError(_unique(errors))

    labels = {
        naming.OWNER_LABEL: owner,
        naming.CREATED_BY_LABEL: naming.CREATED_BY,
        naming.OUTSTANDING_LABEL: "true",
    }
    annotations = {naming.REQUEST_HASH_ANNOTATION: request_hash}
    if idempotency_key is not None:
        annotations[naming.IDEMPOTENCY_ANNOTATION] = hashlib.sha256(
            idempotency_key.encode()
        ).hexdigest()
    if request.callback_url is not None:
        labels[naming.CALLBACK_LABEL] = naming.CALLBACK_PENDING
        annotations[naming.CALLBACK_URL_ANNOTATION] = request.callback_url
    return {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "metadata": {
            "name": name,
            "namespace": target.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": spec.to_api(),
    }


def _spec_document(
    request: GenerateRequest, target: JobTarget, digests: Mapping[str, str]
) -> dict[str, Any]:
    def image(uri: str) -> dict[str, Any]:
        digest = digests.get(uri)
        return {"uri": uri} if digest is None else {"uri": uri, "sha256": digest}

    clothing = []
    for item in request.clothing_images:
        entry = image(item.url)
        if item.category is not None:
            entry["category"] = item.category.value
        clothing.append(entry)
    given = request.model_dump(by_alias=True, exclude_none=True, mode="json")
    params = {key: given[key] for key in PARAM_FIELDS if key in given}
    output: dict[str, Any] = {}
    if request.format is not None:
        output["format"] = request.format
    if request.reuse is not None:
        output["reuse"] = request.reuse
    if target.output_bucket:
        output["bucket"] = target.output_bucket
    if target.output_prefix:
        output["prefix"] = target.output_prefix
    spec: dict[str, Any] = {
        "inputs": {
            "person": image(request.person_image),
            "clothing": clothing,
            "place": image(request.place_image),
        },
        "params": params,
        "output": output,
    }
    if target.profile:
        spec["profile"] = target.profile
    try:
        pool = target.pool_for(request.pool)
    except RequestError:
        pool = None  # named by build_job, with the request's other problems
    if pool:
        spec["execution"] = {"pool": pool}
    return spec


def _check_uris(request: GenerateRequest, target: JobTarget) -> list[FieldError]:
    """s3:// URIs may only point to the caller's own uploads (never to another bucket the
    inference pods can read, such as the model store), in a key without ``.``, ``..`` or empty
    segments, ``%`` or ``\\``, so that no reading of the key can leave the caller's prefix."""
    fields = [("personImage", request.person_image), ("placeImage", request.place_image)]
    fields += [(f"clothingImages[{i}]", c.url) for i, c in enumerate(request.clothing_images)]
    errors = []
    for field, uri in fields:
        if not uri.startswith("s3://"):
            continue
        problem = s3_key_problem(uri)
        if problem is not None:
            errors.append(FieldError(field, problem))
        elif target.allowed_s3_prefix is None or not uri.startswith(target.allowed_s3_prefix):
            errors.append(
                FieldError(field, "s3:// URIs may only name this key's uploads (upload the file)")
            )
    return errors


def s3_key_problem(uri: str) -> str | None:
    """Why an ``s3://bucket/key`` URI is refused whatever its prefix, or None."""
    key = uri.removeprefix("s3://").partition("/")[2]
    if "%" in key or "\\" in key:
        return "s3:// keys must not contain '%' or '\\'"
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        return "s3:// keys must not have empty, '.' or '..' segments"
    return None


def _field_errors(
    error: pydantic.ValidationError, *, raw_clothing: Any, crd: bool
) -> list[FieldError]:
    found = []
    for item in error.errors():
        loc = tuple(item["loc"])
        if not crd and _was_string(loc, raw_clothing):
            loc = loc[:2]  # a garment sent as a URL string: name the item, not its .url
        field = _crd_field(loc, raw_clothing) if crd else _request_field(loc)
        found.append(FieldError(field, _message(item, field)))
    return _unique(found)


def _was_string(loc: tuple[int | str, ...], raw_clothing: Any) -> bool:
    if len(loc) != 3 or loc[0] != "clothingImages" or loc[2] != "url":
        return False
    index = loc[1]
    return (
        isinstance(index, int)
        and isinstance(raw_clothing, list)
        and index < len(raw_clothing)
        and isinstance(raw_clothing[index], str)
    )


def _request_field(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "body"


def _crd_field(loc: tuple[int | str, ...], raw_clothing: Any) -> str:
    """Map a path in the CompositionJob spec back to the request's field name."""
    head = loc[:2]
    if head == ("inputs", "person"):
        return "personImage"
    if head == ("inputs", "place"):
        return "placeImage"
    if head == ("inputs", "clothing"):
        if len(loc) < 3 or not isinstance(loc[2], int):
            return "clothingImages"
        index = loc[2]
        base = f"clothingImages[{index}]"
        rest = loc[3:]
        if rest[:1] == ("category",):
            return f"{base}.category"
        was_string = (
            isinstance(raw_clothing, list)
            and index < len(raw_clothing)
            and isinstance(raw_clothing[index], str)
        )
        return base if was_string or not rest else f"{base}.url"
    if loc[:1] == ("params",) and len(loc) > 1:
        return str(loc[1])
    if loc[:2] == ("output", "format"):
        return "format"
    return "spec." + _request_field(loc)


def _message(item: Any, field: str) -> str:
    message = str(item["msg"]).removeprefix("Value error, ")
    kind = item.get("type")
    image_field = field in {"personImage", "placeImage"} or (
        field.startswith("clothingImages[") and not field.endswith(".category")
    )
    if kind == "string_pattern_mismatch" and image_field:
        return IMAGE_MESSAGE
    if kind in {"model_type", "model_attributes_type"} and field.startswith("clothingImages["):
        return CLOTHING_ITEM_MESSAGE
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field"
    return message


def _unique(errors: Sequence[FieldError]) -> list[FieldError]:
    seen: dict[tuple[str, str], FieldError] = {}
    for error in errors:
        seen.setdefault((error.field, error.message), error)
    return list(seen.values())
