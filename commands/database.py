"""The registry database itself: `info`, `init` and the `db` migration group (library:
`registry.store`)."""

from __future__ import annotations

import click

from ._output import db_url, echo_table, emit_json, json_option, open_registry_from, short_fingerprint


@click.command("info")
@json_option
@click.pass_context
def info_command(ctx: click.Context, as_json: bool) -> None:
    """Show the database in use (password hidden), its schema revision and row counts.

    Never writes: a database that is behind or newer is described, not changed.

    \b
    Example:
      registry --db postgresql://me@db-host/registry info --json
    """
    from registry.store import describe_database

    info = describe_database(db_url(ctx))
    if as_json:
        emit_json(info.as_dict())
        return
    click.echo(f"database         {info.url}  (from {info.source})")
    click.echo(f"backend          {info.backend}")
    click.echo(f"revision         {info.revision or '-'}  ({info.status}; this code: {info.head})")
    for table, count in info.counts.items():
        click.echo(f"{table:<16} {count}")
    if info.status == "missing":
        click.echo("hint: `registry init` creates it and registers the built-in variants", err=True)
    elif info.status == "behind":
        click.echo(f"hint: run: registry db upgrade --db {info.url}", err=True)


@click.command("init")
@json_option
@click.pass_context
def init_command(ctx: click.Context, as_json: bool) -> None:
    """Create or upgrade the database and register every built-in variant and every variant the
    nearest pyproject.toml declares in `[tool.registry.variants]` (idempotent).

    A declared variant whose config changed since it was registered is refused (exit 2): a
    registered variant keeps its config, so give the new config a new name. In a project that
    declares variants, those are listed and the built-ins are summed up in one line (`--json`
    lists all, each with `builtin` true or false).

    \b
    Example:
      registry --db sqlite:///registry.db init
    """
    from registry.declared import register_declared_variants
    from registry.project import load_project
    from registry.store.variants import init_builtin_variants

    project = load_project()
    with open_registry_from(ctx, upgrade=True) as reg:
        builtins = init_builtin_variants(reg)
        declared = register_declared_variants(reg, project) if project is not None and project.variants else []
        url = reg.url_display
    outcomes = builtins + declared
    if as_json:
        emit_json([{**o.as_dict(), "builtin": True} for o in builtins] + [{**o.as_dict(), "builtin": False} for o in declared])
        return
    click.echo(f"database {url}")
    # In a project, its own variants are what the user reads; the built-ins are one line.
    shown = declared or builtins
    echo_table(["variant", "status", "version", "fingerprint"],
               [[o.variant.name, o.status, o.version.version if o.version else "-",
                 short_fingerprint(o.version.fingerprint if o.version else None)] for o in shown])
    if declared:
        counts = {}
        for outcome in builtins:
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
        click.echo(f"and {len(builtins)} built-in variants, " + ", ".join(f"{n} {s}" for s, n in counts.items())
                   + " (`registry variants list` shows them)")
    drifted = [o.variant.name for o in outcomes if o.status == "differs"]
    if drifted:
        click.echo(f"hint: the code no longer builds the registered schema of {', '.join(drifted)}: "
                   "see `registry check`", err=True)


@click.group("db")
def db_group() -> None:
    """Migrate the registry database: upgrade, downgrade, current.

    SQLite databases are upgraded when opened; a server database needs `registry db upgrade`.
    """


@db_group.command("upgrade")
@click.argument("revision", default="head")
@click.pass_context
def db_upgrade_command(ctx: click.Context, revision: str) -> None:
    """Upgrade the database to REVISION (default: head), under a lock held in the database.

    \b
    Example:
      registry db upgrade --db postgresql://me@db-host/registry
    """
    from registry.store import display_url, resolve_db_url, upgrade_database

    url = display_url(resolve_db_url(db_url(ctx)))
    state = upgrade_database(db_url(ctx), revision)
    if state.upgraded:
        click.echo(f"upgraded {url} from {state.upgraded_from or 'empty'} to {state.revision}")
    else:
        click.echo(f"{url} is already at {state.revision}")


@db_group.command("downgrade")
@click.argument("revision")
@click.pass_context
def db_downgrade_command(ctx: click.Context, revision: str) -> None:
    """Downgrade the database to REVISION (`-1`, a revision id, or `base`, which drops everything).

    An SQLite database is upgraded again by the next command that opens it.

    \b
    Example:
      registry db downgrade -- -1
    """
    from registry.store import display_url, downgrade_database, resolve_db_url

    url = display_url(resolve_db_url(db_url(ctx)))
    state = downgrade_database(db_url(ctx), revision)
    click.echo(f"downgraded {url} from {state.upgraded_from or 'empty'} to {state.revision or 'base (empty)'}")


@db_group.command("current")
@json_option
@click.pass_context
def db_current_command(ctx: click.Context, as_json: bool) -> None:
    """Print the database's schema revision and the code's newest one.

    \b
    Example:
      registry db current --json
    """
    from registry.store import describe_database

    info = describe_database(db_url(ctx))
    if as_json:
        emit_json({"url": info.url, "revision": info.revision, "head": info.head, "status": info.status})
        return
    click.echo(f"{info.revision or 'none'} ({info.status}; this code: {info.head})")
