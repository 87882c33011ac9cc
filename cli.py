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
@click.version_option(package_name="model-registry", prog_name="registry")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Versioned architecture schemas for PyTorch checkpoints.

    \b
    Example:
      registry fingerprint ckpt.pt
    """
    ctx.obj = {"debug": debug}


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


if __name__ == "__main__":
    main()
