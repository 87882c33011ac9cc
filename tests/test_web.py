"""The web view in-process: every page and API route over a filled registry (ASGI test client),
escaping, read-only opening, and the static report's relative links."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from web_fixture import HOSTILE, fill

starlette_testclient = pytest.importorskip("starlette.testclient")


@pytest.fixture
def filled(reg, tiny_family, tmp_path, monkeypatch):
    return fill(reg, tiny_family, tmp_path / "disk", monkeypatch)


@pytest.fixture
def client(reg, filled):
    from registry.web.app import create_app

    return starlette_testclient.TestClient(create_app(reg))


def _links(html: str) -> list[str]:
    return re.findall(r'href="([^"#?]+)', html)


def test_every_page_answers_and_links_to_pages_that_exist(client, filled):
    seen, todo = set(), ["index.html"]
    while todo:
        page = todo.pop()
        if page in seen or page.startswith("static/"):
            continue
        seen.add(page)
        response = client.get(f"/{page}")
        assert response.status_code == 200, (page, response.text[:300])
        todo += [link for link in _links(response.text) if link not in seen]
    # every kind of page was reached by following links alone
    for kind in ("variant-", "chain-", "run-", "checkpoint-", "lineage.html", "unmatched.html", "search.html"):
        assert any(p.startswith(kind) for p in seen), kind
    assert f"run-{filled.converted_run}.html" in seen
    assert f"checkpoint-{filled.unmatched_checkpoint}.html" in seen


def test_lineage_chain_collapses_straight_resumes_and_keeps_the_conversion(client, filled):
    page = client.get(f"/chain-{filled.root}.html").text
    middle = filled.runs[2:-1]  # r0 branches, so the straight stretch is r1..r7: r2..r6 collapse
    assert f'data-node="collapsed-{middle[0]}"' in page
    assert "5 resumed runs" in page
    for run_id in middle:
        assert f'data-node="run-{run_id}"' not in page
    for run_id in (filled.root, filled.runs[1], filled.runs[-1], filled.branch, filled.converted_run):
        assert f'data-node="run-{run_id}"' in page
    assert f'data-node="checkpoint-{filled.converted_checkpoint}"' in page
    assert "converted (tiny_widen)" in page
    full = client.get(f"/chain-{filled.root}-full.html").text
    for run_id in filled.runs:
        assert f'data-node="run-{run_id}"' in full
    # any run's chain page is the chain of its first run
    assert client.get(f"/chain-{filled.converted_run}.html").text.count('data-node="run-') == \
        page.count('data-node="run-')


def test_lineage_filters(client, filled):
    assert filled.root in client.get("/lineage.html?user=bo").text  # the branch's user selects the chain
    assert "no runs recorded for these filters" in client.get("/lineage.html?user=nobody").text
    assert filled.root in client.get("/lineage.html?job=4242_3").text
    assert "no runs recorded" in client.get("/lineage.html?family=other").text
    assert "no runs recorded" in client.get("/lineage.html?since=2999-01-01").text
    assert filled.root in client.get("/lineage.html?variant=tiny/wide").text


def test_checkpoint_page_shows_evidence_writer_resumes_and_conversion(client, filled, reg):
    source = reg.list_checkpoints(run_id=filled.runs[-1])[-1]
    page = client.get(f"/checkpoint-{source.id}.html").text
    assert "loads into <strong>tiny/layer</strong> (schema version 2)" in page
    assert f"run-{filled.runs[-1]}.html" in page
    assert "tiny_widen" in page and "wide.safetensors" in page
    resumed = reg.list_checkpoints(run_id=filled.runs[3])[-1]
    assert f"run-{filled.runs[4]}.html" in client.get(f"/checkpoint-{resumed.id}.html").text


def test_unmatched_page_names_the_nearest_build_and_why(client, filled):
    page = client.get("/unmatched.html").text
    assert "tiny/layer" in page
    assert "`.beta/.gamma` → `.weight`" in page.replace("&#96;", "`")


def test_variant_page_shows_history_with_grouped_diff_and_module_changes(client, reg):
    from registry.store import browse

    page = client.get(f"/variant-{browse.variant_id(reg, 'tiny/layer')}.html").text
    assert "version 1" in page and "version 2" in page
    assert "removed: {1,3}.bias" in page
    assert "LayerNorm → RMSNorm" in page


def test_search_by_short_and_full_fingerprint_path_and_name(client, reg, filled):
    fingerprint = reg.latest_schema_version("tiny/wide").fingerprint
    for query in (fingerprint, fingerprint[7:19]):
        page = client.get("/search.html", params={"q": query}).text
        assert "tiny/wide</a> version 1" in page
        assert "wide.safetensors" in page
    assert "wide.safetensors" in client.get("/search.html", params={"q": "converted/wide"}).text
    assert ">tiny/layer</a>" in client.get("/search.html", params={"q": "layer"}).text


def test_markup_in_names_and_paths_renders_as_text(client, filled):
    for page in (f"/checkpoint-{filled.unmatched_checkpoint}.html", "/unmatched.html",
                 "/search.html?q=" + HOSTILE):
        html = client.get(page).text
        assert HOSTILE not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_json_api_mirrors_pages_with_cli_field_names(client, filled, reg):
    variants = client.get("/api/variants").json()
    assert {v["name"] for v in variants["variants"]} == {"tiny/layer", "tiny/wide"}
    assert {"name", "family", "family_source", "latest_version", "latest_fingerprint", "runs",
            "checkpoints"} <= set(variants["variants"][0])
    chain = client.get(f"/api/chains/{filled.root}").json()
    assert chain["root"] == filled.root and "svg" not in chain
    assert len(chain["runs"]) == len(filled.runs) + 2
    run = client.get(f"/api/runs/{filled.converted_run}").json()
    cli_run = subprocess.run([sys.executable, "-m", "registry.command.cli", "--db", reg.url, "runs", "show",
                              filled.converted_run, "--json"], capture_output=True, text=True, check=True)
    import json

    assert set(json.loads(cli_run.stdout)["run"]) >= set(run["run"])  # the same field names as --json
    checkpoint = client.get(f"/api/checkpoints/{filled.unmatched_checkpoint}").json()
    assert checkpoint["evidence"]["nearest"]["variant"] == "tiny/layer"
    assert client.get("/api/unmatched").json()["groups"][0]["checkpoints"] == 1
    assert client.get("/api/search", params={"q": "layer"}).json()["variants"][0]["name"] == "tiny/layer"
    assert client.get("/api/runs/ffffffffffff").status_code == 404
    assert client.get("/api/checkpoints/999999").json() == {"error": "no checkpoint with id 999999 in this registry"}


def test_unknown_pages_and_files_outside_static_are_refused(client):
    assert client.get("/variant-999.html").status_code == 404
    assert client.get("/run-nope.html").status_code == 404
    assert client.get("/static/style.css").status_code == 200
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/../../etc/passwd",
                 "/etc/passwd"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "import" not in response.text


def test_the_app_opens_the_database_read_only(sqlite_url, tmp_path):
    from registry.errors import DatabaseError
    from registry.store import open_registry

    with open_registry(sqlite_url, upgrade=True):
        pass
    with open_registry(sqlite_url, readonly=True) as reg:
        with pytest.raises(DatabaseError):
            reg.register_variant("x/y", "ctvit", {})


def test_static_report_has_only_relative_links_that_resolve(reg, filled, tmp_path):
    from registry.web.report import write_report

    out = tmp_path / "report"
    summary = write_report(reg, out)
    assert summary.index == str(out / "index.html")
    pages = sorted(out.glob("*.html"))
    assert len(pages) == summary.pages
    for page in pages:
        html = page.read_text()
        for link in re.findall(r'(?:href|src)="([^"#]+)', html):
            assert not link.startswith(("/", "http:", "https:", "file:")), (page.name, link)
            assert (out / link.split("?")[0]).exists(), (page.name, link)
        assert HOSTILE not in html
    assert (out / "search-index.js").read_text().startswith("window.REGISTRY_INDEX = ")
    # writing again replaces the earlier report; a foreign non-empty folder is refused
    write_report(reg, out)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    from registry.errors import UsageError

    with pytest.raises(UsageError, match="is not empty and holds no earlier report"):
        write_report(reg, foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_report_command_through_the_cli(reg, filled, tmp_path):
    out = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "registry.command.cli", "--db", reg.url, "report", "-o", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(str(out / "index.html"))
    missing = subprocess.run([sys.executable, "-m", "registry.command.cli", "--db", reg.url, "report", "-o",
                              str(tmp_path / "no" / "such" / "dir")], capture_output=True, text=True)
    assert missing.returncode == 2
    assert missing.stderr.splitlines()[0] == f"error: the folder {tmp_path / 'no' / 'such'} does not exist"
    assert "Traceback" not in missing.stderr
    assert not (tmp_path / "no").exists()


def test_big_chain_page_stays_readable(reg, tiny_family, tmp_path, monkeypatch):
    """200 straight resumes collapse to a handful of nodes."""
    from registry.web import pages
    from registry.web.render import Links, Renderer

    fill(reg, tiny_family, tmp_path / "disk", monkeypatch)
    version = reg.latest_schema_version("tiny/layer")
    resumed, first = None, None
    disk = Path(tmp_path / "long")
    disk.mkdir()
    for index in range(200):
        run = reg.start_run("tiny/layer", schema_version_id=version.id, config={}, host="h", user="u",
                            resumed_from_checkpoint_id=resumed)
        first = first or run.id
        path = disk / f"{index}.pt"
        path.write_bytes(b"x")
        resumed = reg.register_checkpoint(str(path), size=1, mtime=path.stat().st_mtime, format="torch-zip",
                                          container=None, wrapper=None, prefix=None,
                                          fingerprint=version.fingerprint, step=index, run_id=run.id).id
    html = pages.chain_page(Renderer(Links(static=False), "db"), reg, first)
    assert html.count('data-node="run-') == 2
    assert "198 resumed runs" in html


def test_serve_on_a_busy_port_is_one_line_and_exit_2(reg, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "registry.command.cli", "--db", reg.url, "serve", "--port",
                               str(port)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use",
                                        "hint: choose another --port (or --host)"]
