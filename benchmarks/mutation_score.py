"""Mutation score of the verdict and gate code: how many small faults its unit tests catch.

mutmut changes one operator, constant or call at a time in the modules below (``<`` for
``<=``, ``0.05`` for ``1.05``, a dropped argument...) and runs the tests that cover the
changed function; a mutant that no test fails on "survived", and names a test that is
missing. The modules default to the gate and its verdicts (``gate.py``, ``verdicts.py``,
``history.py``, ``slo_verdicts.py``), judged by their unit tests (``test_gate.py``,
``test_verdicts.py``, ``test_slo_verdicts.py``, and ``test_compare_cli.py`` for the
history); a file not in the checkout is left out.

mutmut 3 writes every mutant into a ``mutants/`` folder beside the configuration it reads,
so the run happens in a temporary copy of the package, the tests and ``pyproject.toml``, with
this script's ``[tool.mutmut]`` table added to the copy; the checkout is never written to,
and the copy is deleted at the end.

    pip install 'mutmut>=3.8'    # not a project dependency, and not run in CI
    python benchmarks/mutation_score.py                              # the default modules
    python benchmarks/mutation_score.py pytest_greenllm/gate.py      # one module
    python benchmarks/mutation_score.py pytest_greenllm/gate.py --tests tests/test_gate.py
    python benchmarks/mutation_score.py --diffs                      # each survivor's diff

It prints the score, (killed + timed out) / (mutants - skipped) as mutmut's badge counts it,
the count of each outcome, and the surviving and untested mutants by name
(``pytest_greenllm.gate.x_point_verdict__mutmut_3``: the third mutant of ``point_verdict``).
Exit 0 whatever the score: it is a report, not a gate. Exit 2 where mutmut is missing or the
run did not get as far as a score (the unmutated tests failing, for one). A run over the four
modules takes tens of minutes on two cores; ``--max-children`` sets the parallel workers.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections import Counter
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
MODULES = (
    "pytest_greenllm/gate.py",
    "pytest_greenllm/verdicts.py",
    "pytest_greenllm/history.py",
    "pytest_greenllm/slo_verdicts.py",
)
# test_compare_cli.py holds history.py's tests: folders of reports pooled into a baseline.
TESTS = (
    "tests/test_gate.py",
    "tests/test_verdicts.py",
    "tests/test_slo_verdicts.py",
    "tests/test_compare_cli.py",
)
# What the tests import and read: the package, the tests' helpers, the root conftest
# (hypothesis profiles, pytester) and pyproject.toml (pytest's settings, and mutmut's).
COPIED = ("pytest_greenllm", "tests", "conftest.py", "pyproject.toml")
# source_paths and only_mutate are mutmut 3.8's names: older 3.x releases would mutate the
# whole package.
MUTMUT = Version("3.8")
# mutmut's badge counts a timeout as killed: an infinite loop is a failure the tests caught.
CAUGHT = ("killed", "timeout", "caught by type check")
NOT_RUN = ("skipped",)
EXIT_REPORTED = 0
EXIT_NO_SCORE = 2
RESULT_LINE = re.compile(r"^\s+(?P<name>\S+): (?P<status>.+)$")


def existing(paths: tuple[str, ...]) -> list[str]:
    """Those of ``paths`` the checkout has."""
    return [p for p in paths if (ROOT / p).is_file()]


def mutmut_table(modules: list[str], tests: list[str]) -> str:
    """The ``[tool.mutmut]`` table: mutate ``modules`` only, judged by ``tests``."""
    # JSON's string arrays are TOML's too.
    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["pytest_greenllm"]\n'
        f"only_mutate = {json.dumps(modules)}\n"
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        'also_copy = ["conftest.py"]\n'
    )


def scratch_copy(directory: Path, modules: list[str], tests: list[str]) -> None:
    """The parts of the checkout the run needs, in ``directory``, configured for mutmut."""
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, directory / name, ignore=shutil.ignore_patterns("__pycache__", ".*"))
        else:
            shutil.copy2(source, directory / name)
    pyproject = directory / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    if "mutmut" in tomllib.loads(text).get("tool", {}):
        # A second table would be a TOML error, and two configurations one too many.
        raise SystemExit("pyproject.toml has a [tool.mutmut] table: this script writes its own; remove it")
    pyproject.write_text(text + mutmut_table(modules, tests), encoding="utf-8")


def mutmut(directory: Path, *args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    """``mutmut ARGS`` in ``directory``, with this interpreter (and so this environment)."""
    return subprocess.run(
        [sys.executable, "-m", "mutmut", *args],
        cwd=directory,
        text=True,
        stdout=subprocess.PIPE if capture else None,
        check=False,
    )


def outcomes(results: str) -> dict[str, str]:
    """Each mutant's status, from ``mutmut results --all true``."""
    return {m["name"]: m["status"] for line in results.splitlines() if (m := RESULT_LINE.match(line))}


def mutant_order(name: str) -> tuple[str, int]:
    """Sorts ``f__mutmut_2`` before ``f__mutmut_10``."""
    stem, _, number = name.rpartition("_")
    return stem, int(number) if number.isdigit() else -1


def report(status: dict[str, str], modules: list[str], tests: list[str]) -> list[str]:
    """The score, the count of each outcome, and the mutants no test caught, by name."""
    counts = Counter(status.values())
    caught = sum(counts[s] for s in CAUGHT)
    judged = len(status) - sum(counts[s] for s in NOT_RUN)
    score = f"{caught / judged:.1%}" if judged else "n/a"
    lines = [
        f"mutation score: {caught}/{judged} caught ({score})",
        f"  of {', '.join(modules)}",
        f"  by {', '.join(tests)}",
        "  " + ", ".join(f"{s} {n}" for s, n in counts.most_common()),
    ]
    # A method's mutant is module.xǁClassǁmethod__mutmut_N: the module is all before the last dot.
    by_module: dict[str, Counter[str]] = {}
    for name, outcome in status.items():
        by_module.setdefault(name.rpartition(".")[0], Counter())[outcome] += 1
    for module, module_counts in sorted(by_module.items()):
        module_judged = module_counts.total() - sum(module_counts[s] for s in NOT_RUN)
        module_caught = sum(module_counts[s] for s in CAUGHT)
        lines.append(f"  {module}: {module_caught}/{module_judged} caught")
    for kind in ("survived", "no tests", "suspicious", "segfault", "not checked"):
        names = sorted((name for name, s in status.items() if s == kind), key=mutant_order)
        if names:
            lines += [f"{kind} ({len(names)}):", *(f"  {name}" for name in names)]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run mutmut over the verdict and gate code in a scratch copy and print the score."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "modules",
        nargs="*",
        default=existing(MODULES),
        help="files to mutate, relative to the repository. Default: %(default)s",
    )
    parser.add_argument(
        "--tests",
        nargs="+",
        default=existing(TESTS),
        metavar="FILE",
        help="the test files that judge the mutants. Default: %(default)s",
    )
    parser.add_argument(
        "--max-children",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="mutants tested at once. Default: %(default)s (the CPUs)",
    )
    parser.add_argument("--diffs", action="store_true", help="also print each surviving mutant's diff")
    args = parser.parse_args(argv)
    missing = [p for p in [*args.modules, *args.tests] if not (ROOT / p).is_file()]
    if missing:
        parser.error(f"no such file in {ROOT}: {', '.join(missing)}")
    try:
        installed = Version(importlib.metadata.version("mutmut"))
    except importlib.metadata.PackageNotFoundError:
        print(f"mutmut is not installed here: {sys.executable} -m pip install 'mutmut>={MUTMUT}'")
        return EXIT_NO_SCORE
    if installed < MUTMUT:
        print(f"mutmut {installed} is too old: {sys.executable} -m pip install 'mutmut>={MUTMUT}'")
        return EXIT_NO_SCORE

    with tempfile.TemporaryDirectory(prefix="greenllm-mutmut-") as scratch:
        directory = Path(scratch)
        scratch_copy(directory, args.modules, args.tests)
        print(f"mutmut {installed} in {directory} (deleted when done)", flush=True)
        run = mutmut(directory, "run", f"--max-children={args.max_children}")
        status = outcomes(mutmut(directory, "results", "--all", "true", capture=True).stdout)
        if run.returncode != 0 or not status:
            print(f"mutmut run exited {run.returncode} with no score; its output is above")
            return EXIT_NO_SCORE
        print("\n".join(report(status, args.modules, args.tests)))
        if args.diffs:
            for name in sorted((n for n, s in status.items() if s == "survived"), key=mutant_order):
                print(mutmut(directory, "show", name, capture=True).stdout)
    return EXIT_REPORTED


if __name__ == "__main__":
    sys.exit(main())
