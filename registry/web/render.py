"""HTML for the web view: one Jinja2 environment (autoescaping every value) and one link scheme.

Every page lives at the top level (`index.html`, `variant-3.html`, `chain-<run>.html`, ...), so
the same relative links work in the served app and in a static report opened from disk. The two
differ only in pages of lists and filters: the server takes query parameters
(`lineage.html?page=2&user=ana`), a static report writes one file per page (`lineage-2.html`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
TEMPLATE_DIR = HERE / "templates"


class Links:
    """Relative hrefs to every page; `static=True` for a report written to files."""

    def __init__(self, *, static: bool):
        self.static = static

    def _listing(self, stem: str, page: int, **params: Any) -> str:
        if self.static:
            return f"{stem}.html" if page <= 1 else f"{stem}-{page}.html"
        query = {k: v for k, v in params.items() if v not in (None, "")}
        if page > 1:
            query["page"] = page
        return f"{stem}.html" + (f"?{urlencode(query)}" if query else "")

    def index(self, page: int = 1) -> str:
        return self._listing("index", page)

    def variant(self, variant_id: int) -> str:
        return f"variant-{int(variant_id)}.html"

    def lineage(self, page: int = 1, **filters: Any) -> str:
        return self._listing("lineage", page, **filters)

    def chain(self, root: str, *, full: bool = False, anchor: str | None = None) -> str:
        href = f"chain-{quote(root, safe='')}{'-full' if full else ''}.html"
        return href + (f"#{quote(anchor, safe='-')}" if anchor else "")

    def run(self, run_id: str) -> str:
        return f"run-{quote(run_id, safe='')}.html"

    def checkpoint(self, checkpoint_id: int) -> str:
        return f"checkpoint-{int(checkpoint_id)}.html"

    def unmatched(self, page: int = 1) -> str:
        return self._listing("unmatched", page)

    def search(self) -> str:
        return "search.html"

    def asset(self, name: str) -> str:
        return f"static/{name}"


class Renderer:
    """Renders a page template with its data, the links and the database's display name."""

    def __init__(self, links: Links, database: str):
        from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

        self.links = links
        self.database = database
        self.env = Environment(loader=FileSystemLoader(str(TEMPLATE_DIR)), autoescape=select_autoescape(["html"]),
                               undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)

    def page(self, template: str, title: str, data: Any, **extra: Any) -> str:
        from .data import now

        return self.env.get_template(template).render(
            title=title, data=data, links=self.links, database=self.database, static=self.links.static,
            generated=now(), **extra,
        )
