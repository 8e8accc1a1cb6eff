"""Injected into a deploy's interpreter (PYTHONPATH) by the fault matrix when no tmpfs can be
mounted: every file opened for writing under LMIFLOW_CHAOS_ENOSPC_DIR fails with ENOSPC, as
on a full disk."""

import builtins
import errno
import io
import os

_FULL = os.environ.get("LMIFLOW_CHAOS_ENOSPC_DIR")

if _FULL:
    _full = os.path.realpath(_FULL)
    _os_open, _open = os.open, builtins.open

    def _under(path) -> bool:
        try:
            return os.path.realpath(os.fspath(path)).startswith(_full + os.sep)
        except TypeError:
            return False

    def _enospc(path):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and _under(path):
            raise _enospc(path)
        return _os_open(path, flags, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and not isinstance(file, int) and _under(file):
            raise _enospc(file)
        return _open(file, mode, *args, **kwargs)

    os.open = os_open
    builtins.open = io.open = open_
