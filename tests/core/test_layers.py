"""The direction of imports (ARCHITECTURE.md): each layer imports only the layers below it,
so the pure core stays testable without Prefect or AWS and the CLI sits on top."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# package -> folder; flows/, tasks/ and sizing/ install as lmiflow.flows/.tasks/.sizing
FOLDERS = {"lmiflow": ROOT / "lmiflow", "lmiflow.sizing": ROOT / "sizing",
           "lmiflow.tasks": ROOT / "tasks", "lmiflow.flows": ROOT / "flows"}
BELOW = {
    "errors": set(),
    "sizing": set(),
    "serving": {"sizing", "errors"},
    "targets": {"serving", "sizing", "errors"},
    "bench": {"targets", "sizing", "errors"},
    "report": {"bench", "targets", "sizing", "errors"},
    "core": {"report", "bench", "targets", "serving", "sizing", "errors"},
    "tasks": {"core", "report", "bench", "targets", "serving", "sizing", "errors"},
    "flows": {"tasks", "core", "report", "bench", "targets", "serving", "sizing", "errors"},
}
# Leaf modules every layer may use (they import no other layer): error types, secret
# scrubbing, text patterns, state-file I/O.
LEAVES = ("lmiflow.errors", "lmiflow.redact", "lmiflow.patterns", "lmiflow.state_files")
PACKAGES = ("sizing", "serving", "targets", "bench", "report", "tasks", "flows", "commands")


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in PACKAGES:
        return parts[1]
    if module in LEAVES:
        return "errors"
    return "commands" if module in ("lmiflow.cli", "lmiflow.__main__") else "core"


def imports() -> list[tuple[str, str]]:
    """(module, what it imports of ours), function-local imports included."""
    found = []
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("").parts
            if package == "lmiflow" and rel[0] == "sizing":
                continue
            module = ".".join((package, *rel)).removesuffix(".__init__")
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names = ([f"lmiflow.{a.name}" for a in node.names]
                             if node.module == "lmiflow" else [node.module])
                else:
                    continue
                found += [(module, n) for n in names if n.startswith("lmiflow.")]
    return found


def test_every_import_points_down():
    found = imports()
    assert len(found) > 100  # the walk saw the code
    upward = [(m, n) for m, n in found
              if layer(m) != "commands" and layer(n) != layer(m)
              and layer(n) not in BELOW[layer(m)]]
    assert upward == []


def test_a_dry_run_loads_neither_prefect_nor_the_flows():
    code = ("import contextlib, io, sys\nfrom lmiflow.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert main(['deploy', 'configs/llama-3.1-8b-g5-g6.yaml', '--dry-run']) == 0\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'\n"
            "             or m.startswith(('lmiflow.flows', 'lmiflow.tasks'))))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
