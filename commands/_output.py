"""What every command module shares: exit codes, JSON and table output, the database to open.

Data goes to stdout (JSON for scripts with `--json`, a table for people); errors and hints go to
stderr. JSON field names are stable: scripts on clusters depend on them.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import click

EXIT_OK, EXIT_NEGATIVE, EXIT_USAGE, EXIT_INPUT, EXIT_DATABASE = 0, 1, 2, 3, 4


def debug_enabled() -> bool:
    """True under `registry --debug` or REGISTRY_DEBUG=1: errors then show their traceback."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    flag = bool(root and root.obj and root.obj.get("debug"))
    return flag or os.environ.get("REGISTRY_DEBUG", "") not in ("", "0")


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def json_option(func: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")(func)


def echo_table(headers: list[str], rows: list[list[Any]]) -> None:
    """Left-aligned columns for people (`--json` is the form for scripts)."""
    cells = [[str(v) for v in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def db_url(ctx: click.Context) -> str | None:
    """The global `--db` value (None: REGISTRY_DB, else the default SQLite file)."""
    return ctx.find_root().obj.get("db")


def open_registry_from(ctx: click.Context, **kwargs: Any) -> Any:
    """The registry named by the global --db (else REGISTRY_DB, else the default SQLite file)."""
    from registry.store import open_registry

    return open_registry(db_url(ctx), **kwargs)


def short_fingerprint(fingerprint: str | None) -> str:
    """The 12-hex-digit short form, or `-` when there is none."""
    from registry.schema import short_form

    return short_form(fingerprint) if fingerprint else "-"
