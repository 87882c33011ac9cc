"""Which build loads a checkpoint: `match`, `resolve` (the config a trainer builds) and `convert`
(library: `registry.matching`, `registry.resolution`, `registry.convert`)."""

from __future__ import annotations

from typing import Any, Callable

import click

from ._output import emit_json, json_option, open_registry_from


def _match(ctx: click.Context, path: str, family: str | None, variant: str | None, allow_unsafe: bool):
    from registry.matching import match_checkpoint
    from registry.readers import read_checkpoint

    info = read_checkpoint(path, allow_unsafe=allow_unsafe)
    with open_registry_from(ctx, readonly=True) as reg:
        _check_scope(reg, family, variant)
        return info, match_checkpoint(reg, info, family=family, variant=variant)


def _check_scope(reg: Any, family: str | None, variant: str | None) -> None:
    """A --family or --variant that names nothing is a usage error (exit 2), not "no match"."""
    if variant is not None:
        reg.require_variant(variant)
    if family is not None and not reg.list_variants(family):
        from registry.families import get_family

        get_family(family)  # a family without registered variants may still infer a config


def _render_match(path: str, result: Any, read_warnings: list[str] = ()) -> None:
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
            click.echo(f"  {c.variant} (schema version {c.version}){' prefix ' + c.prefix if c.prefix else ''}")
    else:
        click.echo(f"none: no registered build loads {path} (fingerprint {short_form(result.fingerprint)})")
        for c in result.candidates:
            click.echo(f"  nearest: {c.variant} v{c.version} (score {c.score:.3f})")
        if result.diff:
            click.echo(f"  differences from {result.candidates[0].variant}:")
            for line in result.diff.lines():
                click.echo(f"    {line}")
    for warning in [*read_warnings, *result.warnings]:  # what reading the file noticed, then matching
        click.echo(f"warning: {warning}", err=True)
    for suggestion in result.suggestions:
        click.echo(f"try: {suggestion}", err=True)


def _scope_options(func: Callable) -> Callable:
    func = click.option("--variant", help="Only answer with this variant.")(func)
    func = click.option("--family", help="Only answer with variants of this family (e.g. the family your trainer builds).")(func)
    return click.option("--allow-unsafe", is_flag=True, help="Read a checkpoint whose pickle would run code (never runs it).")(func)


@click.command("match")
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
    info, result = _match(ctx, path, family, variant, allow_unsafe)
    if as_json:
        emit_json({"path": path, **result.to_json(), "checkpoint_warnings": info.warnings})
    else:
        _render_match(path, result, info.warnings)
    ctx.exit(result.exit_code)


@click.command("resolve")
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

    info, result = _match(ctx, path, family, variant, allow_unsafe)
    if not result.loadable:
        if as_json:
            emit_json({"path": path, **result.to_json(), "checkpoint_warnings": info.warnings})
        else:
            _render_match(path, result, info.warnings)
        ctx.exit(result.exit_code)
    text = resolution_document(result, as_json=as_json or bool(output and output.endswith(".json")))
    if output:
        from registry.atomic import atomic_write
        from registry.errors import UsageError

        try:
            atomic_write(output, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        except OSError as exc:  # a missing or read-only folder: nothing was written
            raise UsageError(f"cannot write {output}: {exc.strerror or exc}",
                             hint="name a file in an existing folder you can write to") from None
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


@click.command("convert")
@click.argument("path", type=click.Path())
@click.option("--to", "to", required=True, help="The registered variant the output must load into.")
@click.option("-o", "--output", required=True, type=click.Path(),
              help="New checkpoint (.safetensors, else a torch file), or an existing folder: FOLDER/<PATH's stem>.safetensors.")
@click.option("--rename", "renames", multiple=True, metavar="OLD=NEW", help="Substring rename applied to every name (repeatable, in order).")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--allow-unsafe", is_flag=True, help="Read a checkpoint whose pickle would run code (never runs it).")
@json_option
@click.pass_context
def convert_command(ctx: click.Context, path: str, to: str, output: str, renames: tuple[str, ...], force: bool, allow_unsafe: bool, as_json: bool) -> None:
    """Convert PATH into a checkpoint that variant TO loads strictly; the source is never modified.

    Uses a registered converter (e.g. ldm-unet -> diffusers-unet) or your --rename rules, checks the
    result's fingerprint against TO before writing, writes atomically and records the conversion.
    A .safetensors output is streamed from the source file (memory stays flat); on a terminal a
    progress bar shows on stderr. The output's folder must exist. The name mapping a converter
    produces is cached per layout (REGISTRY_CACHE_DIR moves it, REGISTRY_PLAN_CACHE=0 turns it off).

    \b
    Examples:
      registry convert old_unet.pt --to diffusers-unet/sd15 -o unet.safetensors
      registry convert sd15.ckpt --to diffusers-unet/sd15 -o converted/
      registry convert ckpt.pt --to ctvit/baseline --rename .attn.=.self_attn. -o fixed.pt
    """
    import sys

    from registry.convert import convert_checkpoint
    from registry.converters import RenameRules

    rules = RenameRules.parse(renames)
    progress = _ConvertProgress() if sys.stderr.isatty() else None
    try:
        with open_registry_from(ctx) as reg:
            done = convert_checkpoint(reg, path, to=to, output=output, renames=rules, allow_unsafe=allow_unsafe,
                                      force=force, progress=progress)
    finally:
        if progress is not None:
            progress.close()
    if as_json:
        emit_json(done.to_json())
    else:
        click.echo(f"wrote {done.output}: {done.variant} (schema version {done.schema_version}) via {done.method}"
                   f"{'' if done.exact else ' (lossy)'}, step {done.step if done.step is not None else 'unknown'}")


class _ConvertProgress:
    """`convert`'s progress on a terminal: a line per stage, then a byte bar while writing."""

    def __init__(self) -> None:
        self.stage = ""
        self.bar: Any = None
        self.shown = 0

    def __call__(self, stage: str, done: int, total: int) -> None:
        import sys

        if stage != self.stage:
            self.stage = stage
            if stage == "writing":
                self.bar = click.progressbar(length=total, label="writing", file=sys.stderr, show_eta=True,
                                             show_percent=True)
                self.bar.__enter__()
            else:
                click.echo(f"{stage}...", err=True)
        if self.bar is not None and done > self.shown:
            self.bar.update(done - self.shown)
            self.shown = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
