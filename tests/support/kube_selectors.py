"""Kubernetes label and field selectors, parsed and matched as the API server does.

The emulator (tests/support/kube_emulator.py) filters list and watch responses with these; the
test client and the benchmark never need them directly. Pure functions, no I/O.

Label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k`` (exists),
``!k`` (does not exist), joined by commas. As in Kubernetes, ``!=`` and ``notin`` also match
objects that lack the label. Field selectors: ``path=v``, ``path==v``, ``path!=v`` on dotted
paths (``metadata.name``, ``status.phase``, ``spec.nodeName``...), compared as strings.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping, Sequence
from typing import Any


class SelectorError(ValueError):
    """A selector that cannot be parsed; the message names the parameter and the bad term."""


class Op(enum.Enum):
    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    NOT_EXISTS = "!"


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    op: Op
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op is Op.EXISTS:
            return present
        if self.op is Op.NOT_EXISTS:
            return not present
        if self.op in (Op.EQUALS, Op.IN):
            return present and value in self.values
        return not present or value not in self.values  # NOT_EQUALS, NOT_IN


_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET_TERM = re.compile(rf"^\s*(?P<key>{_KEY})\s+(?P<op>in|notin)\s+\((?P<values>[^()]*)\)\s*$")
_EQ_TERM = re.compile(rf"^\s*(?P<key>{_KEY})\s*(?P<op>==|=|!=)\s*(?P<value>{_VALUE})\s*$")
_EXISTS_TERM = re.compile(rf"^\s*(?P<neg>!?)\s*(?P<key>{_KEY})\s*$")
_VALUE_RE = re.compile(rf"^{_VALUE}$")


def _split_terms(text: str) -> list[str]:
    """Split at commas that are not inside parentheses."""
    terms: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    terms.append("".join(current))
    return [term for term in terms if term.strip()]


def parse_label_selector(text: str | None) -> tuple[Requirement, ...]:
    """Parse a ``labelSelector`` query parameter; empty or None selects everything."""
    if not text or not text.strip():
        return ()
    requirements: list[Requirement] = []
    for term in _split_terms(text):
        if match := _SET_TERM.match(term):
            values = frozenset(v.strip() for v in match["values"].split(",") if v.strip())
            bad = [v for v in values if not _VALUE_RE.match(v)]
            if bad:
                raise SelectorError(f"labelSelector: invalid value {bad[0]!r} in {term.strip()!r}")
            op = Op.IN if match["op"] == "in" else Op.NOT_IN
            requirements.append(Requirement(match["key"], op, values))
        elif match := _EQ_TERM.match(term):
            op = Op.NOT_EQUALS if match["op"] == "!=" else Op.EQUALS
            requirements.append(Requirement(match["key"], op, frozenset({match["value"]})))
        elif match := _EXISTS_TERM.match(term):
            op = Op.NOT_EXISTS if match["neg"] else Op.EXISTS
            requirements.append(Requirement(match["key"], op))
        else:
            raise SelectorError(f"labelSelector: cannot parse the term {term.strip()!r}")
    return tuple(requirements)


@dataclasses.dataclass(frozen=True)
class FieldRequirement:
    path: tuple[str, ...]
    value: str
    negated: bool

    def matches(self, obj: Mapping[str, Any]) -> bool:
        current: Any = obj
        for part in self.path:
            current = current.get(part) if isinstance(current, Mapping) else None
        actual = "" if current is None else _as_text(current)
        return (actual == self.value) != self.negated


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_FIELD_TERM = re.compile(r"^\s*(?P<path>[A-Za-z][\w.]*)\s*(?P<op>==|=|!=)\s*(?P<value>[^,]*?)\s*$")


def parse_field_selector(text: str | None) -> tuple[FieldRequirement, ...]:
    """Parse a ``fieldSelector`` query parameter; empty or None selects everything."""
    if not text or not text.strip():
        return ()
    requirements: list[FieldRequirement] = []
    for term in text.split(","):
        if not term.strip():
            continue
        match = _FIELD_TERM.match(term)
        if match is None:
            raise SelectorError(f"fieldSelector: cannot parse the term {term.strip()!r}")
        path = tuple(match["path"].split("."))
        requirements.append(FieldRequirement(path, match["value"], match["op"] == "!="))
    return tuple(requirements)


@dataclasses.dataclass(frozen=True)
class Selector:
    """Both selectors of one request; ``matches`` is what list and watch apply per object."""

    labels: Sequence[Requirement] = ()
    fields: Sequence[FieldRequirement] = ()

    @classmethod
    def parse(cls, label_selector: str | None, field_selector: str | None) -> Selector:
        return cls(parse_label_selector(label_selector), parse_field_selector(field_selector))

    def matches(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(r.matches(labels) for r in self.labels) and all(
            f.matches(obj) for f in self.fields
        )
