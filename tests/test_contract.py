"""Every command keeps the contract (issue 13), present and future: the command tree is walked from
`registry.command.cli.main`, so a new command is covered without editing this file.

Each command runs (as the installed `registry`, in a subprocess) against every class of bad input
that its parameters admit, found by introspection:

| class | applies to | documented exit |
| --- | --- | --- |
| missing-input, folder-input, empty-input, unreadable-input | `click.Path` inputs | 2 or 3 |
| file-for-folder | `click.Path(file_okay=False)` inputs (`scan DIR`) | 2 |
| missing-output-folder, unwritable-output | `-o/--out/--output` | 2 (3 allowed) |
| malformed-config | `--config` files | 2 |
| unknown-family, unknown-variant | `--family`, `--variant`, `--to`, variant-name arguments | 2 |
| malformed-db-url, unreachable-postgres, read-only-db | every command (global `--db`) | 4 (2 for a URL that does not parse), or what it answers with a good database when it does not need it (or only reads) |
| sigint | every command, with good inputs | 130, or its own answer when it was done before the signal |

For every run: the exit code is one of those, stderr holds no `Traceback` and at most three
lines, and nothing is left behind: no new or changed file in the test's folder and no changed
row count in the database (after SIGINT: whole rows and files only, no temporary file, an intact
database). "Unreadable" and "unwritable" really fail although tests run as root: those commands
run without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (`setpriv`), so file modes apply to root too.

All runs of the module start at once on a few worker threads (subprocesses), and each
parametrized test checks its own run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest

from registry.command.cli import main

# About 160 runs (most import torch); ~90 s on 2 otherwise idle cores.
pytestmark = pytest.mark.slow

REGISTRY = str(Path(sys.executable).with_name("registry"))
WORKERS = 3
SIGINT_AFTER = 1.0  # seconds: past Python's start-up (~0.2 s), into the command's work
# A run still going after this long (a server, or a slow command on a loaded machine) is sent
# SIGINT, and must then end as an interrupted command does.
DEADLINE = 45.0

INPUT_CODES = {2, 3}
OUTPUT_CODES = {2, 3}
USAGE = {2}
DATABASE = {4}
MALFORMED_URL = {2, 4}
INTERRUPTED = {130}

# Values that make a required parameter valid, by parameter name (anything else gets "x").
GOOD = {"family": "ctvit", "family_name": "ctvit", "variant": "ctvit/tiny", "variant_name": "ctvit/tiny",
        "to": "ctvit/tiny", "name": "ctvit/tiny", "old": "ctvit/tiny", "new": "ctvit/tiny-swiglu",
        "variants": "ctvit/tiny", "revision": "head", "steps": "1", "run_id": "0123456789abcdef"}
VARIANT_PARAMS = {"variant", "variant_name", "to", "name", "old", "new", "variants"}
FAMILY_PARAMS = {"family", "family_name"}
OUTPUT_PARAMS = {"output", "out", "out_dir", "output_dir"}
FOLDER_PARAMS = {"directory", "folder", "dir"}
INPUT_PARAMS = {"path", "paths"}  # checkpoints given as plain strings (e.g. `fingerprint PATH...`)
# Commands whose normal end is Ctrl-C (a server): stopped so once serving, they exit 0; a good
# run is stopped after SERVER_UP seconds.
STOPPED_BY_CTRL_C = {("serve",)}
SERVER_UP = 5.0
# Commands whose NAME argument is the variant they create: an unknown name is the normal case.
CREATES_VARIANT = {("variants", "add")}
TABLES = ("families", "variants", "schemas", "schema_versions", "runs", "checkpoints", "events")


def walk(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    """Every leaf command below `group`, by its words (`("db", "upgrade")`)."""
    found = []
    for name in sorted(group.commands):
        command = group.commands[name]
        if isinstance(command, click.Group):
            found.extend(walk(command, (*prefix, name)))
        else:
            found.append(((*prefix, name), command))
    return found


def groups(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Group]]:
    found = [(prefix, group)]
    for name in sorted(group.commands):
        if isinstance(group.commands[name], click.Group):
            found.extend(groups(group.commands[name], (*prefix, name)))
    return found


COMMANDS = walk(main)


# --- parameters, by role -----------------------------------------------------------------------


def _is_path(param: click.Parameter) -> bool:
    return isinstance(param.type, (click.Path, click.File))


def _is_output(param: click.Parameter) -> bool:
    if isinstance(param.type, click.File):
        return "w" in param.type.mode or "a" in param.type.mode
    return _is_path(param) and (param.name in OUTPUT_PARAMS or "-o" in getattr(param, "opts", ()))


def _is_config(param: click.Parameter) -> bool:
    return _is_path(param) and "config" in (param.name or "") and not _is_output(param)


def _is_input(param: click.Parameter) -> bool:
    return _is_path(param) and not _is_output(param) and not _is_config(param)


def _dir_only(param: click.Parameter) -> bool:
    return isinstance(param.type, click.Path) and (not param.type.file_okay or param.name in FOLDER_PARAMS)


def _flag(param: click.Parameter) -> str:
    return max(param.opts, key=len)  # the long spelling


@dataclass
class Workspace:
    """The files a run may touch, in one folder; `db` is a copy of an initialised registry."""

    root: Path
    db_path: Path
    ckpt: Path
    ckpt_dir: Path
    config: Path

    @property
    def db(self) -> str:
        return f"sqlite:///{self.db_path}"


def _value(param: click.Parameter, ws: Workspace, command: tuple[str, ...]) -> str:
    if _is_output(param):
        return str(ws.root / "out" / ("outdir" if _dir_only(param) or param.name == "out" else "out.yaml"))
    if _is_config(param):
        return str(ws.config)
    if _is_input(param) or param.name in INPUT_PARAMS:
        return str(ws.ckpt_dir if _dir_only(param) else ws.ckpt)
    if param.name == "port":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return str(sock.getsockname()[1])
    return GOOD.get(param.name or "", "x")


def good_args(command: tuple[str, ...], cmd: click.Command, ws: Workspace, **replace: str) -> list[str]:
    """Arguments that make `command` valid on the workspace's database: every required parameter
    (and --port, and the build to use: --variant, else --family) gets a good value; `replace`
    swaps one parameter's value by name."""
    args: list[str] = ["--db", ws.db, *command]
    names = {p.name for p in cmd.params}
    scope = "variant" if "variant" in names else "family" if "family" in names else None
    for param in cmd.params:
        name = param.name or ""
        if isinstance(param, click.Argument):
            args.append(replace.get(name, _value(param, ws, command)))
        elif isinstance(param, click.Option) and not param.is_flag and (
                param.required or name in replace or name in ("port", scope)):
            args.extend([_flag(param), replace.get(name, _value(param, ws, command))])
    return args


def _with_db(args: list[str], url: str) -> list[str]:
    """`args` (from `good_args`) with another `--db`."""
    return ["--db", url, *args[2:]]


# --- the cases ---------------------------------------------------------------------------------


@dataclass
class Case:
    command: tuple[str, ...]
    klass: str
    build: object  # (ws) -> (args, extra keyword arguments for the run)
    codes: set[int]
    restricted: bool = False  # run without the DAC capabilities (file modes bind root too)
    db_class: bool = False  # also accept the command's answer with a good database
    sigint: bool = False

    @property
    def id(self) -> str:
        return f"{'-'.join(self.command)}:{self.klass}"


def _cases_for(words: tuple[str, ...], cmd: click.Command) -> list[Case]:
    cases: list[Case] = []
    params = list(cmd.params)

    def add(klass: str, codes: set[int], build, **kw) -> None:
        cases.append(Case(words, klass, build, codes, **kw))

    for param in params:
        name = param.name or ""
        if _is_input(param):
            if _dir_only(param):
                add(f"file-for-folder[{name}]", USAGE, lambda ws, n=name: good_args(words, cmd, ws, **{n: str(ws.ckpt)}))
                add(f"missing-input[{name}]", INPUT_CODES,
                    lambda ws, n=name: good_args(words, cmd, ws, **{n: str(ws.root / "nope")}))
                continue
            add(f"missing-input[{name}]", INPUT_CODES,
                lambda ws, n=name: good_args(words, cmd, ws, **{n: str(ws.root / "nope.pt")}))
            add(f"folder-input[{name}]", INPUT_CODES,
                lambda ws, n=name: good_args(words, cmd, ws, **{n: str(_empty_folder(ws))}))
            add(f"empty-input[{name}]", INPUT_CODES,
                lambda ws, n=name: good_args(words, cmd, ws, **{n: str(_file(ws, "empty.pt", b""))}))
            add(f"unreadable-input[{name}]", INPUT_CODES,
                lambda ws, n=name: good_args(words, cmd, ws, **{n: str(_file(ws, "locked.pt", ws.ckpt.read_bytes(), 0))}),
                restricted=True)
        elif _is_output(param):
            leaf = "outdir" if _dir_only(param) or name == "out" else "out.yaml"
            add(f"missing-output-folder[{name}]", OUTPUT_CODES,
                lambda ws, n=name, leaf=leaf: good_args(words, cmd, ws, **{n: str(_file(ws, "a-file", b"x") / leaf)}))
            add(f"unwritable-output[{name}]", OUTPUT_CODES,
                lambda ws, n=name, leaf=leaf: good_args(words, cmd, ws, **{n: str(_locked_folder(ws) / leaf)}),
                restricted=True)
        elif _is_config(param):
            add(f"malformed-config[{name}]", USAGE,
                lambda ws, n=name: good_args(words, cmd, ws, **{n: str(_file(ws, "bad.yaml", b"{not: [valid"))}))
        elif name in FAMILY_PARAMS and not getattr(param, "is_flag", False):
            add(f"unknown-family[{name}]", USAGE, lambda ws, n=name: good_args(words, cmd, ws, **{n: "nofam"}))
        elif name in VARIANT_PARAMS and words not in CREATES_VARIANT and not getattr(param, "is_flag", False):
            add(f"unknown-variant[{name}]", USAGE, lambda ws, n=name: good_args(words, cmd, ws, **{n: "ctvit/nope"}))

    add("malformed-db-url", MALFORMED_URL, lambda ws: _with_db(good_args(words, cmd, ws), "postgresql://user@[broken/db"),
        db_class=True)
    add("unreachable-postgres", DATABASE, lambda ws: _with_db(
        good_args(words, cmd, ws), f"postgresql://registry@127.0.0.1:{_closed_port()}/registry"), db_class=True)
    add("read-only-db", DATABASE, lambda ws: _with_db(good_args(words, cmd, ws), _read_only_db(ws)),
        db_class=True, restricted=True)
    add("sigint", INTERRUPTED | ({0} if words in STOPPED_BY_CTRL_C else set()), lambda ws: good_args(words, cmd, ws),
        sigint=True)
    return cases


def _file(ws: Workspace, name: str, data: bytes, mode: int = 0o644) -> Path:
    path = ws.root / name
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _empty_folder(ws: Workspace) -> Path:
    path = ws.root / "empty-folder"
    path.mkdir(exist_ok=True)
    return path


def _locked_folder(ws: Workspace) -> Path:
    path = ws.root / "locked-folder"
    path.mkdir(exist_ok=True)
    path.chmod(0o555)
    return path


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on return: nothing listens there


def _read_only_db(ws: Workspace) -> str:
    """The registry file and its folder made read-only (the run has no DAC override)."""
    folder = ws.root / "ro-db"
    folder.mkdir()
    path = folder / "registry.db"
    with sqlite3.connect(ws.db_path) as con:  # one file, no -wal beside it
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(ws.db_path, path)
    path.chmod(0o444)
    folder.chmod(0o555)
    ws.db_path = path  # the rows to compare are this file's
    return f"sqlite:///{path}"


CASES = [case for words, cmd in COMMANDS for case in _cases_for(words, cmd)]


# --- running them ------------------------------------------------------------------------------


@dataclass
class Outcome:
    args: list[str]
    code: int
    stdout: str
    stderr: str
    files_before: dict[str, tuple[int, int]]
    files_after: dict[str, tuple[int, int]]
    rows_before: dict[str, int]
    rows_after: dict[str, int]
    integrity: str
    root: str = ""
    signalled: bool = False
    baseline: Outcome | None = field(default=None, repr=False)


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every file below `root` with size and mtime (the database files and the out/ folder of
    a successful run are compared separately)."""
    out = {}
    for path in root.rglob("*"):
        rel = str(path.relative_to(root))
        if path.is_file() and not rel.startswith(("registry.db", "ro-db/registry.db")):
            stat = path.stat()
            out[rel] = (stat.st_size, int(stat.st_mtime_ns))
    return out


def _rows(db_path: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as con:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def _integrity(db_path: Path) -> str:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as con:
        return con.execute("PRAGMA integrity_check").fetchone()[0]


def _run(args: list[str], ws: Workspace, restricted: bool, sigint: bool, deadline: float = DEADLINE
         ) -> tuple[int, str, str, bool]:
    prefix = []
    if restricted and os.geteuid() == 0:
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    env = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_DB", "REGISTRY_DEBUG")}
    env["XDG_DATA_HOME"] = str(ws.root / "xdg")
    process = subprocess.Popen([*prefix, REGISTRY, *args], cwd=ws.root, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    signalled = False
    try:
        process.wait(timeout=SIGINT_AFTER if sigint else deadline)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        signalled = True
    try:
        out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        err += "\n[contract test: killed 30 s after SIGINT]"
    return process.returncode, out, err, signalled


def _workspace(base: Path, initialised: Path, ckpt: Path) -> Workspace:
    base.mkdir(parents=True)
    db_path = base / "registry.db"
    shutil.copy(initialised, db_path)
    ckpt_dir = base / "ckpts"
    ckpt_dir.mkdir()
    shutil.copy(ckpt, ckpt_dir / "model.pt")
    shutil.copy(ckpt, base / "ckpt.pt")
    config = base / "config.yaml"
    config.write_text("dim: 32\n")
    return Workspace(base, db_path, base / "ckpt.pt", ckpt_dir, config)


def _execute(case: Case, base: Path, initialised: Path, ckpt: Path) -> Outcome:
    ws = _workspace(base, initialised, ckpt)
    args = case.build(ws)
    files_before, rows_before = _listing(ws.root), _rows(ws.db_path)
    code, out, err, signalled = _run(args, ws, case.restricted, case.sigint,
                                     SERVER_UP if case.command in STOPPED_BY_CTRL_C else DEADLINE)
    outcome = Outcome(args, code, out, err, files_before, _listing(ws.root), rows_before, _rows(ws.db_path),
                      _integrity(ws.db_path), str(ws.root), signalled)
    if case.db_class and code not in case.codes and not signalled:
        outcome.baseline = baseline(case, base, initialised, ckpt)
    return outcome


_BASELINES: dict[tuple[str, ...], Future] = {}
_BASELINE_LOCK = threading.Lock()


def baseline(case: Case, base: Path, initialised: Path, ckpt: Path) -> Outcome:
    """The command's answer with good inputs and a good database (once per command): a command
    that never opens the database, or only reads it, answers the same with a bad `--db`."""
    with _BASELINE_LOCK:
        future = _BASELINES.get(case.command)
        owner = future is None
        if owner:
            future = _BASELINES[case.command] = Future()
    if owner:
        good = _workspace(base.with_name(base.name + "-baseline"), initialised, ckpt)
        args = _with_db(case.build(good), good.db)
        code, out, err, _ = _run(args, good, False, False)
        future.set_result(Outcome(args, code, out, err, {}, {}, {}, {}, "", str(good.root)))
    return future.result()


@pytest.fixture(scope="module")
def initialised(tmp_path_factory) -> Path:
    from registry.store import open_registry
    from registry.store.variants import init_builtin_variants

    path = tmp_path_factory.mktemp("contract-db") / "registry.db"
    with open_registry(f"sqlite:///{path}", upgrade=True) as reg:
        init_builtin_variants(reg)
    with sqlite3.connect(path) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint `registry train` wrote for ctvit/tiny (embedded metadata: an exact match)."""
    import torch

    from registry.catalog import get_builtin_variant
    from registry.families import get_family, make_config

    spec = get_builtin_variant("ctvit/tiny")
    family = get_family(spec.family)
    path = tmp_path_factory.mktemp("contract-ckpt") / "tiny.pt"
    torch.save(family.build(make_config(family, spec.config)).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def outcomes(initialised, tiny_checkpoint, tmp_path_factory) -> dict[str, Future]:
    base = tmp_path_factory.mktemp("contract-runs")
    pool = ThreadPoolExecutor(max_workers=WORKERS)
    started = {case.id: pool.submit(_execute, case, base / f"c{i:03d}", initialised, tiny_checkpoint)
               for i, case in enumerate(CASES)}
    yield started
    pool.shutdown(wait=True)


# --- the checks --------------------------------------------------------------------------------


def _same_answer(outcome: Outcome, baseline: Outcome) -> bool:
    """The same stdout, once each run's own database URL and folder are blanked out."""
    def blank(o: Outcome) -> str:
        return o.stdout.replace(o.args[1], "<db>").replace(o.root, "<dir>")
    return blank(outcome) == blank(baseline)


def _stderr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def violations(case: Case, outcome: Outcome) -> list[str]:
    """What in `outcome` breaks the contract (nothing: an empty list)."""
    found = []
    if "Traceback" in outcome.stderr or "terminate called" in outcome.stderr:
        found.append("a traceback or abort on stderr")
    if len(_stderr_lines(outcome.stderr)) > 3:
        found.append("more than three lines on stderr")
    allowed = set(case.codes)
    if outcome.baseline is not None and _same_answer(outcome, outcome.baseline):
        allowed.add(outcome.baseline.code)  # it answers as it does with a good database
    if case.sigint and not outcome.signalled:  # done before the signal: not an interruption
        allowed = {0, 1, 2, 3, 4}
    if outcome.signalled and not case.sigint:  # still running at the deadline: interrupted
        allowed = INTERRUPTED | ({0} if case.command in STOPPED_BY_CTRL_C else set())
    if outcome.signalled and INTERRUPTED <= allowed:
        allowed.add(-signal.SIGINT)  # killed by SIGINT after the command ended (a shell shows 130)
    if outcome.code not in allowed:
        found.append(f"exit {outcome.code}, not one of {sorted(allowed)}")
    if outcome.integrity != "ok":
        found.append(f"database integrity: {outcome.integrity}")
    created = set(outcome.files_after) - set(outcome.files_before)
    leftovers = [name for name in created if Path(name).name.startswith(".") and ".tmp-" in name]
    if leftovers:
        found.append(f"temporary files left behind: {leftovers}")
    if outcome.code != 0 and not outcome.signalled:
        if outcome.files_after != outcome.files_before:
            changed = sorted(set(outcome.files_after.items()) ^ set(outcome.files_before.items()))
            found.append(f"files changed by a failed run: {changed[:4]}")
        if outcome.rows_after != outcome.rows_before:
            found.append(f"rows changed by a failed run: {outcome.rows_before} -> {outcome.rows_after}")
    return found


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_command_keeps_the_contract(case: Case, outcomes):
    outcome: Outcome = outcomes[case.id].result()
    problems = violations(case, outcome)
    assert not problems, (f"registry {' '.join(outcome.args)}\nexit {outcome.code}\nstderr:\n{outcome.stderr}"
                          + "".join(f"\n- {p}" for p in problems))


def test_the_tree_is_walked():
    """The walk finds nested commands (so a new one is covered) and the classes apply."""
    words = {" ".join(w) for w, _ in COMMANDS}
    assert {"match", "resolve", "db upgrade", "variants diff", "scan", "train"} <= words
    classes = {(" ".join(c.command), c.klass.split("[")[0]) for c in CASES}
    assert ("match", "unreadable-input") in classes and ("scan", "file-for-folder") in classes
    assert ("resolve", "unwritable-output") in classes and ("schema", "malformed-config") in classes
    assert ("match", "unknown-family") in classes and ("variants diff", "unknown-variant") in classes


@pytest.mark.parametrize("path,group", groups(main)[1:], ids=[" ".join(p) for p, _ in groups(main)[1:]])
def test_a_group_help_names_every_subcommand(path, group):
    summary = " ".join((group.help or "").split())
    missing = [name for name in group.commands if name not in summary]
    assert not missing, f"`registry {' '.join(path)} --help` does not name {missing}: {summary!r}"


def test_no_command_shadows_a_global_option():
    """Global options may follow a command name (they are moved before it), so no command may
    define an option of the same spelling."""
    globals_ = {o for p in main.params if isinstance(p, click.Option) and not p.is_eager for o in p.opts}
    for words, cmd in COMMANDS:
        clash = globals_ & {o for p in cmd.params if isinstance(p, click.Option) for o in p.opts}
        assert not clash, f"registry {' '.join(words)} defines {clash}"
