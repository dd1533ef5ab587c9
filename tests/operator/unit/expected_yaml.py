"""Compare built objects with the expected YAML files kept in ``expected/`` beside the tests.

``COMPOSE_UPDATE_EXPECTED=1`` rewrites the files from the current output (then review the diff);
otherwise a missing file or any difference fails the test with a unified diff.
"""

from __future__ import annotations

import difflib
import os
import pathlib
from typing import Any

import yaml

EXPECTED = pathlib.Path(__file__).parent / "expected"


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_NoAliases, sort_keys=True, default_flow_style=False, width=100)


def check(name: str, actual: Any) -> None:
    path = EXPECTED / f"{name}.yaml"
    text = dump(actual)
    if os.environ.get("COMPOSE_UPDATE_EXPECTED") == "1":
        path.write_text(text)
        return
    if not path.exists():
        raise AssertionError(f"{path} is missing; run with COMPOSE_UPDATE_EXPECTED=1 and review")
    expected = path.read_text()
    if yaml.safe_load(expected) != yaml.safe_load(text):
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=str(path),
                tofile="actual",
            )
        )
        raise AssertionError(f"{name} differs from the expected YAML:\n{diff}")
