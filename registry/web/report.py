"""`registry report -o DIR`: the web view's pages as a static site, for a cluster with no open port.

Copy DIR to a laptop and open `index.html`: every link is relative, lists are one file per page,
and search runs in the browser over `search-index.js`. The site is written to a temporary folder
beside DIR and moved into place at the end, so an interrupted report leaves DIR as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from registry.errors import UsageError

from . import data, pages
from .render import STATIC_DIR, Links, Renderer

MARKER = ".registry-report"  # marks a folder this command wrote, so writing it again may replace it


@dataclass(frozen=True)
class ReportSummary:
    index: str
    pages: int

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "pages": self.pages}


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder", hint="name a new folder with -o")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise UsageError(f"{out} is not empty and holds no earlier report",
                         hint="name a new or empty folder with -o (an earlier report's folder is replaced)")
    if not out.parent.is_dir():
        raise UsageError(f"the folder {out.parent} does not exist", hint="create it first, or name another -o")


def write_report(reg: Any, out_dir: str | os.PathLike, *, progress: Callable[[str], None] | None = None) -> ReportSummary:
    """Write every page for `reg` into `out_dir`; returns where `index.html` is and how many pages.

    Raises `UsageError` (exit 2) when `out_dir` is a file, a non-empty folder that is not an
    earlier report, or its parent folder is missing.
    """
    out = Path(out_dir).resolve()
    _check_target(out)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise UsageError(f"cannot write to {out.parent}: {exc.strerror or exc}") from None
    try:
        count = _write_pages(reg, staging, progress or (lambda message: None))
        (staging / MARKER).write_text("written by `registry report`\n", encoding="utf-8")
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ReportSummary(str(out / "index.html"), count)


def _swap_into_place(staging: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_pages(reg: Any, root: Path, progress: Callable[[str], None]) -> int:
    from registry.store import browse

    renderer = Renderer(Links(static=True), reg.url_display)
    cache: dict[Any, Any] = {}
    written = 0

    def write(name: str, text: str) -> None:
        nonlocal written
        (root / name).write_text(text, encoding="utf-8")
        written += 1

    shutil.copytree(STATIC_DIR, root / "static")
    first = data.variants(reg, 1)
    for number in range(1, first["pages"] + 1):
        write(renderer.links.index(number), pages.variants_page(renderer, reg, number))
    variants = [v for number in range(1, first["pages"] + 1) for v in data.variants(reg, number)["variants"]]
    for v in variants:
        write(renderer.links.variant(v["id"]), pages.variant_page(renderer, reg, v["id"]))
    progress(f"{len(variants)} variants")

    lineage = data.lineage(reg, cache=cache)
    for number in range(1, lineage["pages"] + 1):
        write(renderer.links.lineage(number), pages.lineage_page(renderer, reg, number, cache=cache))
    forest = cache["forest"]
    for root_id in forest.roots():
        write(renderer.links.chain(root_id), pages.chain_page(renderer, reg, root_id, cache=cache))
        write(renderer.links.chain(root_id, full=True), pages.chain_page(renderer, reg, root_id, full=True, cache=cache))
    for run_id in forest.links:
        write(renderer.links.run(run_id), pages.run_page(renderer, reg, run_id, cache=cache))
    progress(f"{len(forest.links)} runs")

    checkpoints, number = [], 1
    while True:
        found = browse.checkpoints_page(reg, page=number, size=1000)
        checkpoints += found.items
        if number >= found.pages:
            break
        number += 1
    for ckpt in checkpoints:
        write(renderer.links.checkpoint(ckpt.id), pages.checkpoint_page(renderer, reg, ckpt.id, cache=cache))
    progress(f"{len(checkpoints)} checkpoints")

    unmatched = data.unmatched(reg, 1, with_nearest=False)
    for number in range(1, unmatched["pages"] + 1):
        write(renderer.links.unmatched(number), pages.unmatched_page(renderer, reg, number))
    write("search.html", pages.search_page(renderer, reg))
    _write_search_index(root / "search-index.js", reg, variants, checkpoints)
    return written


def _write_search_index(path: Path, reg: Any, variants: list[dict], checkpoints: list[Any]) -> None:
    versions = []
    for v in variants:
        versions += [[v["id"], f"{v['name']} v{s.version}", s.fingerprint] for s in reg.schema_versions(v["name"])]
    index = {"variants": [[v["id"], v["name"]] for v in variants], "versions": versions,
             "checkpoints": [[c.id, c.path, c.fingerprint] for c in checkpoints]}
    # ensure_ascii keeps U+2028/U+2029 and any markup in names inert inside the script file.
    path.write_text("window.REGISTRY_INDEX = " + json.dumps(index, ensure_ascii=True) + ";\n", encoding="utf-8")
