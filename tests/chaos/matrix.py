"""`make chaos`: the fault matrix against real `lmiflow deploy` processes on the local target.

Each fault hits a sandbox that already serves a production endpoint (so a promotion is a
real blue/green update), then the deploy is run again as an operator would. After each:
no process left that production does not own, no endpoint, config or model production does
not use, a registry that points at what exists, and the exit code and last line expected.
Prints one row per fault: outcome, what leaked (all zero when healthy), and the seconds the
recovering run took. Exit status 1 when any row is not clean.

    python -m tests.chaos.matrix [--only SUBSTRING] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos.sandbox import Finished, Sandbox, demo_config, wait_until

KILL_STEPS = ("create_endpoint", "benchmark", "promote")


@dataclass
class Row:
    fault: str
    outcome: str = ""
    procs: int = 0
    resources: int = 0
    seconds: float | None = None
    problems: list[str] = field(default_factory=list)


class Matrix:
    def __init__(self, root: Path, model_dir: Path):
        self.sb = Sandbox(root, model_dir)
        self.model_dir = model_dir
        self.generation = 0

    # ---- helpers ------------------------------------------------------------------------------

    def next_config(self) -> None:
        """A config whose candidate differs from production (a new spec hash)."""
        self.generation += 1
        cfg = demo_config(self.model_dir)
        cfg.setdefault("serving", {})["options"] = {
            "option.lmiflow_chaos_generation": self.generation}
        self.sb.write_config(cfg)

    def expect(self, row: Row, done: Finished, code: int, last_line: str | None = None) -> None:
        if done.code != code:
            row.problems.append(f"exit {done.code}, expected {code}: {done.last_line[:100]}")
        if last_line and not done.last_line.startswith(last_line):
            row.problems.append(f"last line {done.last_line[:100]!r}")
        if "Traceback" in done.stderr:
            row.problems.append("a traceback on stderr")

    def recover(self, row: Row, *args: str) -> None:
        """Run the deploy again: it must promote, and leave exactly production behind."""
        done = self.sb.deploy(*args)
        row.seconds = done.seconds
        self.expect(row, done, 0)
        report = self.sb.report() or {}
        if report.get("status") != "promoted":
            row.problems.append(f"rerun: {report.get('status')}: {report.get('error')}")
        self.settle(row)

    def settle(self, row: Row) -> None:
        clean = wait_until(lambda: self.sb.leaks() == ([], []), 20)
        procs, resources = self.sb.leaks()
        row.procs, row.resources = len(procs), len(resources)
        if not clean:
            row.problems += [f"leaked process {p}" for p in procs]
            row.problems += [f"leaked {r}" for r in resources]
        row.problems += self.sb.inconsistencies()

    # ---- faults -------------------------------------------------------------------------------

    def kill_at(self, step: str, sig: signal.Signals) -> Row:
        row = Row(f"{sig.name} at {step}")
        self.next_config()
        proc = self.sb.start()
        if not self.sb.wait_for_step(proc, step):
            done = self.sb.finish(proc, 1)
            row.problems.append(f"{step} never ran: {done.last_line[:100]}")
            return row
        time.sleep(0.5)  # inside the step, not at its first line
        proc.send_signal(sig)
        done = self.sb.finish(proc, 300)
        if sig == signal.SIGKILL:
            self.expect(row, done, -signal.SIGKILL)
            if not wait_until(lambda: not self.sb.api_servers(), 30):
                row.problems.append("the Prefect API server outlived the killed deploy")
        else:
            self.expect(row, done, 128 + sig, "lmiflow: interrupted by SIGTERM")
            report = self.sb.report() or {}
            if not str(report.get("error", "")).startswith("interrupted (SIGTERM)"):
                row.problems.append(f"report after SIGTERM: {report.get('error')!r}")
            if self.sb.api_servers():
                row.problems.append("the Prefect API server outlived the interrupted deploy")
        row.outcome = f"exit {done.code}; rerun promoted"
        self.recover(row)
        return row

    def unwritable_report_dir(self) -> Row:
        row = Row("unwritable report directory")
        self.next_config()
        before = self.sb.production()
        done = self.sb.deploy(report_dir=Path("/dev/null/report"))
        self.expect(row, done, 2, "lmiflow: error: --report-dir:")
        if self.sb.production() != before:
            row.problems.append("production changed although the run was refused")
        row.outcome = "exit 2, nothing created"
        self.recover(row)
        return row

    def corrupt_registry(self) -> Row:
        row = Row("corrupt registry")
        self.next_config()
        reg = self.sb.state / "registry.json"
        reg.write_text(reg.read_text()[: len(reg.read_text()) // 2])  # truncated
        done = self.sb.deploy()
        self.expect(row, done, 2, f"lmiflow: error: LMIFLOW_STATE_DIR: {reg} is corrupt")
        match = re.search(r"`(cp [^`]+)`", done.last_line)
        if not match:
            row.problems.append("no recovery command in the message")
            return row
        subprocess.run(shlex.split(match.group(1)), check=True)  # what the message says to do
        row.outcome = "exit 2; recovered, promoted"
        self.recover(row)
        return row

    def full_disk(self) -> Row:
        row = Row("full disk (report directory)")
        self.next_config()
        with full_directory(self.sb.root / "full") as full:
            done = self.sb.deploy(report_dir=full / "report")
        moved = re.search(r"could not be written to \S+; it is in (\S+)", done.stderr)
        self.expect(row, done, 0, "lmiflow: warning: the report could not be written")
        report = json.loads((Path(moved.group(1)) / "report.json").read_text()) if moved \
            else None
        if report is None or report.get("status") != "promoted":
            row.problems.append("no report written elsewhere after a promotion")
        row.outcome = "promoted; report moved"
        row.seconds = done.seconds
        self.settle(row)
        return row

    def production_killed(self) -> Row:
        row = Row("production killed, redeployed")
        prod = self.sb.production()
        pid = (prod or {}).get("process", {}).get("pid")
        if not pid:
            row.problems.append("no production to kill")
            return row
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: pid not in self.sb.processes(), 10)
        self.next_config()
        refused = self.sb.deploy()  # detected before anything is created
        self.expect(row, refused, 2, "lmiflow: error: promotion.replace_failed: production "
                                     f"endpoint {self.sb.name} is Failed")
        row.outcome = "exit 2; replaced, promoted"
        self.recover(row, "--replace-failed")
        return row


@contextlib.contextmanager
def full_directory(path: Path) -> Iterator[Path]:
    """A directory with no space left: a 1 MiB tmpfs filled up (root), else a plain directory
    whose writes fail with ENOSPC through an injected sitecustomize (see enospc/)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    try:
        if mounted:
            with open(path / "filler", "wb") as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
        else:
            os.environ["LMIFLOW_CHAOS_ENOSPC_DIR"] = str(path)
            os.environ["PYTHONPATH"] = os.pathsep.join(
                [str(Path(__file__).parent / "enospc"), os.environ.get("PYTHONPATH", "")])
        yield path
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)
        else:
            os.environ.pop("LMIFLOW_CHAOS_ENOSPC_DIR", None)


def _print(rows: list[Row]) -> None:
    print(f"\n{'fault':<29} {'outcome':<28} {'procs':>5} {'endpts':>6} {'recover':>7}")
    print("-" * 79)
    for r in rows:
        secs = f"{r.seconds:.0f} s" if r.seconds is not None else "-"
        print(f"{r.fault:<29} {r.outcome[:28]:<28} {r.procs:>5} {r.resources:>6} {secs:>7}")
        for p in r.problems:
            print(f"    ! {p}")
    bad = sum(1 for r in rows if r.problems)
    print("-" * 79 + f"\n{len(rows) - bad} of {len(rows)} faults handled cleanly")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="", help="Run only faults whose name contains this.")
    ap.add_argument("--keep", action="store_true", help="Keep the sandbox directory.")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="lmiflow-chaos-"))
    from lmiflow.serving.demo_model import build_demo_model

    matrix = Matrix(root / "sandbox", build_demo_model(root / "demo-model"))
    faults: list[tuple[str, Callable[[], Row]]] = [
        (f"{sig.name} at {step}", lambda s=step, g=sig: matrix.kill_at(s, g))
        for step in KILL_STEPS for sig in (signal.SIGKILL, signal.SIGTERM)
    ] + [("full disk", matrix.full_disk),
         ("unwritable report directory", matrix.unwritable_report_dir),
         ("corrupt registry", matrix.corrupt_registry),
         ("production killed", matrix.production_killed)]
    rows: list[Row] = []
    try:
        first = matrix.sb.deploy()
        if first.code != 0:
            print(f"the first deploy failed ({first.code}): {first.last_line}", file=sys.stderr)
            return 1
        print(f"production deployed in {first.seconds:.0f} s; running the faults", flush=True)
        for name, run in faults:
            if args.only in name:
                rows.append(run())
                print(f"  {rows[-1].fault}: {'ok' if not rows[-1].problems else 'PROBLEMS'}",
                      flush=True)
    finally:
        matrix.sb.clean_up()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    _print(rows)
    return 1 if any(r.problems for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
