"""scripts/mutation.py, the mutation-testing command: run on a fixture whose mutants are known.

The command itself is too slow for CI on the real modules; these tests keep it from rotting: the
figures and survivors it reports for ``fixture/pricing.py``, the checkout left untouched, every
real config still pointing at a module and tests that exist, and clear refusals of bad configs.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "mutation.py"
FIXTURE = ROOT / "tests" / "mutation" / "fixture"
MODULE = "tests/mutation/fixture/pricing.py"


def mutation(*args: str | pathlib.Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def line_of(text: str) -> int:
    lines = (FIXTURE / "pricing.py").read_text().splitlines()
    return next(number for number, line in enumerate(lines, start=1) if text in line)


def test_fixture_figures_survivors_and_the_checkout_untouched(tmp_path: pathlib.Path) -> None:
    source_before = (FIXTURE / "pricing.py").read_bytes()
    report = tmp_path / "report.json"

    # 88% is under 90%: the figures are still printed, and the exit status says so.
    done = mutation(
        "--config-dir", FIXTURE / "configs", "pricing", "--json", report, "--fail-under", "90"
    )

    assert done.returncode == 1, done.stdout + done.stderr
    assert f"kill rate under 90%: {MODULE} 88.0%" in done.stderr
    figures = json.loads(report.read_text())
    assert figures["failures"] == []
    (module,) = figures["modules"]
    # 25 mutants run: all of clamp_percent's, countdown's and label's are killed, except
    # `start -= 0`, which never ends (timeout); is_bulk's threshold is never tried (3 survive).
    counts = {key: module[key] for key in ("mutants", "killed", "survived", "timeout", "errors")}
    assert counts == {"mutants": 25, "killed": 21, "survived": 3, "timeout": 1, "errors": 0}
    assert module["kill_rate"] == 22 / 25
    # `>=` for `>` at the clamp is marked equivalent by its pragma; the clamp's other mutants run.
    assert module["equivalent"] == 1
    # `str | None` (11 replacements of `|`) and the keyword-only `*` (11) are not operators.
    assert module["ignored"] == {
        "in an annotation": 11,
        "not valid Python": 0,
        "a signature's * or / marker": 11,
    }
    bulk = line_of("return quantity >= 10")
    survivors = {(s["file"], s["line"], s["operator"], s["after"]) for s in module["survivors"]}
    assert survivors == {
        (MODULE, bulk, "ReplaceComparisonOperator_GtE_Gt", "return quantity > 10"),
        (MODULE, bulk, "NumberReplacer", "return quantity >= 11"),
        (MODULE, bulk, "NumberReplacer", "return quantity >= 9"),
    }

    table = done.stdout.splitlines()
    assert table[0].split() == [
        "module", "mutants", "killed", "survived", "timeout", "equivalent", "kill", "rate"
    ]  # fmt: skip
    assert table[1].split() == [MODULE, "25", "21", "3", "1", "1", "88.0%"]
    assert f"{MODULE}:{bulk}  ReplaceComparisonOperator_GtE_Gt in is_bulk  [survived]" in table
    assert "    + return quantity >= 11" in table
    assert f"timeout  {MODULE}:{line_of('start -= 1')} NumberReplacer" in done.stderr
    # The mutants were made in a scratch copy, never in the checkout.
    assert (FIXTURE / "pricing.py").read_bytes() == source_before


def test_a_sample_runs_that_many_mutants_drawn_at_random(tmp_path: pathlib.Path) -> None:
    report = tmp_path / "report.json"
    runs = [
        mutation("--config-dir", FIXTURE / "configs", "pricing", "--sample", "3", "--seed", seed)
        for seed in ("1", "2")
    ]
    done = mutation(
        "--config-dir", FIXTURE / "configs", "pricing", "--sample", "3", "--json", report
    )

    assert done.returncode == 0, done.stderr
    (module,) = json.loads(report.read_text())["modules"]
    assert (module["mutants"], module["sampled_from"]) == (3, 25)
    assert module["killed"] + module["survived"] + module["timeout"] == 3
    assert f"{MODULE}: a random sample of 3 of 25 mutants" in done.stdout
    # The draw depends on the seed (and only on it): two seeds, two different sets of mutants.
    drawn = [{line for line in run.stderr.splitlines() if line.startswith("[")} for run in runs]
    assert all(len(lines) == 3 for lines in drawn)
    assert drawn[0] != drawn[1]


def test_every_real_config_names_a_module_and_tests_that_exist() -> None:
    done = mutation("--all", "--check", timeout=300)  # a copy and a collection per config

    assert done.returncode == 0, done.stderr
    listing = mutation("--list").stdout
    active = [line.split()[1] for line in listing.splitlines() if "test file(s)" in line]
    assert {
        "api/compose_api/netguard.py",
        "operator/compose_operator/queueing.py",
        "operator/compose_operator/status.py",
        "operator/compose_operator/builders.py",
        "operator/compose_operator/plan.py",
        "operator/compose_operator/reconciler.py",
        "operator/compose_operator/inventory.py",
        "operator/compose_operator/observed.py",
        "operator/compose_operator/pools.py",
        "operator/compose_operator/pooljobs.py",
        "gateway/compose_gateway/auth.py",
        "gateway/compose_gateway/uploads.py",
        "inference_image/compose_inference/fetching.py",
    } <= set(active)
    for module in active:
        # Each module's tests, run from the copy, are collected and import the copy's module
        # (not the checkout's).
        assert any(
            line.startswith(f"{module}: ")
            and line.endswith("the tests collect and import the copy")
            for line in done.stdout.splitlines()
        ), (module, done.stdout)


def test_a_bad_config_is_refused_naming_the_file_and_the_field(tmp_path: pathlib.Path) -> None:
    (tmp_path / "typo.toml").write_text(f'module = "{MODULE}"\ntest = ["x.py"]\n')
    done = mutation("--config-dir", tmp_path, "--all")
    assert done.returncode == 2
    assert "typo.toml: unknown field(s) test;" in done.stderr

    (tmp_path / "typo.toml").write_text(
        f'module = "{MODULE}"\ntests = ["tests/mutation/fixture/missing.py"]\n'
    )
    done = mutation("--config-dir", tmp_path, "--all")
    assert done.returncode == 2
    assert "typo.toml: tests[0]: tests/mutation/fixture/missing.py does not exist" in done.stderr

    (tmp_path / "typo.toml").write_text(
        'module = "tests/mutation/fixture/pricing.py"\ntests = ["x"]\ntest-timeout = 0\n'
    )
    done = mutation("--config-dir", tmp_path, "--all")
    assert done.returncode == 2
    assert "typo.toml: test-timeout: must be a positive number of seconds" in done.stderr


def test_tests_that_do_not_pass_unmutated_stop_the_module(tmp_path: pathlib.Path) -> None:
    # `-k` selects no test: pytest exits 5, which would otherwise make every mutant "killed".
    config = (FIXTURE / "configs" / "pricing.toml").read_text()
    config = config.replace('"--noconftest",', '"--noconftest", "-k", "no_such_test",')
    (tmp_path / "empty.toml").write_text(config)

    done = mutation("--config-dir", tmp_path, "empty")

    assert done.returncode == 2
    assert f"{MODULE}: the tests fail without any mutation" in done.stderr


def test_check_refuses_a_listed_test_that_pytest_does_not_collect(tmp_path: pathlib.Path) -> None:
    # The file exists, the test in it does not (renamed or moved): --check says so, naming the
    # config, instead of leaving it to the first real run's baseline.
    config = (FIXTURE / "configs" / "pricing.toml").read_text()
    config = config.replace('checks_pricing.py"]', 'checks_pricing.py::test_renamed"]')
    (tmp_path / "moved.toml").write_text(config)

    done = mutation("--config-dir", tmp_path, "--check", "moved")
    kept = mutation("--config-dir", FIXTURE / "configs", "--check", "pricing")

    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{tmp_path / 'moved.toml'}: tests: pytest does not collect them" in done.stderr
    assert "test_renamed" in done.stderr
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.strip().endswith("the tests collect and import the copy")


def test_a_planned_config_is_listed_as_such_and_skipped_by_all(tmp_path: pathlib.Path) -> None:
    # A module an open issue adds: its config may name no test yet, and --all leaves it out.
    (tmp_path / "later.toml").write_text(
        'planned = true\nabout = "added later"\nmodule = "x/later.py"\ntests = []\n'
    )
    listing = mutation("--config-dir", tmp_path, "--list")
    assert listing.returncode == 0, listing.stderr
    (line,) = [row for row in listing.stdout.splitlines() if row.startswith("later")]
    assert line.split()[1:] == ["x/later.py", "planned"]
    done = mutation("--config-dir", tmp_path, "--all", "--check")
    assert "x/later.py" not in done.stdout + done.stderr
