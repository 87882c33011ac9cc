"""Commands that need no database: `families`, `schema` (build on the meta device) and
`fingerprint` (read checkpoints without loading them)."""

from __future__ import annotations

import json

import click

from ._output import EXIT_OK, debug_enabled, emit_json, json_option


@click.command("families")
@json_option
def families_command(as_json: bool) -> None:
    """List the model families, where each comes from, and their config fields with defaults.

    Families arrive through the entry-point group `registry.families` (the built-in ones too),
    the `[tool.registry]` table of the nearest pyproject.toml, `--plugin MODULE` and
    REGISTRY_PLUGINS; a class named as `pkg.module:Class` is a family of its own.

    \b
    Examples:
      registry families --json
      registry --plugin src.models.families families
    """
    from registry.reporting import family_rows

    rows = family_rows()
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        click.echo(f"{row['name']}: {row['description']}")
        click.echo(f"  source: {row['source']}")
        for fld in row["fields"]:
            default = "required" if fld.get("required") else f"default {json.dumps(fld['default'])}"
            click.echo(f"  {fld['name']:<28} {fld['type']:<28} {default}")


@click.command("schema")
@click.argument("family")
@click.option("--variant", "variant_name", help="Start from a built-in variant's config (e.g. baseline or ctvit/baseline).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML or JSON file of config values.")
@click.option("--config-key", "config_key", metavar="A.B", help="Dotted key path of the config inside --config.")
@click.option("--config-class", "config_class", metavar="PKG.MODULE:CONFIG",
              help="With a class as FAMILY: the config object its constructor takes.")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE", help="Override one config value (repeatable).")
@click.option("--entries", is_flag=True, help="Print every tensor entry.")
@json_option
def schema_command(
    family: str,
    variant_name: str | None,
    config_file: str | None,
    config_key: str | None,
    config_class: str | None,
    assignments: tuple[str, ...],
    entries: bool,
    as_json: bool,
) -> None:
    """Build FAMILY on the meta device and print its schema fingerprint. FAMILY may be a model
    class named by import path (`pkg.module:Class`).

    \b
    Examples:
      registry schema ctvit --variant baseline
      registry schema ctvit --set dim=64 --set use_rms_norm=true --json
      registry schema src.models.vit:ViT --config configs/base.yaml --config-key model.image_encoder
    """
    from registry.reporting import schema_report
    from registry.configs import config_from_options

    fam, config = config_from_options(None if config_class else family, variant_name, config_file, assignments,
                                      config_key=config_key, config_class=config_class,
                                      class_target=family if config_class else None)
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


@click.command("fingerprint")
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
                               reraise=debug_enabled())
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
