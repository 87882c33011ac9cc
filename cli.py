"""The `registry` command line: a thin click layer over the `registry` library.

Installed as `registry.command.cli` (see setup.cfg). This module parses arguments, calls the
library and renders the answer; it holds no SQL and no tensor logic. Data goes to stdout; errors
and hints go to stderr as one line each (`--debug` or REGISTRY_DEBUG=1 shows the traceback).

Exit codes (DESIGN §7): 0 success or match; 1 a negative answer (no match, ambiguous, drift);
2 usage error; 3 unreadable or unsafe input file; 4 database problem.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable

import click

from registry.errors import RegistryError

EXIT_OK, EXIT_NEGATIVE, EXIT_USAGE, EXIT_INPUT, EXIT_DATABASE = 0, 1, 2, 3, 4


def _debug_enabled() -> bool:
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    flag = bool(root and root.obj and root.obj.get("debug"))
    return flag or os.environ.get("REGISTRY_DEBUG", "") not in ("", "0")


class RegistryGroup(click.Group):
    """Turns `RegistryError` into one line on stderr (plus a hint) and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RegistryError as exc:
            if _debug_enabled():
                raise
            click.echo(f"error: {exc.message}", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            ctx.exit(exc.exit_code)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def json_option(func: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")(func)


@click.group(cls=RegistryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("--db", "db", metavar="URL", help="Registry database URL or SQLite path (else REGISTRY_DB, else a file in the user data dir).")
@click.version_option(package_name="model-registry", prog_name="registry")
@click.pass_context
def main(ctx: click.Context, debug: bool, db: str | None) -> None:
    """Versioned architecture schemas for PyTorch checkpoints.

    \b
    Example:
      registry fingerprint ckpt.pt
    """
    ctx.obj = {"debug": debug, "db": db}


# --- families and schemas (no database) -------------------------------------------------------


@main.command("families")
@json_option
def families_command(as_json: bool) -> None:
    """List the model families and their config fields with defaults.

    \b
    Example:
      registry families --json
    """
    from registry.reporting import family_rows

    rows = family_rows()
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        click.echo(f"{row['name']}: {row['description']}")
        for fld in row["fields"]:
            click.echo(f"  {fld['name']:<28} {fld['type']:<28} default {json.dumps(fld['default'])}")


@main.command("schema")
@click.argument("family")
@click.option("--variant", "variant_name", help="Start from a built-in variant's config (e.g. baseline or ctvit/baseline).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML or JSON file of config values.")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE", help="Override one config value (repeatable).")
@click.option("--entries", is_flag=True, help="Print every tensor entry.")
@json_option
def schema_command(
    family: str,
    variant_name: str | None,
    config_file: str | None,
    assignments: tuple[str, ...],
    entries: bool,
    as_json: bool,
) -> None:
    """Build FAMILY on the meta device and print its schema fingerprint.

    \b
    Examples:
      registry schema ctvit --variant baseline
      registry schema ctvit --set dim=64 --set use_rms_norm=true --json
    """
    from registry.reporting import schema_report
    from registry.configs import config_from_options

    fam, config = config_from_options(family, variant_name, config_file, assignments)
    report = schema_report(fam, config)
    if as_json:
        emit_json(report)
        return
    click.echo(f"family        {report['family']}")
    click.echo(f"fingerprint   {report['fingerprint']}")
    click.echo(f"entries       {len(report['entries'])}")
    click.echo(f"parameters    {report['parameters']:,}")
    click.echo(f"modules       {report['module_signature_hash']}")
    if entries:
        for name, shape, dtype in report["entries"]:
            click.echo(f"  {name}\t[{','.join(map(str, shape))}]\t{dtype}")


# --- the registry database: info, init, db, variants (library: registry.store) ----------------


def open_registry_from(ctx: click.Context, **kwargs: Any) -> Any:
    """The registry named by the global --db (else REGISTRY_DB, else the default SQLite file)."""
    from registry.store import open_registry

    return open_registry(ctx.find_root().obj.get("db"), **kwargs)


def echo_table(headers: list[str], rows: list[list[Any]]) -> None:
    """Left-aligned columns for people (`--json` is the form for scripts)."""
    cells = [[str(v) for v in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def _short(fingerprint: str | None) -> str:
    from registry.schema import short_form

    return short_form(fingerprint) if fingerprint else "-"


@main.command("info")
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

    info = describe_database(ctx.find_root().obj.get("db"))
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


@main.command("init")
@json_option
@click.pass_context
def init_command(ctx: click.Context, as_json: bool) -> None:
    """Create or upgrade the database and register every built-in variant (idempotent).

    \b
    Example:
      registry --db sqlite:///registry.db init
    """
    from registry.store.variants import init_builtin_variants

    with open_registry_from(ctx, upgrade=True) as reg:
        outcomes = init_builtin_variants(reg)
        url = reg.url_display
    if as_json:
        emit_json([o.as_dict() for o in outcomes])
        return
    click.echo(f"database {url}")
    echo_table(["variant", "status", "version", "fingerprint"],
               [[o.variant.name, o.status, o.version.version if o.version else "-",
                 _short(o.version.fingerprint if o.version else None)] for o in outcomes])
    drifted = [o.variant.name for o in outcomes if o.status == "differs"]
    if drifted:
        click.echo(f"hint: the code no longer builds the registered schema of {', '.join(drifted)}: "
                   "see `registry check`", err=True)


@main.group("db")
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

    url = display_url(resolve_db_url(ctx.find_root().obj.get("db")))
    state = upgrade_database(ctx.find_root().obj.get("db"), revision)
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

    url = display_url(resolve_db_url(ctx.find_root().obj.get("db")))
    state = downgrade_database(ctx.find_root().obj.get("db"), revision)
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

    info = describe_database(ctx.find_root().obj.get("db"))
    if as_json:
        emit_json({"url": info.url, "revision": info.revision, "head": info.head, "status": info.status})
        return
    click.echo(f"{info.revision or 'none'} ({info.status}; this code: {info.head})")


@main.group("variants")
def variants_group() -> None:
    """Registered variants: list, show, add, bump."""


@variants_group.command("list")
@click.option("--family", help="Only this family's variants.")
@json_option
@click.pass_context
def variants_list_command(ctx: click.Context, family: str | None, as_json: bool) -> None:
    """List the registered variants with their latest schema version.

    \b
    Example:
      registry variants list --family ctvit
    """
    with open_registry_from(ctx) as reg:
        variants = reg.list_variants(family)
    if as_json:
        emit_json([v.as_dict() for v in variants])
        return
    if not variants:
        click.echo("no variants registered (`registry init` registers the built-in ones)", err=True)
        return
    echo_table(["variant", "family", "version", "fingerprint", "description"],
               [[v.name, v.family, v.latest_version or "-", _short(v.latest_fingerprint), v.description]
                for v in variants])


@variants_group.command("show")
@click.argument("name")
@click.option("--entries", is_flag=True, help="Print every tensor entry of the latest schema version.")
@json_option
@click.pass_context
def variants_show_command(ctx: click.Context, name: str, entries: bool, as_json: bool) -> None:
    """Show a variant: config and every schema version.

    \b
    Example:
      registry variants show ctvit/baseline --entries
    """
    with open_registry_from(ctx) as reg:
        variant = reg.require_variant(name)
        versions = reg.schema_versions(name)
        schema = reg.load_schema(versions[-1].id) if entries and versions else None
    if as_json:
        data = {"variant": variant.as_dict(), "versions": [v.as_dict() for v in versions]}
        if schema is not None:
            data["entries"] = schema.as_rows()
        emit_json(data)
        return
    click.echo(f"variant      {variant.name}")
    click.echo(f"family       {variant.family}")
    click.echo(f"description  {variant.description}")
    click.echo(f"config       {variant.config_json}")
    echo_table(["version", "fingerprint", "entries", "code revision", "created"],
               [[v.version, _short(v.fingerprint), v.entry_count, (v.code_revision or "-")[:12],
                 v.created_at.strftime("%Y-%m-%d %H:%M")] for v in versions])
    if schema is not None:
        for name_, shape, dtype in schema.as_rows():
            click.echo(f"  {name_}\t[{','.join(map(str, shape))}]\t{dtype}")


def _echo_outcome(outcome: Any) -> None:
    version = outcome.version
    click.echo(f"{outcome.status}: {outcome.variant.name} version {version.version} {_short(version.fingerprint)}")


@variants_group.command("add")
@click.argument("name")
@click.option("--family", "family_name", required=True, help="The family that builds it (see `registry families`).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML or JSON file of config values.")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE", help="Override one config value (repeatable).")
@click.option("--description", default="", help="One line saying what the variant is for.")
@json_option
@click.pass_context
def variants_add_command(ctx: click.Context, name: str, family_name: str, config_file: str | None,
                         assignments: tuple[str, ...], description: str, as_json: bool) -> None:
    """Register variant NAME (`family/` is prefixed when missing) with its first schema version.

    \b
    Example:
      registry variants add ctvit/wide --family ctvit --set dim=768
    """
    from registry.configs import config_from_options
    from registry.store.variants import add_variant

    family, config = config_from_options(family_name, None, config_file, assignments)
    full_name = name if "/" in name else f"{family.name}/{name}"
    with open_registry_from(ctx) as reg:
        outcome = add_variant(reg, full_name, family.name, config, description)
    if as_json:
        emit_json(outcome.as_dict())
        return
    _echo_outcome(outcome)


@variants_group.command("bump")
@click.argument("name")
@json_option
@click.pass_context
def variants_bump_command(ctx: click.Context, name: str, as_json: bool) -> None:
    """Record what the current code builds for NAME as a new schema version (after an intended change).

    \b
    Example:
      registry variants bump ctvit/baseline
    """
    from registry.store.variants import bump_variant

    with open_registry_from(ctx) as reg:
        outcome = bump_variant(reg, name)
    if as_json:
        emit_json(outcome.as_dict())
        return
    _echo_outcome(outcome)


# --- drift (issue 4) --------------------------------------------------------------------------


@variants_group.command("diff")
@click.argument("old")
@click.argument("new")
@json_option
@click.pass_context
def variants_diff_command(ctx: click.Context, old: str, new: str, as_json: bool) -> None:
    """Show the grouped differences from variant OLD's latest schema to variant NEW's.

    \b
    Example:
      registry variants diff ctvit/baseline ctvit/optimized
    """
    from registry.diff import diff_schemas

    with open_registry_from(ctx, readonly=True) as reg:
        schemas = []
        for name in (old, new):
            reg.require_variant(name)
            latest = reg.latest_schema_version(name)
            if latest is None:
                raise RegistryError(f"variant {name!r} has no schema version", hint="run `registry init`")
            schemas.append(reg.load_schema(latest.id))
    diff = diff_schemas(schemas[1], schemas[0], missing_label=f"only in {new}", unexpected_label=f"only in {old}")
    if as_json:
        emit_json({"old": old, "new": new, **diff.to_json()})
    elif diff.identical:
        click.echo(f"{old} and {new} have the same schema")
    else:
        click.echo(f"{old} → {new}: {diff.matching} entries equal, score {diff.score:.3f}")
        for line in diff.lines(limit=50):
            click.echo(f"  {line}")


@main.command("check")
@click.argument("variants", nargs=-1)
@json_option
@click.pass_context
def check_command(ctx: click.Context, variants: tuple[str, ...], as_json: bool) -> None:
    """Rebuild every registered variant from the current code; exit 1 if any layout moved.

    Compares each variant's fingerprint (names and shapes) and module signature (module classes)
    with its latest schema version, and names the package versions that changed. Meant for CI.

    \b
    Examples:
      registry check
      registry check ctvit/baseline --json
    """
    from registry.drift import check_all

    with open_registry_from(ctx, readonly=True) as reg:
        reports = check_all(reg, list(variants) or None)
    drifted = [r for r in reports if r.status != "ok"]
    if as_json:
        emit_json({"ok": not drifted, "variants": [r.to_json() for r in reports]})
    else:
        for report in drifted:
            for line in report.lines():
                click.echo(line)
        click.echo(f"{len(reports) - len(drifted)} of {len(reports)} variants unchanged"
                   + (f", {len(drifted)} drifted" if drifted else ""))
    ctx.exit(1 if drifted else 0)


# --- match, resolve, convert (issue 5) ---------------------------------------------------------


def _match(ctx: click.Context, path: str, family: str | None, variant: str | None, allow_unsafe: bool):
    from registry.matching import match_checkpoint
    from registry.readers import read_checkpoint

    info = read_checkpoint(path, allow_unsafe=allow_unsafe)
    with open_registry_from(ctx, readonly=True) as reg:
        return info, match_checkpoint(reg, info, family=family, variant=variant)


def _render_match(path: str, result: Any) -> None:
    from registry.schema import short_form

    where = f" under prefix {result.prefix}" if result.prefix else ""
    if result.status in ("exact", "convertible"):
        via = f" via converter {result.converter}" if result.converter else ""
        click.echo(f"{result.status}: {result.variant} (schema version {result.schema_version}){where}{via}")
        click.echo(f"  evidence     {result.evidence}")
    elif result.status == "inferred":
        click.echo(f"inferred: an unregistered {result.family} config rebuilds this checkpoint exactly{where}")
    elif result.status == "ambiguous":
        click.echo(f"ambiguous: {len({c.variant for c in result.candidates})} variants build this schema")
        for c in result.candidates:
            click.echo(f"  {c.variant} (schema version {c.schema_version}){' prefix ' + c.prefix if c.prefix else ''}")
    else:
        click.echo(f"none: no registered build loads {path} (fingerprint {short_form(result.fingerprint)})")
        for c in result.candidates:
            click.echo(f"  nearest: {c.variant} v{c.version} (score {c.score:.3f})")
        if result.diff:
            click.echo(f"  differences from {result.candidates[0].variant}:")
            for line in result.diff.lines():
                click.echo(f"    {line}")
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    for suggestion in result.suggestions:
        click.echo(f"try: {suggestion}", err=True)


def _scope_options(func: Callable) -> Callable:
    func = click.option("--variant", help="Only answer with this variant.")(func)
    func = click.option("--family", help="Only answer with variants of this family (e.g. the family your trainer builds).")(func)
    return click.option("--allow-unsafe", is_flag=True, help="Read a checkpoint whose pickle would run code (never runs it).")(func)


@main.command("match")
@click.argument("path", type=click.Path())
@_scope_options
@json_option
@click.pass_context
def match_command(ctx: click.Context, path: str, family: str | None, variant: str | None, allow_unsafe: bool, as_json: bool) -> None:
    """Say which registered variant builds the checkpoint at PATH, or why none does.

    Exit 0 for exact, convertible or inferred; 1 for ambiguous or none.

    \b
    Examples:
      registry match ckpt.pt
      registry match sd15.ckpt --family diffusers-unet --json
    """
    _, result = _match(ctx, path, family, variant, allow_unsafe)
    if as_json:
        emit_json({"path": path, **result.to_json()})
    else:
        _render_match(path, result)
    ctx.exit(result.exit_code)


@main.command("resolve")
@click.argument("path", type=click.Path())
@_scope_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the config here instead of stdout.")
@json_option
@click.pass_context
def resolve_command(ctx: click.Context, path: str, family: str | None, variant: str | None, allow_unsafe: bool, output: str | None, as_json: bool) -> None:
    """Write the family, variant and full config a trainer should build for PATH (YAML, or JSON).

    \b
    Example:
      registry resolve runs/ckpt.pt -o config.yaml
    """
    from registry.resolution import resolution_document

    _, result = _match(ctx, path, family, variant, allow_unsafe)
    if not result.loadable:
        _render_match(path, result)
        ctx.exit(result.exit_code)
    text = resolution_document(result, as_json=as_json or bool(output and output.endswith(".json")))
    if output:
        from registry.atomic import atomic_write

        atomic_write(output, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


@main.command("convert")
@click.argument("path", type=click.Path())
@click.option("--to", "to", required=True, help="The registered variant the output must load into.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="New checkpoint (.safetensors, else a torch file).")
@click.option("--rename", "renames", multiple=True, metavar="OLD=NEW", help="Substring rename applied to every name (repeatable, in order).")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--allow-unsafe", is_flag=True, help="Read a checkpoint whose pickle would run code (never runs it).")
@json_option
@click.pass_context
def convert_command(ctx: click.Context, path: str, to: str, output: str, renames: tuple[str, ...], force: bool, allow_unsafe: bool, as_json: bool) -> None:
    """Convert PATH into a checkpoint that variant TO loads strictly; the source is never modified.

    Uses a registered converter (e.g. ldm-unet -> diffusers-unet) or your --rename rules, checks the
    result's fingerprint against TO before writing, writes atomically and records the conversion.

    \b
    Examples:
      registry convert old_unet.pt --to diffusers-unet/sd15 -o unet.safetensors
      registry convert ckpt.pt --to ctvit/baseline --rename .attn.=.self_attn. -o fixed.pt
    """
    from registry.convert import convert_checkpoint
    from registry.converters import RenameRules

    rules = RenameRules.parse(renames)
    with open_registry_from(ctx) as reg:
        done = convert_checkpoint(reg, path, to=to, output=output, renames=rules, allow_unsafe=allow_unsafe, force=force)
    if as_json:
        emit_json(done.to_json())
    else:
        click.echo(f"wrote {done.output}: {done.variant} (schema version {done.schema_version}) via {done.method}"
                   f"{'' if done.exact else ' (lossy)'}, step {done.step if done.step is not None else 'unknown'}")


# --- checkpoints (no database) -----------------------------------------------------------------


@main.command("fingerprint")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--entries", is_flag=True, help="List every tensor entry (name, shape, dtype).")
@click.option("--prefixes", is_flag=True, help="List every module prefix with the fingerprint beneath it.")
@click.option("--allow-unsafe", is_flag=True,
              help="Read files whose pickle would run code (nothing is ever run; they are refused by default).")
@json_option
@click.pass_context
def fingerprint_command(ctx: click.Context, paths: tuple[str, ...], entries: bool, prefixes: bool,
                        allow_unsafe: bool, as_json: bool) -> None:
    """Fingerprint checkpoints without loading them (no database needed).

    Reads only metadata - the zip directory and pickle record of a torch file, the header of a
    safetensors file, the index of a sharded or diffusers/accelerate folder - and never runs code
    from the file. "parameters" counts elements over all entries: a checkpoint cannot tell
    parameters from buffers. Exit code 3 if any file is unreadable or unsafe (the others are
    still printed).

    \b
    Examples:
      registry fingerprint ckpt.pt
      registry fingerprint unet/ model.safetensors --json
      registry fingerprint sd15.ckpt --prefixes
    """
    from registry.readers.report import fingerprint_many, render_text

    reports = fingerprint_many(paths, allow_unsafe=allow_unsafe, entries=entries, prefixes=prefixes,
                               reraise=_debug_enabled())
    blocks = []
    for report in reports:
        if "error" in report:
            click.echo(f"error: {report['error']}", err=True)
        elif not as_json:
            blocks.append("\n".join(render_text(report)))
    if as_json:
        emit_json(reports)
    elif blocks:
        click.echo("\n\n".join(blocks))
    ctx.exit(max((report.get("exit_code", EXIT_OK) for report in reports), default=EXIT_OK))


if __name__ == "__main__":
    main()
