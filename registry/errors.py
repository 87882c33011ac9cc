"""One exception hierarchy; every class carries the exit code the command line uses (DESIGN §7).

Exit codes: 0 success or match; 1 a negative answer (no match, ambiguous, drift); 2 usage error;
3 unreadable or unsafe input file; 4 database problem.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base of every error the registry reports to a user as one line (plus an optional hint)."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


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
