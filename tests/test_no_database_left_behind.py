"""A command that fails leaves no registry database behind; one that only reads never creates it.

Seen in issue 13's follow-up: `registry variants list` on a machine with no registry yet created the
default SQLite file (and `train` with an unknown variant, and every other command that opens the
database for writing before it fails). Every command, present and future (the command tree is
walked), runs as the installed `registry` against a database that does not exist yet, in a folder
that does not exist yet either: a failure must leave neither behind; a read must say where the
registry would be and how to create it (exit 4).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import pytest
import torch

from registry.command.cli import main

REGISTRY = str(Path(sys.executable).with_name("registry"))
# Commands that may create the database when they succeed: their job is to record something.
# (`init` runs in a project whose declaration is malformed: a full init takes a minute on a busy
# machine, and this way it fails as commands do.)
CREATORS = {("db", "upgrade"), ("scan",)}
# Read commands: a missing registry is exit 4 with the way to create it.
READERS = {("audit",), ("checkpoints", "list"), ("runs", "list"), ("runs", "show"), ("variants", "list"),
           ("variants", "show"), ("variants", "diff"), ("variants", "bump"), ("check",), ("report",),
           ("serve",), ("db", "downgrade"), ("match",), ("resolve",)}
GOOD = {"variants": "ctvit/tiny", "name": "ctvit/tiny", "old": "ctvit/tiny", "new": "ctvit/tiny-swiglu",
        "to": "ctvit/tiny", "family": "ctvit", "variant": "ctvit/tiny", "revision": "head", "steps": "1",
        "run_id": "0123456789abcdef"}


def walk(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found = []
    for name in sorted(group.commands):
        command = group.commands[name]
        found.extend(walk(command, (*prefix, name)) if isinstance(command, click.Group) else [((*prefix, name), command)])
    return found


COMMANDS = walk(main)


def arguments(words: tuple[str, ...], command: click.Command, root: Path) -> list[str]:
    """Good values for the required parameters (and the build: --variant, else --family)."""
    args = list(words)
    names = {p.name for p in command.params}
    scope = "variant" if "variant" in names else "family" if "family" in names else None
    for param in command.params:
        name = param.name or ""
        if name in ("out_dir", "output"):
            value = str(root / ("out" if name == "out_dir" else "out.safetensors"))
        elif name in ("path", "paths"):
            value = str(root / "tiny.pt")
        elif name == "directory":
            value = str(root / "checkpoints")
        else:
            value = GOOD.get(name, "x")
        if isinstance(param, click.Argument):
            args.append(value)
        elif isinstance(param, click.Option) and not param.is_flag and (param.required or name == scope):
            args.extend([max(param.opts, key=len), value])
    return args


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[tuple[str, ...], tuple[subprocess.CompletedProcess, Path]]:
    """Every command run once, three at a time, each in its own folder with a tiny checkpoint."""
    base = tmp_path_factory.mktemp("fresh")
    from registry.catalog import get_builtin_variant
    from registry.families import get_family, make_config

    spec = get_builtin_variant("ctvit/tiny")
    family = get_family(spec.family)
    torch.save(family.build(make_config(family, spec.config)).state_dict(), base / "tiny.pt")

    def run(words: tuple[str, ...], command: click.Command):
        root = base / "-".join(words)
        (root / "checkpoints").mkdir(parents=True)
        os.link(base / "tiny.pt", root / "tiny.pt")
        os.link(base / "tiny.pt", root / "checkpoints" / "tiny.pt")
        if words == ("init",):
            (root / "pyproject.toml").write_text('[project]\nname = "mine"\n[tool.registry]\nvariants = 5\n')
        db = root / "new-folder" / "registry.db"
        env = {**os.environ, "HOME": str(root / "home"), "XDG_DATA_HOME": str(root / "home" / "data")}
        env.pop("REGISTRY_DB", None)
        try:
            done = subprocess.run([REGISTRY, "--db", str(db), *arguments(words, command, root)], cwd=root, env=env,
                                  capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired as exc:  # `serve` would serve: it must not get that far
            done = subprocess.CompletedProcess(exc.cmd, -1, "", "timed out")
        return done, root

    with ThreadPoolExecutor(3) as pool:
        futures = {words: pool.submit(run, words, command) for words, command in COMMANDS}
        return {words: future.result() for words, future in futures.items()}


@pytest.mark.parametrize("words", [w for w, _ in COMMANDS], ids=[" ".join(w) for w, _ in COMMANDS])
def test_no_database_is_left_by_a_command_that_did_not_record_anything(outcomes, words):
    done, root = outcomes[words]
    db = root / "new-folder" / "registry.db"
    assert "Traceback" not in done.stderr, done.stderr
    if words in READERS:
        assert done.returncode == 4, (done.returncode, done.stderr)
        assert done.stderr == (f"error: no registry database at {db}\n"
                               f"hint: create it with: registry init --db sqlite:///{db}\n")
    if done.returncode != 0 or words not in CREATORS:
        assert not (root / "new-folder").exists(), (done.returncode, done.stderr, sorted((root / "new-folder").iterdir()))
    else:
        assert db.is_file()
    assert not (root / "home").exists()  # the default location was not touched either


def test_the_default_location_is_not_created_by_a_failed_write(tmp_path):
    """No --db: `train` with a variant not registered, `variants list` before any `init`."""
    env = {**os.environ, "HOME": str(tmp_path / "home"), "XDG_DATA_HOME": str(tmp_path / "data")}
    env.pop("REGISTRY_DB", None)
    default = tmp_path / "data" / "model-registry" / "registry.db"
    train = subprocess.run([REGISTRY, "train", "--variant", "ctvit/tiny", "--out", str(tmp_path / "out"), "--steps", "1"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert train.returncode == 2 and "unknown variant 'ctvit/tiny'" in train.stderr, train.stderr
    listing = subprocess.run([REGISTRY, "variants", "list"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=120)
    assert (listing.returncode, listing.stderr) == (
        4, f"error: no registry database at {default}\nhint: create it with: registry init\n")
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()
    create = subprocess.run([REGISTRY, "db", "upgrade"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert create.returncode == 0 and default.is_file(), create.stderr  # the control: this one creates it


def test_a_new_database_another_process_has_open_is_kept(tmp_path):
    """A failed command removes the file it created only while nobody else uses it (a job that
    started beside it on the same fresh database keeps its registry)."""
    from registry.store import open_registry
    from registry.store import engine as store_engine

    path = tmp_path / "shared" / "registry.db"
    store_engine.forget_created()
    with open_registry(f"sqlite:///{path}"):
        pass
    other = sqlite3.connect(path)
    other.execute("SELECT count(*) FROM variants").fetchone()
    try:
        assert store_engine.discard_created() == []
        assert path.is_file()
    finally:
        other.close()

    store_engine.forget_created()
    with open_registry(f"sqlite:///{tmp_path / 'rows' / 'registry.db'}") as reg:
        reg.register_variant("ctvit/mine", "ctvit", {"dim": 8})
    assert store_engine.discard_created() == []  # something was recorded in it: kept
    assert (tmp_path / "rows" / "registry.db").is_file()
