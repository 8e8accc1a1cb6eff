"""`make mutate`: mutation testing of the pure core with mutmut, the fast unit tests as oracle.

Why a staged copy: mutmut names a mutant after its file path and activates it only where that
name matches the running function's `__module__`, but sizing/, tasks/ and flows/ sit at the top
of the repository and import as lmiflow.sizing, lmiflow.tasks, lmiflow.flows. So the package is
copied into `.mutate/` as one plain `lmiflow/` tree (file path == module name), with the tests,
configs and pyproject.toml beside it, and mutmut runs there. Which files are mutated and which
tests judge them is `[tool.mutmut]` in pyproject.toml.

    python scripts/mutate.py                      # every core module, then the score
    python scripts/mutate.py 'lmiflow.sizing.memory.*'   # a subset (mutmut name globs)
    python scripts/mutate.py --report             # the score of the last run, no rerun
    python scripts/mutate.py --stage /tmp/m ...   # lay the copy out elsewhere

Prints the score per module and every surviving mutant (file, function, the changed lines).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / ".mutate"
# Where each folder of the repository sits inside the installed `lmiflow` package.
PACKAGE_DIRS = {"lmiflow": "lmiflow", "sizing": "lmiflow/sizing", "tasks": "lmiflow/tasks",
                "flows": "lmiflow/flows"}
# Data the code and tests read relative to their own files: configs/ beside the tests
# (tests/.../parents[2]) and beside the package (sizing/catalog.py: parents[1]).
DATA_DIRS = {"configs": ("configs", "lmiflow/configs")}
# mutmut's exit codes: a test failed (1, 3) or the mutant made the tests hang past mutmut's
# timeout (an endless loop: CI would fail it too) count as detected; survived (0), no test
# reached it (33), suspicious or crashed count against the score.
KILLED = {1, 3}
TIMEOUT = {36, -24, 24, 152, 255}
SURVIVED = 0


def lay_out(stage: Path) -> None:
    """A fresh copy of the repository laid out as the package imports it."""
    shutil.rmtree(stage, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for src, dst in PACKAGE_DIRS.items():
        shutil.copytree(ROOT / src, stage / dst, ignore=ignore, dirs_exist_ok=True)
    for src, dsts in DATA_DIRS.items():
        for dst in dsts:
            shutil.copytree(ROOT / src, stage / dst, ignore=ignore, dirs_exist_ok=True)
    shutil.copytree(ROOT / "tests", stage / "tests", ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", stage / "pyproject.toml")


def run_mutmut(stage: Path, names: list[str], children: int) -> int:
    mutmut = Path(sys.executable).with_name("mutmut")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [str(mutmut), "run", "--max-children", str(children), *names]
    return subprocess.run(cmd, cwd=stage, env=env).returncode


def results(stage: Path) -> dict[str, dict[str, int | None]]:
    """{file: {mutant name: exit code}} from mutmut's .meta files."""
    out = {}
    for meta in sorted((stage / "mutants").rglob("*.py.meta")):
        rel = meta.relative_to(stage / "mutants").as_posix().removesuffix(".meta")
        out[rel] = json.loads(meta.read_text())["exit_code_by_key"]
    return out


def changed_lines(stage: Path, name: str) -> list[str]:
    """The lines a mutant changes (mutmut's own diff, without its headers)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    cwd = os.getcwd()
    os.chdir(stage)
    try:
        diff = get_diff_for_mutant(name)
    except Exception as exc:  # a missing or odd mutant must not hide the others
        return [f"(no diff: {exc})"]
    finally:
        os.chdir(cwd)
    return [ln for ln in diff.splitlines()
            if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]


def row(name: str, c: Counter) -> str:
    score = (c["killed"] + c["hung"]) / c["checked"]
    return (f"{name:<34} {c['checked']:>7} {c['killed']:>6} {c['hung']:>4} {c['alive']:>5} "
            f"{c['other']:>5} {score:>6.1%}")


def report(stage: Path) -> bool:
    """Print the score per module and the survivors; True when the core score is >= 90 %."""
    res = results(stage)
    if not res:
        print("no mutmut results in .mutate/mutants: run without --report first")
        return False
    print(f"\n{'module':<34} {'mutants':>7} {'killed':>6} {'hung':>4} {'alive':>5} "
          f"{'other':>5} {'score':>6}")
    total = Counter()
    alive: dict[str, list[str]] = defaultdict(list)
    for path, codes in res.items():
        c = Counter()
        for name, code in codes.items():
            if code is None:
                c["unchecked"] += 1
                continue
            c["checked"] += 1
            if code in KILLED:
                c["killed"] += 1
            elif code in TIMEOUT:
                c["hung"] += 1
            elif code == SURVIVED:
                c["alive"] += 1
                alive[path].append(name)
            else:  # timeout, no tests, suspicious, segfault
                c["other"] += 1
                alive[path].append(name)
        if not c["checked"]:
            continue
        total.update(c)
        print(row(path, c))
    if not total["checked"]:
        print("nothing was checked")
        return False
    print(row("all core modules", total))
    score = (total["killed"] + total["hung"]) / total["checked"]
    if total["unchecked"]:
        print(f"({total['unchecked']} mutants not checked in this run)")
    if alive:
        print("\nsurviving mutants (name, then the changed lines):")
        for path, names in alive.items():
            for name in names:
                code = res[path][name]
                status = "" if code == SURVIVED else f" [exit {code}: not a kill]"
                print(f"\n{name}{status}")
                for ln in changed_lines(stage, name):
                    print(f"    {ln.strip()[:110]}")
    return score >= 0.9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="mutant name globs, e.g. 'lmiflow.sizing.memory.*'")
    ap.add_argument("--report", action="store_true", help="print the last run's score only")
    ap.add_argument("--children", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--stage", type=Path, default=STAGE,
                    help=f"where to lay out the copy (default {STAGE.name}/ in the repository)")
    args = ap.parse_args()
    stage = args.stage.resolve()
    if not args.report:
        lay_out(stage)
        rc = run_mutmut(stage, args.names, args.children)
        if rc:
            print(f"mutmut exited {rc}")
            return rc
    return 0 if report(stage) else 1


if __name__ == "__main__":
    sys.exit(main())
