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


# --- global options after the command name -----------------------------------------------------


def _global_options(group: click.Group) -> dict[str, click.Option]:
    """The group's own options a user may also write after a command (`--db`, `--debug`, ...),
    by every spelling; eager ones (`--help`, `--version`) stay where they are."""
    found: dict[str, click.Option] = {}
    for param in group.params:
        if isinstance(param, click.Option) and not param.is_eager:
            for name in (*param.opts, *param.secondary_opts):
                found[name] = param
    return found


def hoist_global_options(group: click.Group, args: list[str]) -> list[str]:
    """`args` with the group's own options moved in front of the command name, so
    `registry db upgrade --db URL` means `registry --db URL db upgrade` (the README, hints and
    help examples write it both ways). Stops at `--`; an option's value moves with it."""
    options = _global_options(group)
    hoisted: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            rest.extend(args[i:])
            break
        name = token.split("=", 1)[0] if token.startswith("--") else token
        option = options.get(name)
        if option is None:
            rest.append(token)
        elif option.is_flag or option.count or "=" in token or i + 1 == len(args):
            hoisted.append(token)
        else:
            hoisted.extend(args[i:i + 2])
            i += 1
        i += 1
    return hoisted + rest


def note_global_options(group: click.Group) -> None:
    """Say in every command's help that the group's options may follow it (see above)."""
    names = ", ".join(sorted({o.opts[0] for o in _global_options(group).values()}))
    stack: list[click.Command] = list(group.commands.values())
    while stack:
        command = stack.pop()
        if command.epilog is None:
            command.epilog = f"Global options ({names}) may come before or after the command name."
        if isinstance(command, click.Group):
            stack.extend(command.commands.values())
