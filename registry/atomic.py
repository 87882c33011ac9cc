"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Callable


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some filesystems do not allow opening a directory; the rename is still atomic
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")


def temporary_of(name: str) -> tuple[str, int] | None:
    """For a file name `atomic_write` used as its temporary: (the target's name, the writer's pid)."""
    match = _TEMPORARY.match(name)
    return (match["target"], int(match["pid"])) if match else None


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` for a temporary file beside `path`, fsync it, then rename it over `path`.

    The temporary file lives in the same directory (a rename is atomic only within a filesystem)
    and is removed if `write` fails or the process is interrupted by an exception. A kill -9
    during `write` leaves only a `.name.tmp-*` file; the previous `path` is untouched.
    Returns the final path.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target
