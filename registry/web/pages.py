"""Each page of the web view: its template, its title and the data it renders.

The served app and the static report both go through `render_page`, so a page looks the same in
both; only `Links` differs (query parameters vs one file per page of a list).
"""

from __future__ import annotations

from typing import Any

from . import data
from .render import Renderer


def variants_page(renderer: Renderer, reg: Any, page: int = 1) -> str:
    return renderer.page("variants.html", "Variants", data.variants(reg, page))


def variant_page(renderer: Renderer, reg: Any, variant_id: int) -> str:
    found = data.variant(reg, variant_id)
    return renderer.page("variant.html", f"Variant {found['variant']['name']}", found)


def lineage_page(renderer: Renderer, reg: Any, page: int = 1, cache: dict | None = None, **filters: Any) -> str:
    found = data.lineage(reg, page=page, cache=cache, **filters)
    links = renderer.links
    return renderer.page("lineage.html", "Lineage", found,
                         pager_link=lambda number: links.lineage(number, **found["filters"]))


def chain_page(renderer: Renderer, reg: Any, root: str, *, full: bool = False, cache: dict | None = None) -> str:
    found = data.chain(reg, root, renderer.links, full=full, cache=cache)
    return renderer.page("chain.html", f"Lineage of run {found['root'][:12]}", found)


def run_page(renderer: Renderer, reg: Any, run_id: str, cache: dict | None = None) -> str:
    found = data.run(reg, run_id, cache=cache)
    return renderer.page("run.html", f"Run {found['run']['id']}", found)


def checkpoint_page(renderer: Renderer, reg: Any, checkpoint_id: int, cache: dict | None = None) -> str:
    found = data.checkpoint(reg, checkpoint_id, cache=cache)
    return renderer.page("checkpoint.html", f"Checkpoint {found['checkpoint']['path'].rsplit('/', 1)[-1]}", found)


def unmatched_page(renderer: Renderer, reg: Any, page: int = 1) -> str:
    return renderer.page("unmatched.html", "Unmatched checkpoints", data.unmatched(reg, page))


def search_page(renderer: Renderer, reg: Any, query: str = "") -> str:
    found = data.search(reg, query) if query else {"query": "", "variants": [], "schema_versions": [],
                                                   "checkpoints": []}
    return renderer.page("search.html", "Search", found)


def error_page(renderer: Renderer, message: str) -> str:
    return renderer.page("error.html", "Not found", None, message=message)
