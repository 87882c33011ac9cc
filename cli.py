"""The `registry` command line: a thin click layer over the `registry` library.

Installed as `registry.command.cli` (see setup.cfg). This module holds the `main` group, the
mapping from `RegistryError` to one line on stderr and an exit code, and the list of commands;
the commands themselves live in `commands/` (installed as `registry.command.commands`), one module
per noun. They parse arguments, call the library and render the answer; they hold no SQL and no
tensor logic. Data goes to stdout; errors and hints go to stderr as one line each (`--debug` or
REGISTRY_DEBUG=1 shows the traceback).

Exit codes (DESIGN §7): 0 success or match; 1 a negative answer (no match, ambiguous, drift);
2 usage error; 3 unreadable or unsafe input file; 4 database problem; and for `registry train`
75 pre-empted (SIGTERM/SIGUSR1: a checkpoint was written; requeue the job).
"""

from __future__ import annotations

import sys
from typing import Any

from registry.interrupts import exit_quietly_while_starting

exit_quietly_while_starting()  # before the imports below: Ctrl-C while they load exits 130, one line

import click  # noqa: E402

# Absolute imports: `python cli.py` (the benchmarks' fallback) runs this file as a script.
from registry.command.commands import audit, database, inference, matching, schemas, training, variants, web
from registry.command.commands._output import debug_enabled, hoist_global_options, note_global_options
from registry.errors import RegistryError, error_lines
from registry.interrupts import EXIT_INTERRUPTED, interrupts_deferred_during_native_imports


# sysexits.h EX_SOFTWARE: an internal error (a bug), never a user's mistake.
EXIT_INTERNAL = 70


class RegistryGroup(click.Group):
    """Turns `RegistryError` into one line on stderr (plus its details and a hint) and its exit
    code, Ctrl-C into exit 130, any other exception (a bug) into one line and exit 70, and takes
    its own options after a command name too."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        note_global_options(self)
        return super().parse_args(ctx, hoist_global_options(self, args))

    def invoke(self, ctx: click.Context) -> Any:
        _created_databases("forget")  # several invocations in one process (tests)
        succeeded = False
        try:
            result = self._invoke(ctx)
            succeeded = True
            return result
        except click.exceptions.Exit as exc:
            succeeded = exc.exit_code == 0
            raise
        finally:
            if not succeeded:  # a failed command leaves no registry database it created behind
                _created_databases("discard")

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            with interrupts_deferred_during_native_imports():
                return super().invoke(ctx)
        except KeyboardInterrupt:
            if debug_enabled():
                raise
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except RegistryError as exc:
            if debug_enabled():
                raise
            for line in error_lines(exc):  # what `registry.errors.report` prints in a user's script
                click.echo(line, err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:  # a bug: still one line, never a traceback (unless --debug)
            if debug_enabled():
                raise
            text = str(exc).splitlines()[0][:200] if str(exc) else ""
            click.echo(f"error: unexpected {type(exc).__name__}{': ' + text if text else ''}", err=True)
            click.echo("hint: this is a bug in registry; run again with --debug and report the traceback", err=True)
            ctx.exit(EXIT_INTERNAL)


def _created_databases(action: str) -> None:
    """`forget` (keep) or `discard` the SQLite files this process created and recorded nothing in
    (`registry.store.engine`; not loaded: no database was touched)."""
    engine = sys.modules.get("registry.store.engine")
    if engine is not None:
        engine.forget_created() if action == "forget" else engine.discard_created()


@click.group(cls=RegistryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("--db", "db", metavar="URL", help="Registry database URL or SQLite path (else REGISTRY_DB, else a file in the user data dir).")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE",
              help="Import MODULE, which registers model families (repeatable; also REGISTRY_PLUGINS=mod1,mod2).")
@click.version_option(package_name="model-registry", prog_name="registry")
@click.pass_context
def main(ctx: click.Context, debug: bool, db: str | None, plugins: tuple[str, ...]) -> None:
    """Versioned architecture schemas for PyTorch checkpoints.

    \b
    Example:
      registry fingerprint ckpt.pt
    """
    ctx.obj = {"debug": debug, "db": db}
    # Loaded when a command first needs the families (registry/plugins.py); this invocation's
    # --plugin list replaces an earlier one's (several invocations in one process: tests).
    if plugins or "registry.plugins" in sys.modules:
        from registry.plugins import request_plugins

        request_plugins(plugins)


# --- the commands: one module per noun in commands/, one line each here ------------------------
# `registry --help` lists them alphabetically whatever the order below.

# families and schemas, checkpoints read without a database (commands/schemas.py)
main.add_command(schemas.families_command)
main.add_command(schemas.schema_command)
main.add_command(schemas.fingerprint_command)

# the database: info, init, db upgrade|downgrade|current (commands/database.py)
main.add_command(database.info_command)
main.add_command(database.init_command)
main.add_command(database.db_group)

# variants list|show|add|bump|diff, check (commands/variants.py)
main.add_command(variants.variants_group)
main.add_command(variants.check_command)

# match, resolve, convert (commands/matching.py)
main.add_command(matching.match_command)
main.add_command(matching.resolve_command)
main.add_command(matching.convert_command)

# infer: the config that rebuilds a checkpoint (commands/inference.py)
main.add_command(inference.infer_command)

# runs list|show, checkpoints list, audit, scan (commands/audit.py)
main.add_command(audit.runs_group)
main.add_command(audit.checkpoints_group)
main.add_command(audit.audit_command)
main.add_command(audit.scan_command)

# train (commands/training.py)
main.add_command(training.train_command)

# serve, report: the web view and its static twin (commands/web.py)
main.add_command(web.serve_command)
main.add_command(web.report_command)


if __name__ == "__main__":
    main()
