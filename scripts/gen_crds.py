"""Writes the CompositionJob CRD generated from the pydantic models, or checks it for drift.

    python scripts/gen_crds.py           # write crds/ and the chart's crds/ copy
    python scripts/gen_crds.py --check   # exit 1, naming each file that differs (CI runs this)

The CRD is built by ``compose_api.crdgen.build_crd``; the chart ships the same bytes in its
``crds/`` folder, so both files are written by this one command and never edited by hand.
"""

from __future__ import annotations

import argparse
import difflib
import pathlib
import sys

import yaml

from compose_api import crdgen

ROOT = pathlib.Path(__file__).resolve().parent.parent
FILE_NAME = f"{crdgen.CRD_NAME}.yaml"
TARGETS = (
    pathlib.Path("crds") / FILE_NAME,
    pathlib.Path("charts") / "nextunicorn-compose" / "crds" / FILE_NAME,
)
HEADER = (
    "# Generated from compose_api.models by `python scripts/gen_crds.py`; do not edit.\n"
    "# CI runs `python scripts/gen_crds.py --check` and fails when this file differs.\n"
)


def render() -> str:
    """The CRD file's exact text: the header, then the CRD as YAML with sorted keys."""
    body = yaml.safe_dump(
        crdgen.build_crd(), sort_keys=True, default_flow_style=False, width=100, allow_unicode=False
    )
    return HEADER + "---\n" + body


def check(root: pathlib.Path, expected: str) -> list[str]:
    """One line per target that is missing or differs from ``expected``, with a short diff."""
    problems = []
    for target in TARGETS:
        path = root / target
        if not path.is_file():
            problems.append(f"{target}: missing")
            continue
        actual = path.read_text(encoding="utf-8")
        if actual != expected:
            diff = difflib.unified_diff(
                actual.splitlines(),
                expected.splitlines(),
                fromfile=f"{target} (committed)",
                tofile=f"{target} (generated)",
                lineterm="",
                n=1,
            )
            problems.append(f"{target}: differs from the generated CRD\n" + "\n".join(diff))
    return problems


def write(root: pathlib.Path, text: str) -> list[pathlib.Path]:
    written = []
    for target in TARGETS:
        path = root / target
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file differs"
    )
    parser.add_argument("--root", type=pathlib.Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        problems = check(args.root, text)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("run: python scripts/gen_crds.py", file=sys.stderr)
            return 1
        print(f"CRDs up to date: {', '.join(str(target) for target in TARGETS)}")
        return 0
    written = write(args.root, text)
    for target in written:
        print(f"wrote {target}")
    if not written:
        print("CRDs already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
