"""Reading and writing the files lmiflow keeps between runs (local registry, baselines).

Written atomically (a temporary file in the same directory, fsync, rename, fsync of the
directory): a crash or a full disk leaves the old file or the new one, never half of one.
Read defensively: a file that is unreadable, truncated or not the expected JSON is a
StateError naming its path and the command that recovers, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from lmiflow.errors import StateError


def ensure_dir(path: Path, field: str, mode: int | None = None) -> Path:
    """Create `path` (and parents); `mode` is applied even to an existing directory."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        if mode is not None:
            path.chmod(mode)
    except OSError as exc:
        raise StateError(field, f"cannot create {path}: {exc.strerror or exc}") from None
    return path


def write_atomic(path: Path, text: str, field: str, mode: int = 0o600,
                 keep_previous: Path | None = None) -> None:
    """Replace `path` with `text` in one step. keep_previous: hard-link the version being
    replaced there first (a recovery copy one write behind, made without copying)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            link = keep_previous.with_name(keep_previous.name + ".tmp")
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            os.link(path, link)
            os.replace(link, keep_previous)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StateError(field, f"cannot write {path}: {exc.strerror or exc}") from None


def read_json(path: Path, field: str, recovery: str) -> Any | None:
    """The JSON in `path`; None when there is no such file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise StateError(field, f"cannot read {path} ({why}): {recovery}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = "truncated" if exc.pos >= len(text.rstrip()) else f"line {exc.lineno}"
        raise StateError(field, f"{path} is corrupt (invalid JSON, {where}): {recovery}") \
            from None
    except RecursionError:
        raise StateError(field, f"{path} is corrupt (nested too deeply): {recovery}") from None


def check_writable(path: Path, field: str) -> None:
    """Can `path` be created (or written, if it exists) as a directory? Creates nothing that
    stays: the probe is a temporary file in the nearest existing ancestor, since permission
    bits alone say nothing to root, a read-only mount or a full disk."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        what = "is not a directory" if probe == path else f"cannot be created: {probe} is " \
               "not a directory"
        raise StateError(field, f"{path} {what}")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise StateError(field, f"{path} is not writable ({probe}: "
                                f"{exc.strerror or exc})") from None
