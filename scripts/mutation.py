"""Mutation testing of the core modules: how many small, deliberate bugs do their tests catch?

Each module has a config in ``mutation/<name>.toml`` that names the module and the test files
that target it. For each module this command

1. copies the working tree (tracked and untracked, not ignored files) into a scratch folder, so
   the checkout is never modified and can be edited while a run goes on;
2. checks that the tests, run from the copy, import the copy's module and not the editable
   install (``[tool.setuptools.package-dir]`` maps the packages from ``api/``, ``operator/``,
   ``gateway/`` and ``inference_image/``, and the copy is put first on ``PYTHONPATH``);
3. runs the tests once unmutated (the baseline: they must pass);
4. lets cosmic-ray make each mutant of the module (one operator applied at one place), runs the
   tests against it with ``pytest -x`` and a per-test timeout, one mutant at a time, and restores
   the file;
5. prints a table (module / mutants / killed / survived / timeout / equivalent / kill rate) and
   each survivor with its file, line and the changed code.

Not every mutant is run. Mutants inside type annotations are ignored (with ``from __future__
import annotations`` they never run; mypy checks them), as are mutants that are not valid Python
(cosmic-ray treats the bare ``*`` of keyword-only parameters as an operator). A line carrying
``# pragma: no mutate`` marks its mutants as equivalent; ``# pragma: no mutate: NumberReplacer,
ReplaceComparisonOperator_Gt_GtE`` restricts that to the named operators (``fnmatch`` patterns,
without the ``core/`` prefix). The comment above such a line says why the mutant cannot change
behaviour.

The kill rate is (killed + timeout) / (killed + timeout + survived + errors): a mutant whose
tests hang was caught, one that could not be run was not.

It is slow (one test run per mutant), so it is not part of CI; ``tests/mutation/`` runs it on a
small fixture module so the command cannot rot. Usage::

    python scripts/mutation.py --list
    python scripts/mutation.py netguard auth
    python scripts/mutation.py --all --test-timeout 30 --json mutation-report.json
    python scripts/mutation.py --all --check      # configs, imports, collection, mutant counts
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import fnmatch
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cosmic_ray import ast as cr_ast
from cosmic_ray import mutating, plugins, testing
from cosmic_ray.ast.ast_query import ASTQuery
from cosmic_ray.work_item import MutationSpec, TestOutcome, WorkerOutcome

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_DIR = ROOT / "mutation"
DEFAULT_TEST_TIMEOUT = 20.0
CONFIG_KEYS = {"about", "module", "tests", "pytest-args", "test-timeout", "exclude-operators"}
CONFIG_KEYS_PLANNED = CONFIG_KEYS | {"planned"}
PRAGMA = re.compile(r"#.*pragma:\s*no mutate(?::\s*(?P<operators>[^#]*))?")
PYTEST_TIMEOUT_MESSAGE = "from pytest-timeout"

# Outcomes of one mutant.
KILLED = "killed"
SURVIVED = "survived"
TIMEOUT = "timeout"
ERROR = "error"
EQUIVALENT = "equivalent"  # a `# pragma: no mutate` line: not run
RUNNING = "running"
NOT_SAMPLED = "not in the sample"
IGNORED_ANNOTATION = "ignored: in an annotation"
IGNORED_INVALID = "ignored: not valid Python"
IGNORED_MARKER = "ignored: a signature's * or / marker"
# Parso parents of a `*` or `/` that is a parameter marker, not an operator (cosmic-ray 8.7 still
# mutates these: `def f(a, *, b)` becomes the valid `def f(a, /, b)`).
MARKER_PARENTS = {"parameters", "lambdef", "varargslist"}
IGNORED = (IGNORED_ANNOTATION, IGNORED_INVALID, IGNORED_MARKER)


class ConfigError(Exception):
    """A config file is malformed; the message names the file, the field and the problem."""


class RunError(Exception):
    """A module could not be mutation-tested (imports the wrong copy, baseline fails, ...)."""


@dataclasses.dataclass(frozen=True)
class Target:
    """One module and the test files that target it, read from ``mutation/<name>.toml``."""

    name: str
    config: Path
    about: str
    module: str
    tests: tuple[str, ...]
    pytest_args: tuple[str, ...]
    test_timeout: float | None
    exclude_operators: tuple[re.Pattern[str], ...]
    planned: bool


@dataclasses.dataclass
class Mutant:
    """One mutation of the module and, once run, what the tests made of it."""

    operator: str
    occurrence: int
    line: int
    end: tuple[int, int]
    start: tuple[int, int]
    definition: str | None
    before: str = ""
    after: str = ""
    outcome: str = ""
    seconds: float = 0.0
    output_tail: str = ""

    @property
    def short_operator(self) -> str:
        return self.operator.removeprefix("core/")


@dataclasses.dataclass
class ModuleResult:
    """The figures of one module."""

    target: Target
    mutants: list[Mutant]
    baseline_seconds: float = 0.0
    interrupted: bool = False  # Ctrl-C: the figures cover the mutants run until then
    sampled_from: int = 0  # --sample: the number of mutants the sample was drawn from

    def count(self, outcome: str) -> int:
        return sum(1 for mutant in self.mutants if mutant.outcome == outcome)

    @property
    def run(self) -> int:
        return sum(1 for m in self.mutants if m.outcome in (KILLED, SURVIVED, TIMEOUT, ERROR))

    def ignored(self) -> str:
        return ", ".join(
            f"{self.count(reason)} {reason.removeprefix('ignored: ')}" for reason in IGNORED
        )

    @property
    def kill_rate(self) -> float | None:
        if self.run == 0:
            return None
        return (self.count(KILLED) + self.count(TIMEOUT)) / self.run

    def as_json(self) -> dict[str, Any]:
        return {
            "module": self.target.module,
            "config": self.target.config.name,
            "tests": list(self.target.tests),
            "baseline_seconds": round(self.baseline_seconds, 2),
            "mutant_seconds": round(sum(m.seconds for m in self.mutants), 1),
            "mutants": self.run,
            "killed": self.count(KILLED),
            "survived": self.count(SURVIVED),
            "timeout": self.count(TIMEOUT),
            "errors": self.count(ERROR),
            "equivalent": self.count(EQUIVALENT),
            "ignored": {reason.removeprefix("ignored: "): self.count(reason) for reason in IGNORED},
            "kill_rate": self.kill_rate,
            "interrupted": self.interrupted,
            "sampled_from": self.sampled_from or None,
            "survivors": [
                {
                    "file": self.target.module,
                    "line": m.line,
                    "operator": m.short_operator,
                    "occurrence": m.occurrence,
                    "in": m.definition,
                    "before": m.before,
                    "after": m.after,
                }
                for m in self.mutants
                if m.outcome in (SURVIVED, ERROR)
            ],
        }


# -- configs ----------------------------------------------------------------------------------


def load_target(path: Path, root: Path) -> Target:
    """Read and check one config; every problem names the file and the field."""
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{where}: cannot be read as TOML: {exc}") from exc
    planned = data.get("planned", False)
    if not isinstance(planned, bool):
        raise ConfigError(f"{where}: planned: must be true or false, not {planned!r}")
    unknown = sorted(set(data) - CONFIG_KEYS_PLANNED)
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join(unknown)}; allowed: "
            + ", ".join(sorted(CONFIG_KEYS_PLANNED))
        )

    def text(key: str, *, required: bool) -> str:
        value = data.get(key)
        if value is None:
            if required:
                raise ConfigError(f"{where}: {key}: missing")
            return ""
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: {key}: must be a non-empty string, not {value!r}")
        return value.strip()

    def strings(key: str) -> tuple[str, ...]:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{where}: {key}: must be a list of non-empty strings")
        return tuple(value)

    module = text("module", required=True)
    tests = strings("tests")
    timeout = data.get("test-timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise ConfigError(f"{where}: test-timeout: must be a positive number of seconds")
    patterns = []
    for index, pattern in enumerate(strings("exclude-operators")):
        try:
            patterns.append(re.compile(pattern))
        except re.error as exc:
            raise ConfigError(f"{where}: exclude-operators[{index}]: {exc}") from exc

    if not planned:
        if not module.endswith(".py") or not (root / module).is_file():
            raise ConfigError(f"{where}: module: {module} is not a Python file in {root}")
        if not tests:
            raise ConfigError(f"{where}: tests: lists no test file (or set planned = true)")
        for index, test in enumerate(tests):
            if not (root / test.split("::")[0]).exists():
                raise ConfigError(f"{where}: tests[{index}]: {test} does not exist in {root}")
    return Target(
        name=path.stem,
        config=path,
        about=text("about", required=False),
        module=module,
        tests=tests,
        pytest_args=strings("pytest-args"),
        test_timeout=float(timeout) if timeout is not None else None,
        exclude_operators=tuple(patterns),
        planned=planned,
    )


def load_targets(config_dir: Path, root: Path) -> dict[str, Target]:
    paths = sorted(config_dir.glob("*.toml"))
    if not paths:
        raise ConfigError(f"{config_dir}: holds no *.toml config")
    return {path.stem: load_target(path, root) for path in paths}


def select(targets: dict[str, Target], names: Sequence[str], run_all: bool) -> list[Target]:
    if run_all:
        return [t for t in targets.values() if not t.planned]
    chosen = []
    for name in names:
        matches = [t for t in targets.values() if name in (t.name, t.module)]
        if not matches:
            raise ConfigError(f"no config for {name!r}; known: {', '.join(sorted(targets))}")
        if matches[0].planned:
            raise ConfigError(
                f"{matches[0].config}: is planned (its module is not written yet); "
                "set planned = false and list its tests once it is"
            )
        chosen.append(matches[0])
    return chosen


# -- the scratch copy ---------------------------------------------------------------------------


def copy_tree(root: Path, destination: Path) -> None:
    """Copy the files git would commit (tracked and untracked, not ignored) into destination."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            check=True,
            capture_output=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        raise RunError(
            f"{root}: the tree to copy is listed with `git ls-files`, which failed: "
            f"{exc} {detail.decode(errors='replace').strip()}"
        ) from exc
    for relative in sorted(set(filter(None, listing.split("\0")))):
        source = root / relative
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the work tree, still in the index
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)


def package_dirs(root: Path) -> dict[str, str]:
    """The ``[tool.setuptools.package-dir]`` mapping of the project at root (may be empty)."""
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return {}
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    mapping = data.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    return {str(k): str(v) for k, v in mapping.items()}


def python_path(copy: Path) -> list[str]:
    """Folders that make the copy's packages shadow the editable install of the checkout."""
    entries = [str(copy)]
    for name, folder in package_dirs(copy).items():
        if Path(folder).name != name:
            raise RunError(
                f"pyproject.toml: package-dir {name} = {folder!r}: the folder's name differs "
                "from the package's, so PYTHONPATH cannot make the copy importable"
            )
        entries.append(str(copy / Path(folder).parent))
    return entries


def dotted_name(module: str, mapping: dict[str, str]) -> str:
    path = Path(module).with_suffix("")
    for name, folder in mapping.items():
        if path.is_relative_to(folder):
            parts = [name, *path.relative_to(folder).parts]
            break
    else:
        parts = list(path.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def check_imports_copy(copy: Path, module: str) -> None:
    """Fail unless a Python started like the tests imports the module from the copy."""
    name = dotted_name(module, package_dirs(copy))
    probe = "import importlib, sys; print(importlib.import_module(sys.argv[1]).__file__)"
    done = subprocess.run(
        [sys.executable, "-c", probe, name], cwd=copy, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RunError(f"{module}: `import {name}` fails: {done.stderr.strip()[-2000:]}")
    found = Path(done.stdout.strip().splitlines()[-1]).resolve()
    if found != (copy / module).resolve():
        raise RunError(f"{module}: `import {name}` loads {found}, not the mutated copy")


# -- mutants ----------------------------------------------------------------------------------


def annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) of every annotation, as (line, column in characters) like parso's."""
    lines = source.splitlines()

    def column(line: int, byte_offset: int) -> int:
        return len(lines[line - 1].encode()[:byte_offset].decode(errors="ignore"))

    spans = []
    for node in ast.walk(ast.parse(source)):
        annotations: list[ast.expr | None] = []
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = node.args
            every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
            every += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
            annotations += [a.annotation for a in every]
            annotations.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
        for annotation in annotations:
            if annotation is None or annotation.end_lineno is None:
                continue
            assert annotation.end_col_offset is not None
            start = (annotation.lineno, column(annotation.lineno, annotation.col_offset))
            end = (annotation.end_lineno, column(annotation.end_lineno, annotation.end_col_offset))
            spans.append((start, end))
    return spans


def pragma_covers(lines: list[str], mutant: Mutant) -> bool:
    """Whether a ``# pragma: no mutate`` on a line the mutant touches applies to its operator."""
    last = mutant.end[0] - 1 if mutant.end[1] == 0 else mutant.end[0]
    for number in range(mutant.start[0], max(last, mutant.start[0]) + 1):
        match = PRAGMA.search(lines[number - 1]) if number <= len(lines) else None
        if match is None:
            continue
        listed = [p.strip() for p in (match["operators"] or "").split(",") if p.strip()]
        if not listed or any(fnmatch.fnmatchcase(mutant.short_operator, p) for p in listed):
            return True
    return False


def changed_lines(original: str, mutated: str) -> tuple[str, str]:
    before: list[str] = []
    after: list[str] = []
    diff = difflib.unified_diff(original.splitlines(), mutated.splitlines(), n=0, lineterm="")
    for line in diff:
        if line.startswith(("---", "+++", "@@")):
            continue
        (before if line.startswith("-") else after).append(line[1:].strip())
    return " / ".join(before), " / ".join(after)


def enumerate_mutants(path: Path, target: Target) -> list[Mutant]:
    """Every mutant cosmic-ray's core operators make of the file, less those not to run."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    spans = annotation_spans(source)
    tree = cr_ast.get_ast(source)
    mutants = []
    for operator_name in plugins.operator_names():
        if any(p.search(operator_name) for p in target.exclude_operators):
            continue
        operator_class = plugins.get_operator(operator_name)
        if operator_class.arguments():
            continue  # parameterised operators (VariableReplacer, ...) need arguments
        operator = operator_class()
        positions = [
            (node, start, end)
            for node in cr_ast.ast_nodes(tree)
            for start, end in operator.mutation_positions(node)
        ]
        for occurrence, (node, start, end) in enumerate(positions):
            mutant = Mutant(
                operator=operator_name,
                occurrence=occurrence,
                line=start[0],
                start=tuple(start),
                end=tuple(end),
                definition=ASTQuery(node).get_definition_name(),
            )
            if any(s <= mutant.start < e for s, e in spans):
                mutant.outcome = IGNORED_ANNOTATION
            elif node.type == "operator" and node.parent.type in MARKER_PARENTS:
                mutant.outcome = IGNORED_MARKER
            elif pragma_covers(lines, mutant):
                mutant.outcome = EQUIVALENT
            mutants.append(mutant)
    return mutants


def mutated_source(source: str, mutant: Mutant) -> str | None:
    """The module with the mutant applied, or None where that is not valid Python."""
    operator = plugins.get_operator(mutant.operator)()
    try:
        mutated = mutating.mutate_code(source, operator, mutant.occurrence)
    except Exception:  # cosmic-ray fails on a few shapes (`except (A, B)` for one operator)
        return None
    if mutated is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # `x is 0` and the like: valid, and what was asked for
        try:
            compile(mutated, "<mutant>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError):
            return None
    return str(mutated)


# -- running ----------------------------------------------------------------------------------


def test_command(target: Target, test_timeout: float) -> str:
    return shlex.join(
        [
            sys.executable,
            "-m",
            "pytest",
            "-x",
            "-q",
            "--no-header",
            "-p",
            "no:cacheprovider",
            f"--timeout={test_timeout:g}",
            *target.pytest_args,
            *target.tests,
        ]
    )


@dataclasses.dataclass(frozen=True)
class Options:
    test_timeout: float | None
    check_only: bool
    quiet: bool
    sample: int | None = None
    seed: int = 0


def tail(text: str | None, lines: int = 15) -> str:
    return "\n".join((text or "").rstrip().splitlines()[-lines:])


def check_collects(target: Target) -> None:
    """Fail unless pytest, run as under a mutant, collects every listed test (a node id whose
    test was renamed or moved would otherwise only show when the baseline fails)."""
    command = [
        sys.executable, "-m", "pytest", "--collect-only", "-q", "--no-header",
        "-p", "no:cacheprovider", *target.pytest_args, *target.tests,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RunError(
            f"{target.config}: tests: pytest does not collect them (exit {done.returncode}):\n"
            + tail(done.stdout + done.stderr)
        )


def run_module(target: Target, copy: Path, options: Options) -> ModuleResult:
    module_path = copy / target.module
    check_imports_copy(copy, target.module)
    result = ModuleResult(target=target, mutants=enumerate_mutants(module_path, target))
    if options.check_only:
        check_collects(target)
        return result

    test_timeout = options.test_timeout or target.test_timeout or DEFAULT_TEST_TIMEOUT
    command = test_command(target, test_timeout)
    started = time.monotonic()
    outcome, output = testing.run_tests(command, timeout=None)
    result.baseline_seconds = time.monotonic() - started
    if outcome != TestOutcome.SURVIVED:
        raise RunError(
            f"{target.module}: the tests fail without any mutation ({command}):\n{tail(output)}"
        )
    # A mutant may slow the tests down without failing one test; past this it counts as a hang.
    run_limit = 3 * result.baseline_seconds + 30

    source = module_path.read_text(encoding="utf-8")
    pending = [m for m in result.mutants if not m.outcome]
    if options.sample is not None and options.sample < len(pending):
        chosen = set(map(id, random.Random(options.seed).sample(pending, options.sample)))
        for mutant in pending:
            if id(mutant) not in chosen:
                mutant.outcome = NOT_SAMPLED
        result.sampled_from = len(pending)
        pending = [m for m in pending if id(m) in chosen]
    try:
        for index, mutant in enumerate(pending, start=1):
            run_mutant(mutant, source, module_path, command, run_limit)
            if not options.quiet:
                print(
                    f"[{index:>4}/{len(pending)}] {mutant.outcome:<8} {target.module}:{mutant.line}"
                    f" {mutant.short_operator} ({mutant.seconds:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    except KeyboardInterrupt:
        result.interrupted = True
        for mutant in pending:
            if mutant.outcome == RUNNING:
                mutant.outcome = ""
    return result


def run_mutant(mutant: Mutant, source: str, path: Path, command: str, limit: float) -> None:
    """Run the tests against one mutant (made in the copy, then restored) and record the outcome."""
    mutated = mutated_source(source, mutant)
    if mutated is None:
        mutant.outcome = IGNORED_INVALID
        return
    mutant.before, mutant.after = changed_lines(source, mutated)
    spec = MutationSpec(
        module_path=path,
        operator_name=mutant.operator,
        occurrence=mutant.occurrence,
        start_pos=mutant.start,
        end_pos=mutant.end,
    )
    mutant.outcome = RUNNING
    started = time.monotonic()
    work = mutating.mutate_and_test([spec], command, limit)
    mutant.seconds = time.monotonic() - started
    mutant.outcome = classify(work.worker_outcome, work.test_outcome, work.output)
    if mutant.outcome == ERROR:
        mutant.output_tail = tail(work.output)


def classify(worker: WorkerOutcome, test: TestOutcome | None, output: str | None) -> str:
    if worker != WorkerOutcome.NORMAL or test == TestOutcome.INCOMPETENT:
        return ERROR
    if test == TestOutcome.SURVIVED:
        return SURVIVED
    if output == "timeout" or PYTEST_TIMEOUT_MESSAGE in (output or ""):
        return TIMEOUT
    return KILLED


# -- reporting --------------------------------------------------------------------------------


def percent(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}%"


def table(results: Sequence[ModuleResult]) -> str:
    header = ("module", "mutants", "killed", "survived", "timeout", "equivalent", "kill rate")
    rows = [header]
    for r in results:
        rows.append(
            (
                r.target.module,
                str(r.run),
                str(r.count(KILLED)),
                str(r.count(SURVIVED)),
                str(r.count(TIMEOUT)),
                str(r.count(EQUIVALENT)),
                percent(r.kill_rate),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    out = []
    for row in rows:
        numbers = zip(row[1:], widths[1:], strict=True)
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in numbers]
        out.append("  ".join(cells))
    return "\n".join(out)


def survivors(results: Sequence[ModuleResult]) -> Iterator[str]:
    for r in results:
        for m in r.mutants:
            if m.outcome not in (SURVIVED, ERROR):
                continue
            label = "survived" if m.outcome == SURVIVED else "error"
            where = f" in {m.definition}" if m.definition else ""
            yield f"{r.target.module}:{m.line}  {m.short_operator}{where}  [{label}]"
            yield f"    - {m.before}"
            yield f"    + {m.after}"
            if m.output_tail:
                yield from ("    | " + line for line in m.output_tail.splitlines())


def report(results: Sequence[ModuleResult], check_only: bool) -> str:
    out = []
    if check_only:
        for r in results:
            to_run = sum(1 for m in r.mutants if not m.outcome)
            out.append(
                f"{r.target.module}: {to_run} mutants to run (less those that turn out not to "
                f"be valid Python), {r.count(EQUIVALENT)} marked equivalent; ignored: "
                f"{r.ignored()}; the tests collect and import the copy"
            )
        return "\n".join(out)
    out.append(table(results))
    for r in results:
        if r.interrupted:
            left = sum(1 for m in r.mutants if not m.outcome)
            out.append(f"{r.target.module}: interrupted, {left} mutants not run")
        if r.sampled_from:
            out.append(
                f"{r.target.module}: a random sample of {r.sampled_from - r.count(NOT_SAMPLED)} of "
                f"{r.sampled_from} mutants; its kill rate estimates the module's"
            )
    out.append("\ntime (one worker):")
    for r in results:
        spent = sum(m.seconds for m in r.mutants)
        each = spent / r.run if r.run else 0.0
        out.append(
            f"  {r.target.module}: {spent / 60:.1f} min, {each:.1f} s a mutant "
            f"({each / r.baseline_seconds:.2f} x the unmutated run of {r.baseline_seconds:.1f} s)"
            if r.baseline_seconds
            else f"  {r.target.module}: {spent / 60:.1f} min"
        )
    out.append("\nignored, not run:")
    out.extend(f"  {r.target.module}: {r.ignored()}" for r in results)
    lines = list(survivors(results))
    out.append(f"\nsurvivors ({sum(r.count(SURVIVED) + r.count(ERROR) for r in results)}):")
    out.extend(lines or ["  none"])
    return "\n".join(out)


def list_targets(targets: dict[str, Target]) -> str:
    out = []
    for t in targets.values():
        state = "planned" if t.planned else f"{len(t.tests)} test file(s)"
        out.append(f"{t.name:<16} {t.module:<52} {state}")
        if t.about:
            out.append(f"{'':<16} {t.about}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Mutation testing of the core modules (cosmic-ray), one config per module."
    )
    parser.add_argument("modules", nargs="*", help="config names (file stems) or module paths")
    parser.add_argument("--all", action="store_true", help="every config that is not planned")
    parser.add_argument("--list", action="store_true", help="list the configs and stop")
    parser.add_argument(
        "--check",
        action="store_true",
        help="check configs, imports from the copy and the tests' collection, and count "
        "mutants, without running tests",
    )
    parser.add_argument(
        "--test-timeout",
        type=float,
        help=f"seconds one test may take under a mutant (pytest-timeout); overrides the config's "
        f"test-timeout (default {DEFAULT_TEST_TIMEOUT:g})",
    )
    parser.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR)
    parser.add_argument("--root", type=Path, default=ROOT, help="project whose tree is copied")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--fail-under", type=float, help="exit 1 if a module's kill rate (percent) is below this"
    )
    parser.add_argument("--quiet", action="store_true", help="no line per mutant on stderr")
    parser.add_argument(
        "--sample",
        type=int,
        help="run only this many mutants per module, drawn at random (for a quick estimate)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample's draw (default 0)")
    args = parser.parse_args(argv)
    if args.test_timeout is not None and args.test_timeout <= 0:
        parser.error("--test-timeout: must be a positive number of seconds")
    if args.sample is not None and args.sample < 1:
        parser.error("--sample: must be a positive number of mutants")

    root = args.root.resolve()
    try:
        targets = load_targets(args.config_dir.resolve(), root)
        if args.list:
            print(list_targets(targets))
            return 0
        if not args.all and not args.modules:
            parser.error("name one or more modules, or --all (--list shows them)")
        chosen = select(targets, args.modules, args.all)
    except ConfigError as exc:
        print(f"mutation: {exc}", file=sys.stderr)
        return 2
    for t in targets.values():
        if t.planned and (root / t.module).is_file() and args.all:
            print(f"mutation: note: {t.config} is planned, but {t.module} exists", file=sys.stderr)

    # Ctrl-C or a TERM (`timeout`, a closed session) stops the run and still prints the figures.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    options = Options(
        test_timeout=args.test_timeout,
        check_only=args.check,
        quiet=args.quiet,
        sample=args.sample,
        seed=args.seed,
    )
    results: list[ModuleResult] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mutation-") as scratch:
        copy = Path(scratch) / "tree"
        try:
            copy_tree(root, copy)
            path = python_path(copy)
        except RunError as exc:
            print(f"mutation: {exc}", file=sys.stderr)
            return 2
        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join([*path, *filter(None, [saved])])
        cwd = Path.cwd()
        os.chdir(copy)  # the tests' relative paths and cosmic-ray's test command run from here
        try:
            for target in chosen:
                try:
                    results.append(run_module(target, copy, options))
                except RunError as exc:
                    failures.append(str(exc))
                    print(f"mutation: {exc}", file=sys.stderr)
                if results and results[-1].interrupted:
                    failures.append(f"{target.module}: interrupted; later modules not run")
                    break
        finally:
            os.chdir(cwd)
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved

    print(report(results, args.check))
    if args.json is not None:
        figures = {"modules": [r.as_json() for r in results], "failures": failures}
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    if failures:
        return 2
    if args.fail_under is not None and not args.check:
        low = [
            r for r in results if r.kill_rate is not None and 100 * r.kill_rate < args.fail_under
        ]
        if low:
            names = ", ".join(f"{r.target.module} {percent(r.kill_rate)}" for r in low)
            print(f"mutation: kill rate under {args.fail_under:g}%: {names}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
