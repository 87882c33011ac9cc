"""Registered variants (`variants list|show|add|bump|diff`) and `check`, which catches a layout
that moved in the code (library: `registry.store.variants`, `registry.diff`, `registry.drift`)."""

from __future__ import annotations

from typing import Any

import click

from ._output import echo_table, emit_json, json_option, open_registry_from, short_fingerprint


@click.group("variants")
def variants_group() -> None:
    """Registered variants: list, show, add, bump, diff."""


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
    with open_registry_from(ctx, create=False) as reg:
        variants = reg.list_variants(family)
    if as_json:
        emit_json([v.as_dict() for v in variants])
        return
    if not variants:
        if family is not None:
            from registry.families import get_family

            get_family(family)  # an unknown family is a usage error (exit 2), not an empty list
        click.echo("no variants registered (`registry init` registers the built-in ones)", err=True)
        return
    echo_table(["variant", "family", "version", "fingerprint", "description"],
               [[v.name, v.family, v.latest_version or "-", short_fingerprint(v.latest_fingerprint), v.description]
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
    with open_registry_from(ctx, create=False) as reg:
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
    click.echo(f"family       {variant.family}" + (f"  ({variant.family_source})" if variant.family_source else ""))
    click.echo(f"description  {variant.description}")
    click.echo(f"config       {variant.config_json}")
    from registry.behaviour import digest_label

    echo_table(["version", "fingerprint", "entries", "behaviour", "code revision", "created"],
               [[v.version, short_fingerprint(v.fingerprint), v.entry_count, digest_label(v.behaviour),
                 (v.code_revision or "-")[:12], v.created_at.strftime("%Y-%m-%d %H:%M")] for v in versions])
    if schema is not None:
        for name_, shape, dtype in schema.as_rows():
            click.echo(f"  {name_}\t[{','.join(map(str, shape))}]\t{dtype}")


def _echo_outcome(outcome: Any) -> None:
    version = outcome.version
    click.echo(f"{outcome.status}: {outcome.variant.name} version {version.version} {short_fingerprint(version.fingerprint)}")


@variants_group.command("add")
@click.argument("name")
@click.option("--family", "family_name", help="The family that builds it (see `registry families`).")
@click.option("--class", "class_target", metavar="PKG.MODULE:CLASS",
              help="A model class as the family: its constructor's keyword arguments are the config.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML or JSON file of config values.")
@click.option("--config-key", "config_key", metavar="A.B", help="Dotted key path of the config inside --config.")
@click.option("--config-class", "config_class", metavar="PKG.MODULE:CONFIG",
              help="With --class: the config object its constructor takes (else its parameter's annotation).")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE", help="Override one config value (repeatable).")
@click.option("--description", default="", help="One line saying what the variant is for.")
@json_option
@click.pass_context
def variants_add_command(ctx: click.Context, name: str, family_name: str | None, class_target: str | None,
                         config_file: str | None, config_key: str | None, config_class: str | None,
                         assignments: tuple[str, ...], description: str, as_json: bool) -> None:
    """Register variant NAME with its first schema version. With --family, `family/` is prefixed
    when NAME has no `/`. Without --family or --class, the config's Hydra `_target_` names the class.

    \b
    Examples:
      registry variants add ctvit/wide --family ctvit --set dim=768
      registry variants add gpt/small --class src.models.gpt:GPT --config configs/gpt.yaml --config-key model
    """
    from registry.configs import config_from_options
    from registry.store.variants import add_variant

    family, config = config_from_options(family_name, None, config_file, assignments, class_target=class_target,
                                         config_key=config_key, config_class=config_class)
    full_name = name if "/" in name or family.origin and family.origin.kind == "class" else f"{family.name}/{name}"
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

    with open_registry_from(ctx, create=False) as reg:
        outcome = bump_variant(reg, name)
    if as_json:
        emit_json(outcome.as_dict())
        return
    _echo_outcome(outcome)


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
    from registry.errors import RegistryError

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


@click.command("check")
@click.argument("variants", nargs=-1)
@click.option("--no-behaviour", "no_behaviour", is_flag=True,
              help="Check layouts only: skip rerunning each variant's behaviour probe.")
@json_option
@click.pass_context
def check_command(ctx: click.Context, variants: tuple[str, ...], no_behaviour: bool, as_json: bool) -> None:
    """Rebuild every registered variant from the current code; exit 1 if any layout or behaviour moved.

    Compares each variant's fingerprint (names and shapes) and module signature (module classes)
    with its latest schema version, and names the package versions that changed. A variant whose
    family is not loaded here (its plugin or class is elsewhere) is not drift: a warning says
    what to load (exit 0, or 2 when that variant was named). When the layout
    is unchanged, reruns the family's behaviour probe (name-derived weights, a fixed input) and
    compares the outputs with the recorded digest. Meant for CI.

    \b
    Examples:
      registry check
      registry check ctvit/baseline --json
      registry check --no-behaviour
    """
    from registry.drift import FAMILY_NOT_LOADED, behaviour_notes, check_all

    with open_registry_from(ctx, readonly=True) as reg:
        reports = check_all(reg, list(variants) or None, behaviour=not no_behaviour)
    # A variant whose family is not loaded here (another project's model) is not drift: a warning.
    not_loaded = [r for r in reports if r.status == FAMILY_NOT_LOADED]
    drifted = [r for r in reports if r.status not in ("ok", FAMILY_NOT_LOADED)]
    if as_json:
        emit_json({"ok": not drifted, "variants": [r.to_json() for r in reports],
                   "not_loaded": [r.variant for r in not_loaded]})
    else:
        for report in not_loaded:
            click.echo(f"warning: {report.lines()[0]}", err=True)
        for report in drifted:
            for line in report.lines():
                click.echo(line)
        for note in behaviour_notes(reports):
            click.echo(f"note: {note}")
        click.echo(f"{len(reports) - len(drifted) - len(not_loaded)} of {len(reports)} variants unchanged"
                   + (f", {len(drifted)} drifted" if drifted else "")
                   + (f", {len(not_loaded)} not checked (family not loaded)" if not_loaded else ""))
    # Exit 2 when a variant named on the command line could not be checked.
    ctx.exit(1 if drifted else 2 if variants and not_loaded else 0)
