"""`registry info|init|db|variants` through click's CliRunner on temporary databases."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from registry.command.cli import main
from registry.store import open_registry, upgrade_database
from registry.store.engine import create_registry_engine
from registry.store.migrate import HEAD_REVISION


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env=env)


@pytest.fixture(scope="module")
def initialized(tmp_path_factory) -> str:
    """A database after `registry init` (every built-in variant), shared by the read-only tests."""
    path = tmp_path_factory.mktemp("init") / "registry.db"
    result = run("--db", str(path), "init", "--json")
    assert result.exit_code == 0, result.output
    return f"sqlite:///{path}"


def test_init_registers_every_builtin_variant_once(initialized):
    from registry.catalog import builtin_variants

    result = run("--db", initialized, "init", "--json")
    assert result.exit_code == 0, result.output
    outcomes = json.loads(result.stdout)
    assert [o["variant"] for o in outcomes] == [v.name for v in builtin_variants()]
    assert {o["status"] for o in outcomes} == {"unchanged"}
    with open_registry(initialized) as reg:
        assert reg.counts()["schema_versions"] == len(outcomes)
        version = reg.latest_schema_version("ctvit/baseline")
        assert set(version.package_versions) >= {"torch", "einops", "diffusers", "model-registry"}
        assert version.code_revision
        # schema-equivalent built-ins share a fingerprint (DESIGN §2)
        assert {v.variant for v in reg.find_by_fingerprint(version.fingerprint)} >= {"ctvit/baseline",
                                                                                       "ctvit/baseline-swiglu"}


def test_info_shows_url_source_revision_and_counts(initialized):
    result = run("--db", initialized, "info", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert (info["url"], info["source"], info["revision"], info["status"]) == (initialized, "--db", HEAD_REVISION, "current")
    assert info["counts"]["variants"] >= 17
    text = run("info", env={"REGISTRY_DB": initialized}).stdout
    assert text.splitlines()[0] == f"database         {initialized}  (from REGISTRY_DB)"


def test_info_on_a_missing_database_says_so_without_creating_it(tmp_path):
    path = tmp_path / "none.db"
    result = run("--db", str(path), "info")
    assert result.exit_code == 0
    assert f"revision         -  (missing; this code: {HEAD_REVISION})" in result.stdout
    assert result.stderr == "hint: `registry init` creates it and registers the built-in variants\n"
    assert not path.exists()


@pytest.mark.postgres
def test_info_hides_the_password(pg_server):
    url = pg_server.create_database("cli_password").replace("postgres@", "postgres:hunter2@")
    upgrade_database(url)
    result = run("--db", url, "info")
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    assert f"postgres:***@127.0.0.1:{pg_server.port}/cli_password  (from --db)" in result.stdout
    behind = pg_server.create_database("cli_behind").replace("postgres@", "postgres:hunter2@")
    result = run("--db", behind, "variants", "list")
    assert result.exit_code == 4
    shown = behind.replace("hunter2", "***")
    assert result.stderr == (
        f"error: database {shown} is at schema revision none (empty database); this version of model-registry "
        f"needs {HEAD_REVISION}\nhint: run: registry db upgrade --db {shown}\n"
    )


def test_variants_list_and_show(initialized):
    listed = json.loads(run("--db", initialized, "variants", "list", "--family", "ldm-unet", "--json").stdout)
    assert [v["name"] for v in listed] == ["ldm-unet/sd15", "ldm-unet/tiny"]
    assert listed[1]["latest_version"] == 1 and listed[1]["latest_fingerprint"].startswith("sha256:")
    shown = json.loads(run("--db", initialized, "variants", "show", "ldm-unet/tiny", "--entries", "--json").stdout)
    assert shown["variant"]["family"] == "ldm-unet" and len(shown["versions"]) == 1
    assert len(shown["entries"]) == shown["versions"][0]["entry_count"]
    table = run("--db", initialized, "variants", "list").stdout.splitlines()
    assert table[0].split() == ["variant", "family", "version", "fingerprint", "description"]


def test_unknown_variant_is_a_usage_error(initialized):
    result = run("--db", initialized, "variants", "show", "ctvit/nope")
    assert result.exit_code == 2
    assert result.stderr == ("error: unknown variant 'ctvit/nope'\n"
                             "hint: `registry variants list` shows the registered variants\n")


def test_add_then_bump_and_conflict(sqlite_url, tiny_family):
    result = run("--db", sqlite_url, "variants", "add", "w8", "--family", tiny_family, "--set", "width=8")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"registered: {tiny_family}/w8 version 1 ")
    again = run("--db", sqlite_url, "variants", "add", "w8", "--family", tiny_family, "--set", "width=8", "--json")
    assert json.loads(again.stdout)["status"] == "unchanged"
    conflict = run("--db", sqlite_url, "variants", "add", "w8", "--family", tiny_family, "--set", "width=16")
    assert conflict.exit_code == 2
    assert conflict.stderr == (
        f"error: variant '{tiny_family}/w8' is already registered with a different config "
        "(width: registered 8, given 16)\n"
        f"hint: register the new config under another name, or see `registry variants show {tiny_family}/w8`\n"
    )
    bumped = run("--db", sqlite_url, "variants", "bump", f"{tiny_family}/w8", "--json")
    assert json.loads(bumped.stdout)["status"] == "unchanged"


def test_bump_records_a_new_version_after_an_intended_change(sqlite_url, tiny_family, monkeypatch):
    from registry.families import _FAMILIES

    run("--db", sqlite_url, "variants", "add", "v", "--family", tiny_family)
    family = _FAMILIES[tiny_family]
    original = family.build
    monkeypatch.setitem(_FAMILIES, tiny_family, family.__class__(
        **{**family.__dict__, "build": lambda config: original(config.__class__(width=config.width, depth=3))}))
    bumped = run("--db", sqlite_url, "variants", "bump", f"{tiny_family}/v", "--json")
    assert bumped.exit_code == 0, bumped.output
    assert (json.loads(bumped.stdout)["status"], json.loads(bumped.stdout)["version"]) == ("recorded", 2)


def test_db_current_upgrade_downgrade(sqlite_url):
    result = run("--db", sqlite_url, "db", "upgrade")
    assert result.stdout == f"upgraded {sqlite_url} from empty to {HEAD_REVISION}\n"
    assert run("--db", sqlite_url, "db", "upgrade").stdout == f"{sqlite_url} is already at {HEAD_REVISION}\n"
    result = run("--db", sqlite_url, "db", "downgrade", "0002_event_log")
    assert result.stdout == f"downgraded {sqlite_url} from {HEAD_REVISION} to 0002_event_log\n"
    current = json.loads(run("--db", sqlite_url, "db", "current", "--json").stdout)
    assert current == {"url": sqlite_url, "revision": "0002_event_log", "head": HEAD_REVISION, "status": "behind"}


def test_a_database_newer_than_the_code_exits_4_with_one_line(sqlite_url):
    upgrade_database(sqlite_url)
    engine = create_registry_engine(sqlite_url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '0042_future'"))
    engine.dispose()
    result = run("--db", sqlite_url, "variants", "list")
    assert result.exit_code == 4
    assert result.stderr == (
        f"error: database {sqlite_url} is at schema revision 0042_future, which is newer than this version of "
        f"model-registry (newest known: {HEAD_REVISION})\n"
        "hint: upgrade model-registry to the version that wrote it; the database was not modified\n"
    )
    assert json.loads(run("--db", sqlite_url, "info", "--json").stdout)["status"] == "newer"


def test_an_uncreatable_database_location_exits_4(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run("--db", str(blocker / "sub" / "registry.db"), "init")  # a command that creates it
    assert result.exit_code == 4
    assert result.stderr.startswith(f"error: cannot create the directory of the registry database {blocker / 'sub' / 'registry.db'}: ")
    assert result.stderr.endswith("hint: pass another location with --db or REGISTRY_DB\n")


@pytest.mark.parametrize("command", [["info"], ["init"], ["db"], ["db", "upgrade"], ["db", "downgrade"],
                                     ["db", "current"], ["variants"], ["variants", "list"], ["variants", "show"],
                                     ["variants", "add"], ["variants", "bump"]])
def test_every_database_command_has_help(command):
    result = run(*command, "--help")
    assert result.exit_code == 0 and result.stdout.strip()
    if command not in (["db"], ["variants"]):
        assert "Example" in result.stdout
