"""Which runs used which architecture: `runs list|show`, `checkpoints list`, `audit`, and `scan`,
which records every checkpoint below a folder (library: `registry.audit`, `registry.scan`)."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Callable

import click

from ._output import debug_enabled, echo_table, emit_json, json_option, open_registry_from, short_fingerprint


def _since(text: str | None) -> Any:
    from registry.audit import parse_since

    return parse_since(text) if text is not None else None


def _filter_options(func: Callable) -> Callable:
    func = click.option("--since", metavar="DATE",
                        help="Only runs started at or after DATE (ISO date or date and time, UTC: "
                             "2026-11-01, 2026-11-01T12:00).")(func)
    func = click.option("--family", help="Only runs of this family's variants.")(func)
    return click.option("--variant", help="Only runs of this variant (e.g. ctvit/baseline).")(func)


def _when(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment is not None else "-"


def _steps(first: int | None, last: int | None) -> str:
    if first is None:
        return "-"
    return str(first) if first == last else f"{first}-{last}"


# --- runs --------------------------------------------------------------------------------------


@click.group("runs")
def runs_group() -> None:
    """Training runs recorded in the registry: list, show."""


@runs_group.command("list")
@_filter_options
@json_option
@click.pass_context
def runs_list_command(ctx: click.Context, variant: str | None, family: str | None, since: str | None, as_json: bool) -> None:
    """List the recorded runs, oldest first.

    \b
    Examples:
      registry runs list --variant ctvit/baseline --since 2026-11-01
      registry runs list --family diffusers-unet --json
    """
    from registry.audit import list_runs

    moment = _since(since)
    with open_registry_from(ctx, readonly=True) as reg:
        runs = list_runs(reg, variant=variant, family=family, since=moment)
    if as_json:
        emit_json([s.to_json() for s in runs])
        return
    if not runs:
        click.echo("no runs recorded" + (" that match" if variant or family or since else ""), err=True)
        return
    echo_table(["run", "variant", "status", "started", "ended", "host", "job", "resumed from"],
               [[s.run.id, s.run.variant, s.run.status, _when(s.run.started_at), _when(s.run.ended_at), s.run.host,
                 s.run.scheduler_job_id or "-", _resumed_from(s)] for s in runs])


def _resumed_from(summary: Any) -> str:
    """`RUN @ step N`, `PATH @ step N` (a checkpoint of no recorded run), or `-`; and how it was
    converted."""
    text = "-"
    at_step = f" @ step {summary.resumed_from_step}" if summary.resumed_from_step is not None else ""
    if summary.resumed_from_run_id:
        text = summary.resumed_from_run_id + at_step
    elif summary.resumed_from_path:
        text = summary.resumed_from_path + at_step
    elif summary.run.resumed_from_checkpoint_id:  # a row the registry no longer lists
        text = f"checkpoint #{summary.run.resumed_from_checkpoint_id}"
    if summary.conversion is not None:
        text += f" (converted by {summary.conversion.method})"
    return text


def _run_rows(summaries: list[Any], indent: bool = False) -> list[list[Any]]:
    return [[("  " * s.depth if indent else "") + s.run.id, s.run.variant,
             s.schema_version if s.schema_version is not None else "-", s.run.status,
             _steps(s.first_step, s.last_step), _when(s.run.started_at), s.run.host, _resumed_from(s)]
            for s in summaries]


_RUN_HEADERS = ["run", "variant", "version", "status", "steps", "started", "host", "resumed from"]


@runs_group.command("show")
@click.argument("run_id")
@json_option
@click.pass_context
def runs_show_command(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Show run RUN_ID (or a unique prefix of it): its checkpoints, the runs it resumed back to
    the first one, and the runs resumed from it.

    \b
    Example:
      registry runs show 3f2a9c0d1e2f3a4b --json
    """
    from registry.audit import run_detail

    with open_registry_from(ctx, readonly=True) as reg:
        detail = run_detail(reg, run_id)
    if as_json:
        emit_json(detail.to_json())
        return
    summary, run = detail.run, detail.run.run
    click.echo(f"run          {run.id}")
    click.echo(f"variant      {run.variant} (schema version {summary.schema_version or '-'})")
    click.echo(f"status       {run.status}")
    click.echo(f"started      {_when(run.started_at)}    ended {_when(run.ended_at)}")
    click.echo(f"host         {run.host}    user {run.user}    job {run.scheduler_job_id or '-'}    "
               f"world size {run.world_size}")
    click.echo(f"steps        {_steps(summary.first_step, summary.last_step)}")
    if summary.conversion is not None:
        c = summary.conversion
        click.echo(f"converted    {c.source} in memory by {c.method}{'' if c.exact in (True, None) else ' (lossy)'}")
    click.echo(f"checkpoints  {len(detail.checkpoints)}")
    if detail.checkpoints:
        echo_table(["  step", "fingerprint", "path"],
                   [[f"  {c.step if c.step is not None else '-'}", short_fingerprint(c.fingerprint), c.path]
                    for c in detail.checkpoints])
    for title, summaries in (("resumed from (nearest first)", detail.parents), ("resumed by", detail.children)):
        if summaries:
            click.echo(title)
            echo_table(_RUN_HEADERS, _run_rows(summaries))


# --- checkpoints -------------------------------------------------------------------------------


@click.group("checkpoints")
def checkpoints_group() -> None:
    """Checkpoints recorded in the registry: list."""


@checkpoints_group.command("list")
@click.option("--run", "run_id", metavar="ID", help="Only this run's checkpoints (an id or a unique prefix).")
@click.option("--variant", help="Only checkpoints of this variant (the matched one, or their run's).")
@json_option
@click.pass_context
def checkpoints_list_command(ctx: click.Context, run_id: str | None, variant: str | None, as_json: bool) -> None:
    """List the recorded checkpoints, oldest first, with the conversion that wrote each one.

    \b
    Examples:
      registry checkpoints list --variant ctvit/baseline
      registry checkpoints list --run 3f2a9c0d1e2f3a4b --json
    """
    from registry.audit import list_checkpoints

    with open_registry_from(ctx, readonly=True) as reg:
        found = list_checkpoints(reg, run_id=run_id, variant=variant)
    if as_json:
        emit_json([{**c.as_dict(), "converted_from": conv.to_json() if conv else None} for c, conv in found])
        return
    if not found:
        click.echo("no checkpoints recorded" + (" that match" if run_id or variant else ""), err=True)
        return
    echo_table(["path", "step", "variant", "fingerprint", "run", "converted from"],
               [[c.path, c.step if c.step is not None else "-", c.variant or "-", short_fingerprint(c.fingerprint),
                 c.run_id or "-", f"{conv.source} ({conv.method})" if conv else "-"] for c, conv in found])


# --- audit -------------------------------------------------------------------------------------


@click.command("audit")
@_filter_options
@json_option
@click.pass_context
def audit_command(ctx: click.Context, variant: str | None, family: str | None, since: str | None, as_json: bool) -> None:
    """Which runs used which architecture: runs grouped into resume chains, and conversions.

    A chain is a first run and every run resumed from it (through its parent run or the
    checkpoint it resumed from), indented by resume depth; with filters it lists the selected
    runs only, under the id of the chain's first run. Steps are the range of each run's
    checkpoints. Conversions are files written by `registry convert` and runs that converted
    their starting checkpoint in memory, whose result is of the selected variant or family.

    \b
    Examples:
      registry audit --variant ctvit/baseline --since 2026-11-01
      registry audit --family diffusers-unet --json
    """
    from registry.audit import audit

    moment = _since(since)
    with open_registry_from(ctx, readonly=True) as reg:
        report = audit(reg, variant=variant, family=family, since=moment)
    if as_json:
        emit_json(report.to_json())
        return
    scope = " of ".join(filter(None, ["runs", variant or family]))
    when = f" since {_when(moment)} UTC" if moment else ""
    click.echo(f"{report.run_count} {scope}{when} in {len(report.chains)} resume chain{'s' * (len(report.chains) != 1)}")
    for chain in report.chains:
        click.echo("")
        click.echo(f"chain {chain.root} ({len(chain.runs)} run{'s' * (len(chain.runs) != 1)})")
        echo_table(_RUN_HEADERS, _run_rows(chain.runs, indent=True))
    if report.conversions:
        click.echo("")
        click.echo("conversions")
        echo_table(["at", "source", "to", "variant", "method"],
                   [[_when(c.at), c.source or "-", c.target or f"run {c.run_id} (in memory)", c.variant or "-",
                     (c.method or "-") + ("" if c.exact in (True, None) else " (lossy)")] for c in report.conversions])


# --- scan --------------------------------------------------------------------------------------


class _Eta:
    """The time left, from the median time per checkpoint once a few are done. click's own ETA
    averages from the start, so one checkpoint that pays for importing torch first said
    `00:27:58` for a scan of seconds; a median ignores such one-off costs."""

    SHOWN_AFTER = 3

    def __init__(self, total: int) -> None:
        import time

        self.total, self.clock = total, time.monotonic
        self.last, self.durations = self.clock(), []

    def done_one(self) -> None:
        now = self.clock()
        self.durations.append(now - self.last)
        self.last = now

    def text(self) -> str:
        """`eta 01:23  ` (hours when needed), or nothing until SHOWN_AFTER checkpoints are done."""
        if len(self.durations) < self.SHOWN_AFTER or len(self.durations) >= self.total:
            return ""
        recent = sorted(self.durations[-50:])
        seconds = int(recent[len(recent) // 2] * (self.total - len(self.durations)))
        hours, rest = divmod(seconds, 3600)
        return f"eta {hours}:{rest // 60:02d}:{rest % 60:02d}  " if hours else f"eta {rest // 60:02d}:{rest % 60:02d}  "


@click.command("scan")
@click.argument("directory", metavar="DIR", type=click.Path())
@click.option("--allow-unsafe", is_flag=True, help="Read checkpoints whose pickle would run code (never runs it).")
@json_option
@click.pass_context
def scan_command(ctx: click.Context, directory: str, allow_unsafe: bool, as_json: bool) -> None:
    """Fingerprint, match and record every checkpoint below DIR.

    Checkpoints are .pt .pth .ckpt .bin and .safetensors files, sharded *.index.json files, and
    diffusers or accelerate/Trainer folders (recorded as the folder). Files are read without
    loading them; symbolic links to folders are not followed; recording is idempotent, so
    scanning again adds nothing. A file that cannot be read (or is unsafe) is named on stderr
    with one line and skipped. A progress bar shows on stderr when it is a terminal.

    Exit code 0 when the scan completed, even if files were skipped (`--json` lists them under
    "skipped"); 2 when DIR is not a folder; 4 for a database problem.

    \b
    Examples:
      registry scan /scratch/runs
      registry scan checkpoints/ --json > scan.json
    """
    from registry.scan import ScanSummary, Skipped, find_checkpoints, scan_one

    units, problems = find_checkpoints(directory)
    summary = ScanSummary(os.path.abspath(directory))
    for problem in problems:
        summary.skipped.append(problem)
        click.echo(f"skipped: {problem.error}", err=True)
    show_bar = sys.stderr.isatty() and bool(units)
    eta = _Eta(len(units))
    bar = (click.progressbar(units, label="scanning", file=sys.stderr, show_pos=True, show_eta=False,
                             item_show_func=lambda p: f"{eta.text()}{os.path.basename(p)}" if p else None)
           if show_bar else contextlib.nullcontext(units))
    held: list[Skipped] = []  # printed after the bar, which would garble lines written under it
    with open_registry_from(ctx) as reg, bar as items:
        for path in items:
            outcome = scan_one(reg, path, allow_unsafe=allow_unsafe, reraise=debug_enabled())
            eta.done_one()
            summary.add(outcome)
            if isinstance(outcome, Skipped):
                if show_bar:
                    held.append(outcome)
                else:
                    click.echo(f"skipped: {outcome.error}", err=True)
    for skipped in held:
        click.echo(f"skipped: {skipped.error}", err=True)
    if as_json:
        emit_json(summary.to_json())
        return
    if summary.checkpoints:
        echo_table(["path", "format", "status", "variant", "step", "fingerprint"],
                   [[os.path.relpath(c.path, summary.root), c.format, c.status, c.variant or "-",
                     c.step if c.step is not None else "-", short_fingerprint(c.fingerprint)] for c in summary.checkpoints])
    click.echo(f"scanned {summary.scanned} checkpoint{'s' * (summary.scanned != 1)} below {summary.root}: "
               f"recorded {summary.recorded} ({summary.new} new), skipped {len(summary.skipped)}")

