"""`registry infer`: the config of a family that rebuilds a checkpoint exactly (library:
`registry.inference`)."""

from __future__ import annotations

import json
from typing import Any

import click

from ._output import emit_json, json_option, open_registry_from


def _render(path: str, result: Any, prefix: str) -> None:
    from registry.schema import short_form

    where = f" under prefix {prefix}" if prefix else ""
    cost = f"{result.builds} builds, {result.seconds:.1f} s"
    if result.exact:
        click.echo(f"inferred: a {result.family} config builds {path}{where} exactly "
                   f"(fingerprint {short_form(result.fingerprint)}; {cost})")
    else:
        budget = "; build budget spent" if result.budget_exhausted else ""
        click.echo(f"none: no {result.family} config found that builds {path}{where} "
                   f"(fingerprint {short_form(result.target_fingerprint)}; {cost}{budget})")
        click.echo(f"nearest config: {result.distance} entries differ")
    click.echo("config:")
    for key, value in result.config_values().items():
        click.echo(f"  {key}: {json.dumps(value)}")
    if result.diff is not None:
        click.echo("differences (expected = what the nearest config builds, actual = the checkpoint):")
        for line in result.diff.lines():
            click.echo(f"  {line}")
    if result.undetermined:
        click.echo("undetermined (every value listed builds this schema; set one with --fix KEY=VALUE):")
        for item in result.undetermined:
            kept = {"default": "the default", "search": "the default does not build it; taken"}[item.source]
            others = ", ".join(json.dumps(v) for v in item.to_json()["admissible"])
            click.echo(f"  {item.field}: {json.dumps(item.to_json()['value'])} ({kept}); admissible: {others}")
    if result.fixed:
        click.echo("fixed by --fix: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in result.to_json()["fixed"].items()))
    if result.declared_choices:
        click.echo("searched among the family's declared choices: " + ", ".join(result.declared_choices))
    if result.not_searched:
        click.echo("not searched (floats, free strings, mappings: kept as shown): " + ", ".join(result.not_searched))


@click.command("infer")
@click.argument("path", type=click.Path())
@click.option("--family", "family_name", help="The family to search (see `registry families`).")
@click.option("--class", "class_target", metavar="PKG.MODULE:CLASS",
              help="A model class as the family: its constructor's keyword arguments are the config.")
@click.option("--config-class", "config_class", metavar="PKG.MODULE:CONFIG",
              help="With --class: the config object its constructor takes (else its parameter's annotation).")
@click.option("--fix", "fixes", multiple=True, metavar="KEY=VALUE",
              help="Keep this config value; the search does not change it (repeatable; KEY may be a.b).")
@click.option("--prefix", default=None, metavar="PREFIX",
              help="Infer the sub-model under this name prefix (default: the one the family's names fit best).")
@click.option("--budget", type=click.IntRange(min=1), default=None, help="Most model builds to try (default 400).")
@click.option("--register", "register_name", metavar="NAME",
              help="Register the config found as variant NAME (only an exact one).")
@click.option("--allow-unsafe", is_flag=True, help="Read a checkpoint whose pickle would run code (never runs it).")
@json_option
@click.pass_context
def infer_command(ctx: click.Context, path: str, family_name: str | None, class_target: str | None,
                  config_class: str | None, fixes: tuple[str, ...], prefix: str | None, budget: int | None,
                  register_name: str | None, allow_unsafe: bool, as_json: bool) -> None:
    """Find the config of a family whose build has exactly the schema of the checkpoint at PATH.

    The search builds configs on the meta device and learns from the differences; it accepts only
    the exact fingerprint. Fields the checkpoint cannot decide are listed as undetermined and keep
    their default (or --fix value). Exit 0 when found, 1 with the nearest config and its differences.

    \b
    Examples:
      registry infer ckpt.pt --class src.models.gpt:GPT --fix n_head=6
      registry infer unet.safetensors --family diffusers-unet --register diffusers-unet/mine --json
    """
    from registry.configs import family_for
    from registry.errors import UsageError
    from registry.families import parse_set_option
    from registry.inference import DEFAULT_BUDGET, infer_checkpoint
    from registry.readers import read_checkpoint

    if not family_name and not class_target:
        raise UsageError("name the family: --family NAME or --class pkg.module:Class")
    bad = [f for f in fixes if "=" not in f]
    if bad:
        raise UsageError(f"--fix expects key=value, got {bad[0]!r}")
    fixed = dict(parse_set_option(f) for f in fixes)
    info = read_checkpoint(path, allow_unsafe=allow_unsafe)  # before the family: no torch import for a bad file
    family = family_for(family_name, class_target, config_class)
    result, used_prefix = infer_checkpoint(info, family, fixed=fixed, prefix=prefix, budget=budget or DEFAULT_BUDGET)
    registered = None
    if register_name and result.exact:
        from registry.store.variants import add_variant

        name = register_name if "/" in register_name or not family_name else f"{family.name}/{register_name}"
        with open_registry_from(ctx) as reg:
            registered = add_variant(reg, name, family.name, result.config, "inferred by registry infer")
    if as_json:
        emit_json({"path": path, "prefix": used_prefix, **result.to_json(),
                   "registered": registered.as_dict() if registered else None})
    else:
        _render(path, result, used_prefix)
        if registered is not None:
            click.echo(f"{registered.status}: {registered.variant.name} version {registered.version.version}")
    if register_name and not result.exact:
        click.echo("not registered: only an exact config is registered", err=True)
    ctx.exit(0 if result.exact else 1)
