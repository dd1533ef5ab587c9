"""The generation parameters (``models.Params``) as flat fields, and the profile-pin rule.

``models.Params`` is the one description of the parameters. This module derives from it what
the other entry points need, so none restates a field, a default or a bound:

- :func:`fields`: one :class:`ParamField` per parameter (Python name, camelCase wire name,
  ``--kebab-case`` flag, scalar type, default, bounds, description). The ``compose`` command
  generates its flags from it; an HTTP front door generates its optional form fields from it
  (``alias`` is the form field, ``kind`` the type to parse, ``default`` None means optional).
- :func:`build`: a validated ``Params`` from flat values (``{"steps": 4}`` or
  ``{"identityStrength": 0.5}``); errors name the field by ``root`` (``spec.params.steps: ...``).
- :func:`pin`: the one rule for a profile's ``options`` that fix parameters (a few-step profile
  fixes ``steps`` and ``guidance``, the smoke profile its tiny size): **the profile wins**,
  in pod mode and on the command line alike, and every value it changed is reported
  (:class:`Pinned`), so the runner records it in the termination message and the job status.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

import pydantic

from compose_api import models

# The parameters a profile's options may fix, and the rule each pinned value must follow.
PINNABLE = ("steps", "guidance", "width", "height")


@dataclasses.dataclass(frozen=True)
class ParamField:
    """One field of ``models.Params``, flat."""

    name: str  # Python name: identity_strength
    alias: str  # wire name: identityStrength
    flag: str  # command-line flag: --identity-strength
    kind: type  # int, float or str
    default: Any  # the API's default (None: chosen at run time, e.g. the seed)
    description: str
    minimum: float | None = None
    maximum: float | None = None
    multiple_of: int | None = None
    max_length: int | None = None


def _scalar(annotation: Any) -> type:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(options) != 1:
            raise TypeError(f"Params: unsupported annotation {annotation!r}")
        annotation = options[0]
    if annotation not in (int, float, str):
        raise TypeError(f"Params: unsupported annotation {annotation!r}")
    kind: type = annotation
    return kind


def fields() -> list[ParamField]:
    """Every field of ``models.Params``, in declaration order."""
    result = []
    for name, info in models.Params.model_fields.items():
        bounds: dict[str, Any] = {}
        for item in info.metadata:
            for attribute, key in (
                ("ge", "minimum"),
                ("le", "maximum"),
                ("multiple_of", "multiple_of"),
                ("max_length", "max_length"),
            ):
                value = getattr(item, attribute, None)
                if value is not None:
                    bounds[key] = value
        result.append(
            ParamField(
                name=name,
                alias=info.alias or name,
                flag="--" + name.replace("_", "-"),
                kind=_scalar(info.annotation),
                default=info.default,
                description=info.description or "",
                **bounds,
            )
        )
    return result


def build(values: Mapping[str, Any], *, root: str = "spec.params") -> models.Params:
    """A validated ``Params`` from flat values (Python or wire names; absent: the default).

    Raises ValueError naming each field at fault (``spec.params.steps: ...``).
    """
    try:
        return models.Params.model_validate(dict(values))
    except pydantic.ValidationError as error:
        raise ValueError(models.describe_validation_error(error, root=root)) from None


@dataclasses.dataclass(frozen=True)
class Pinned:
    """The parameters a job runs with, and what the profile changed: name -> (asked, used)."""

    params: models.Params
    changed: dict[str, tuple[Any, Any]]

    def describe(self, profile: str) -> str:
        """``profile smoke pins steps=2 (asked 30), width=64 (asked 1024)``, or ''."""
        if not self.changed:
            return ""
        parts = [f"{name}={used} (asked {asked})" for name, (asked, used) in self.changed.items()]
        return f"profile {profile} pins {', '.join(parts)}"


def pin(params: models.Params, options: Mapping[str, Any]) -> Pinned:
    """Apply a profile's pinned parameters (``options.steps``, ``guidance``, ``width``,
    ``height``): the profile wins over the job. Pinned values are the profile's configuration,
    checked here by their own rule (a positive integer; guidance a number >= 0), not by the
    job's bounds: the smoke profile pins 64x64, below what a job may ask.

    Raises ValueError naming ``profile.options.<name>``.
    """
    changes: dict[str, Any] = {}
    for name in PINNABLE:
        value = options.get(name)
        if value is None:
            continue
        if name == "guidance":
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ValueError(f"profile.options.guidance: expected a number >= 0, got {value!r}")
            value = float(value)
        elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"profile.options.{name}: expected a positive integer, got {value!r}")
        changes[name] = value
    changed = {
        name: (getattr(params, name), value)
        for name, value in changes.items()
        if getattr(params, name) != value
    }
    return Pinned(params=params.model_copy(update=changes), changed=changed)
