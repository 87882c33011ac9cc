"""Seeing the registry: `serve` (a read-only web app) and `report` (the same pages as static files).

Library: `registry.web`."""

from __future__ import annotations

import click

from ._output import emit_json, json_option, open_registry_from


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; the default answers only this machine.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.pass_context
def serve_command(ctx: click.Context, host: str, port: int) -> None:
    """Serve a read-only web view of the registry: variants, schema history, lineage, unmatched.

    The database is opened read-only. Every page has a JSON twin under /api/ with the same field
    names as --json.

    \b
    Example:
      registry serve --port 8765      # then open http://127.0.0.1:8765/
    """
    from registry.web.app import listen, serve

    with open_registry_from(ctx, readonly=True) as reg:
        sock = listen(host, port)
        click.echo(f"serving {reg.url_display} read-only at http://{host}:{port}/ (Ctrl-C stops)", err=True)
        serve(reg, sock)


@click.command("report")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder to write (new, empty, or an earlier report's folder, which is replaced).")
@json_option
@click.pass_context
def report_command(ctx: click.Context, out_dir: str, as_json: bool) -> None:
    """Write the web view as a static site (relative links): open DIR/index.html anywhere.

    \b
    Example:
      registry report -o registry-report && xdg-open registry-report/index.html
    """
    from registry.web.report import write_report

    with open_registry_from(ctx, readonly=True) as reg:
        summary = write_report(reg, out_dir, progress=lambda message: click.echo(f"  {message}", err=True))
    if as_json:
        emit_json(summary.to_json())
    else:
        click.echo(f"wrote {summary.pages} pages: {summary.index}")
