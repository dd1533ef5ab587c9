"""Writes the CRDs generated from the pydantic models (CompositionJob, CompositionPool), or checks
them for drift.

    python scripts/gen_crds.py           # write crds/ and the chart's crds/ copy
    python scripts/gen_crds.py --check   # exit 1, naming each file that differs (CI runs this)

The CRDs are built by ``compose_api.crdgen.build_crd`` and ``build_pool_crd``; the chart ships the
same bytes in its ``crds/`` folder, so every file is written by this one command and never edited
by hand.
"""

from __future__ import annotations

import argparse
import difflib
import pathlib
import sys

import yaml

from compose_api import crdgen

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILDERS = {
    f"{crdgen.CRD_NAME}.yaml": crdgen.build_crd,
    f"{crdgen.POOL_CRD_NAME}.yaml": crdgen.build_pool_crd,
}
FOLDERS = (pathlib.Path("crds"), pathlib.Path("charts") / "nextunicorn-compose" / "crds")
TARGETS = tuple(folder / name for name in BUILDERS for folder in FOLDERS)
HEADER = (
    "# Generated from compose_api.models by `python scripts/gen_crds.py`; do not edit.\n"
    "# CI runs `python scripts/gen_crds.py --check` and fails when this file differs.\n"
)


def render(file_name: str = f"{crdgen.CRD_NAME}.yaml") -> str:
    """One CRD file's exact text: the header, then the CRD as YAML with sorted keys."""
    body = yaml.safe_dump(
        BUILDERS[file_name](), sort_keys=True, default_flow_style=False, width=100,
        allow_unicode=False,
    )  # fmt: skip
    return HEADER + "---\n" + body


def expected_files() -> dict[pathlib.Path, str]:
    """Every target and the text it must have."""
    return {target: render(target.name) for target in TARGETS}


def check(root: pathlib.Path, expected: dict[pathlib.Path, str]) -> list[str]:
    """One line per target that is missing or differs from its expected text, with a diff."""
    problems = []
    for target, text in expected.items():
        path = root / target
        if not path.is_file():
            problems.append(f"{target}: missing")
            continue
        actual = path.read_text(encoding="utf-8")
        if actual != text:
            diff = difflib.unified_diff(
                actual.splitlines(),
                text.splitlines(),
                fromfile=f"{target} (committed)",
                tofile=f"{target} (generated)",
                lineterm="",
                n=1,
            )
            problems.append(f"{target}: differs from the generated CRD\n" + "\n".join(diff))
    return problems


def write(root: pathlib.Path, expected: dict[pathlib.Path, str]) -> list[pathlib.Path]:
    written = []
    for target, text in expected.items():
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
    text = expected_files()
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
