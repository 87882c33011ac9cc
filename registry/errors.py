"""One exception hierarchy; every class carries the exit code the command line uses (DESIGN §7).

Exit codes: 0 success or match; 1 a negative answer (no match, ambiguous, drift); 2 usage error;
3 unreadable or unsafe input file; 4 database problem.
"""

from __future__ import annotations

import sys
from typing import TextIO


class RegistryError(Exception):
    """Base of every error the registry reports to a user as one line (plus an optional hint)."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


def error_lines(exc: RegistryError) -> list[str]:
    """The lines the `registry` command prints for `exc`: `error: MESSAGE`, each of its `details`
    (e.g. the diff behind a refused resume) indented, then `hint: HINT` when it has one."""
    lines = [f"error: {exc.message}"]
    lines.extend(f"  {line}" for line in getattr(exc, "details", None) or [])
    if exc.hint:
        lines.append(f"hint: {exc.hint}")
    return lines


def report(exc: RegistryError, file: TextIO | None = None) -> int:
    """Print `exc` as the `registry` command does (see `error_lines`) on `file` (default: stderr);
    returns its exit code, for a script of your own to end with::

        try:
            main()
        except RegistryError as exc:
            sys.exit(report(exc))
    """
    print("\n".join(error_lines(exc)), file=file if file is not None else sys.stderr)
    return exc.exit_code


class UsageError(RegistryError):
    """Bad arguments, unknown family/variant/config key, bad config value."""

    exit_code = 2


class CheckpointError(RegistryError):
    """A checkpoint that cannot be read: missing, corrupt, truncated, unsupported format."""

    exit_code = 3


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle would run code when loaded with `torch.load(weights_only=False)`."""


class DatabaseError(RegistryError):
    """The registry database cannot be opened, is at the wrong revision, or a write failed."""

    exit_code = 4


class FamilyNotLoadedError(UsageError):
    """No loaded plugin provides the family (or a class family's module cannot be found)."""


class PluginError(UsageError):
    """A family plugin (entry point, pyproject.toml plugin, --plugin, class) failed to import."""


class DuplicateFamilyError(PluginError):
    """Two sources claim one family name."""
