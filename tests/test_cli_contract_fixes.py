"""The failures of issue 13 ("Every command keeps the contract"), each as a user meets it: a plain
state dict two variants build, `--db` after the command name, an unknown `--family`, Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from registry.catalog import get_builtin_variant
from registry.command.cli import main
from registry.families import get_family, make_config

REGISTRY = str(Path(sys.executable).with_name("registry"))


@pytest.fixture(scope="module")
def initialised(tmp_path_factory) -> Path:
    """One registry file with the built-in variants, copied by each test (`db`)."""
    from registry.store import open_registry
    from registry.store.variants import init_builtin_variants

    path = tmp_path_factory.mktemp("initialised") / "registry.db"
    with open_registry(f"sqlite:///{path}", upgrade=True) as reg:
        init_builtin_variants(reg)
    return path


@pytest.fixture
def db(initialised, tmp_path) -> str:
    copy = tmp_path / "registry.db"
    shutil.copy(initialised, copy)
    return f"sqlite:///{copy}"


def plain_state_dict(variant: str, path: Path, **changes) -> Path:
    """A bare `torch.save(model.state_dict())` of a built-in variant: no registry metadata."""
    spec = get_builtin_variant(variant)
    family = get_family(spec.family)
    torch.save(family.build(make_config(family, {**spec.config, **changes})).state_dict(), path)
    return path


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


# --- 1. an ambiguous schema: a listing and a hint, never a crash --------------------------------


@pytest.fixture(scope="module")
def tiny_plain(tmp_path_factory) -> str:
    return str(plain_state_dict("ctvit/tiny", tmp_path_factory.mktemp("plain") / "tiny.pt"))


@pytest.mark.parametrize("command", [["match"], ["match", "--family", "ctvit"], ["resolve"]])
def test_ambiguous_schema_lists_the_candidates_and_says_how_to_pick(db, tiny_plain, command):
    result = run("--db", db, command[0], tiny_plain, *command[1:])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stdout.splitlines() == [
        "ambiguous: 2 variants build this schema",
        "  ctvit/tiny (schema version 1)",
        "  ctvit/tiny-swiglu (schema version 1)",
    ]
    assert stderr_lines(result) == [
        "try: several variants build this schema (ctvit/tiny, ctvit/tiny-swiglu): choose one with --variant"]


@pytest.mark.parametrize("command", ["match", "resolve"])
def test_ambiguous_schema_as_json(db, tiny_plain, command):
    result = run("--db", db, command, tiny_plain, "--json")
    assert result.exit_code == 1, result.output
    answer = json.loads(result.stdout)
    assert answer["status"] == "ambiguous"
    assert [c["variant"] for c in answer["candidates"]] == ["ctvit/tiny", "ctvit/tiny-swiglu"]


def test_variant_picks_one_of_an_ambiguous_schema(db, tiny_plain):
    result = run("--db", db, "resolve", tiny_plain, "--variant", "ctvit/tiny-swiglu", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["variant"] == "ctvit/tiny-swiglu"


# --- 4. an unknown --family or --variant is a usage error --------------------------------------


@pytest.mark.parametrize(("option", "message"), [
    (["--family", "nofam"], "error: unknown family 'nofam'"),
    (["--variant", "ctvit/nope"], "error: unknown variant 'ctvit/nope'"),
])
@pytest.mark.parametrize("command", ["match", "resolve"])
def test_unknown_family_or_variant_is_a_usage_error(db, tiny_plain, command, option, message):
    result = run("--db", db, command, tiny_plain, *option)
    assert result.exit_code == 2, result.output
    assert stderr_lines(result)[0] == message
    assert result.stdout == ""


# --- 2. --db (and --debug) after the command name ----------------------------------------------


def test_db_after_the_command_name_as_the_hints_write_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    upgraded = run("db", "upgrade", "--db", url)
    assert upgraded.exit_code == 0, upgraded.output
    assert upgraded.stdout.startswith(f"upgraded {url} from empty to ")
    current = run("db", "current", "--json", f"--db={url}")
    assert json.loads(current.stdout)["status"] == "current"
    assert run("--db", url, "db", "current", "--json").stdout == current.stdout  # before still works


def test_global_options_follow_any_command(db, tiny_plain):
    info = run("info", "--json", "--db", db)
    assert info.exit_code == 0, info.output
    assert json.loads(info.stdout)["source"] == "--db"
    matched = run("match", tiny_plain, "--debug", "--variant", "ctvit/tiny", "--db", db)
    assert (matched.exit_code, matched.stdout.splitlines()[0]) == (0, "exact: ctvit/tiny (schema version 1)")
    assert "may come before or after the command name" in " ".join(run("db", "upgrade", "--help").stdout.split())


def test_an_option_value_after_double_dash_is_not_taken(db):
    # `db downgrade -- -1` passes "-1" as the revision; "--db" after "--" would be an argument.
    result = run("--db", db, "db", "downgrade", "--", "--db")
    assert result.exit_code != 0 and "Traceback" not in result.output


# --- 5. Ctrl-C: exit 130, no C++ abort, nothing half-written -----------------------------------


def test_interrupt_during_a_torch_import_waits_for_the_import(monkeypatch):
    """The mechanism behind "no C++ abort": a SIGINT while a torch module is half-imported is
    raised only once that import is done (raising inside torch's C++ start-up aborts the process)."""
    import types

    from registry.interrupts import interrupts_deferred_during_native_imports

    half_imported = types.ModuleType("torch._being_imported")
    half_imported.__spec__ = types.SimpleNamespace(_initializing=True)
    monkeypatch.setitem(sys.modules, "torch._being_imported", half_imported)
    finished = None
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred_during_native_imports():
            os.kill(os.getpid(), signal.SIGINT)
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:  # still "importing": no KeyboardInterrupt here
                time.sleep(0.01)
            half_imported.__spec__._initializing = False
            finished = time.monotonic()
            time.sleep(2)
    assert finished is not None, "raised while the import was still running"
    assert time.monotonic() - finished < 1


def test_an_interrupt_held_back_is_not_lost_when_the_command_ends_by_exiting(monkeypatch):
    """A command ends with click's `ctx.exit(code)`, an exception: a SIGINT held back by a torch
    import still running at that moment (seen: `registry check` importing torch._dynamo) must end
    the command as interrupted, not with the command's exit 0."""
    import types

    import click

    from registry.interrupts import interrupts_deferred_during_native_imports

    half_imported = types.ModuleType("torch._being_imported")
    half_imported.__spec__ = types.SimpleNamespace(_initializing=True)
    monkeypatch.setitem(sys.modules, "torch._being_imported", half_imported)
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred_during_native_imports():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the handler ran and held the interrupt back
            raise click.exceptions.Exit(0)


def _plain_folder(root: Path, count: int) -> Path:
    """`count` bare state dicts of unregistered tiny CTViT configs: `scan` infers each one's
    config, which imports torch part-way through the scan."""
    for i in range(count):
        folder = root / f"run{i:02d}"
        folder.mkdir(parents=True)
        plain_state_dict("ctvit/tiny", folder / "model.pt", dim=40 + 8 * (i % 4))
    return root


def _rows(db_path: Path) -> list[tuple]:
    with sqlite3.connect(db_path) as con:
        return con.execute("SELECT path, fingerprint, size FROM checkpoints ORDER BY path").fetchall()


@pytest.mark.slow
def test_ctrl_c_during_scan_exits_130_and_leaves_whole_rows(initialised, tmp_path):
    folder = _plain_folder(tmp_path / "runs", 12)
    before = sorted(p.name for p in folder.rglob("*"))
    outcomes = []
    for attempt, delay in enumerate((0.05, 0.3, 0.8, 1.5, 2.5)):
        db_path = tmp_path / f"r{attempt}.db"
        shutil.copy(initialised, db_path)
        process = subprocess.Popen([REGISTRY, "--db", f"sqlite:///{db_path}", "scan", str(folder)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0 + delay)  # past Python's start-up, into the scan (and its torch import)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
        outcomes.append((process.returncode, err))
        assert "Traceback" not in err and "terminate called" not in err, err
        # -SIGINT: the signal came after the command ended, as Python exits (a shell shows 130 too)
        assert process.returncode in (0, 130, -signal.SIGINT), (process.returncode, err)
        if process.returncode == 130:
            assert err.strip().splitlines()[-1] == "interrupted"
        assert sorted(p.name for p in folder.rglob("*")) == before  # scan never writes beside files
        for path, fingerprint, size in _rows(db_path):  # every recorded row is whole
            assert fingerprint.startswith("sha256:") and len(fingerprint) == 71 and size == os.path.getsize(path)
        with sqlite3.connect(db_path) as con:
            assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert any(code == 130 for code, _ in outcomes), outcomes  # the signals did land mid-scan


# --- 6. an accelerate folder's step is in its name ---------------------------------------------


def test_accelerate_folder_name_carries_the_step(db, tiny_plain, tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "out" / "checkpoint-00005000"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in torch.load(tiny_plain).items()}, folder / "model.safetensors")
    (folder / "optimizer.bin").write_bytes(b"never read")
    (folder / "random_states_0.pkl").write_bytes(b"never read")
    fingerprinted = run("fingerprint", str(folder), "--json")
    assert fingerprinted.exit_code == 0, fingerprinted.output
    assert json.loads(fingerprinted.stdout)[0]["step"] == 5000
    scanned = run("--db", db, "scan", str(folder.parent), "--json")
    assert [c["step"] for c in json.loads(scanned.stdout)["checkpoints"]] == [5000]


# --- 7. audit names the checkpoint a run resumed from by its path and step ---------------------


def test_audit_names_a_resumed_checkpoint_by_path_and_step(db, tmp_path):
    from registry.store import open_registry

    source = str(tmp_path / "downloaded" / "ckpt.pt")
    with open_registry(db) as reg:
        row = reg.register_checkpoint(source, size=1234, mtime=1.0e9, format="torch-zip", container=None,
                                      wrapper=None, prefix="", fingerprint="sha256:" + "b" * 64, step=4000,
                                      run_id=None)
        version = reg.latest_schema_version("ctvit/tiny")
        run_id = reg.start_run("ctvit/tiny", schema_version_id=version.id, config={}, host="node1", user="me",
                               resumed_from_checkpoint_id=row.id).id
    text = run("--db", db, "audit")
    assert text.exit_code == 0, text.output
    line = next(line for line in text.stdout.splitlines() if line.lstrip().startswith(run_id))
    assert line.endswith(f"{source} @ step 4000")
    assert "checkpoint " not in line
    as_json = json.loads(run("--db", db, "audit", "--json").stdout)
    summary = next(r for chain in as_json["chains"] for r in chain["runs"] if r["id"] == run_id)
    assert (summary["resumed_from_path"], summary["resumed_from_step"]) == (source, 4000)


# --- 8. pickle messages in a user's words -------------------------------------------------------


class _CountedTokens:
    """Pickles as `collections.Counter(["a", "a", "b"])`: a well-formed Counter built from elements."""

    def __reduce__(self):
        import collections

        return collections.Counter, (["a", "a", "b"],)


def test_a_counter_in_a_checkpoint_fingerprints(tmp_path):
    path = tmp_path / "with_counts.pt"
    torch.save({"model": {"w": torch.zeros(2, 3)}, "token_counts": _CountedTokens()}, path)
    result = run("fingerprint", str(path), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["entries"] == 1


def _with_data_pkl(tmp_path: Path, name: str, record: bytes) -> Path:
    """A torch zip checkpoint whose pickle record is `record`."""
    import zipfile

    base = tmp_path / "base.pt"
    torch.save({"w": torch.zeros(2)}, base)
    path = tmp_path / name
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            out.writestr(info.filename, record if info.filename.endswith("/data.pkl") else src.read(info.filename))
    return path


@pytest.mark.parametrize(("record", "message"), [
    (b"\x80\x02R.", "corrupt pickle: an opcode takes more values than the stack holds (REDUCE near byte 2)"),
    (b"\x80\x02h\x05.", "corrupt pickle: it refers to a memo entry it never stored (BINGET near byte 2)"),
])
def test_a_corrupt_pickle_is_described_plainly(tmp_path, record, message):
    path = _with_data_pkl(tmp_path, "corrupt.pt", record)
    result = run("fingerprint", str(path))
    assert result.exit_code == 3
    assert stderr_lines(result) == [f"error: cannot read {path}: {message}"]


# --- 9. small things: python -m registry, the variants help, scan's first ETA ------------------


def test_python_dash_m_registry_runs_the_command():
    done = subprocess.run([sys.executable, "-m", "registry", "--version"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "registry, version 0.1.0")


def test_variants_help_lists_every_subcommand():
    help_text = " ".join(run("variants", "--help").stdout.split())
    assert "Registered variants: list, show, add, bump, diff." in help_text


def _under_a_terminal(args: list[str], timeout: float = 120) -> tuple[int, str]:
    """Run `registry ARGS` with stderr on a pseudo-terminal (where the progress bar shows)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    process = subprocess.Popen([REGISTRY, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return process.wait(timeout=timeout), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_scan_eta_is_not_thrown_off_by_the_first_checkpoint(db, tiny_plain, tmp_path):
    import re

    folder = tmp_path / "runs"
    folder.mkdir()
    # the first checkpoint needs config inference (it imports torch: seconds); the others are quick
    plain_state_dict("ctvit/tiny", folder / "a_unregistered.pt", dim=48)
    for i in range(40):
        shutil.copy(tiny_plain, folder / f"b{i:02d}.pt")
    started = time.monotonic()
    code, screen = _under_a_terminal(["--db", db, "scan", str(folder)])
    took = time.monotonic() - started
    assert code == 0, screen
    assert "scanning" in screen  # the bar did show
    etas = [int(h or 0) * 3600 + int(m) * 60 + int(s) for h, m, s in re.findall(r"(?:(\d+):)?(\d\d):(\d\d)", screen)]
    assert etas, screen
    assert max(etas) <= took + 5, (etas, took)


def test_train_prints_progress_between_checkpoints(db, tmp_path, monkeypatch):
    import registry.training.loop as loop

    monkeypatch.setattr(loop, "PROGRESS_SECONDS", 0.0)  # a line every step (10 s in real use)
    result = run("--db", db, "train", "--variant", "ctvit/tiny", "--out", str(tmp_path / "out"), "--steps", "3")
    assert result.exit_code == 0, result.output
    progress = [line.split(" loss ")[0] for line in result.stdout.splitlines() if "steps/s" in line]
    assert progress == ["step 1/3", "step 2/3"]  # step 3 is the checkpoint's own line


def test_ctrl_c_while_the_program_starts_exits_130_without_a_traceback():
    program = ("import os, signal, sys, time\n"
               "sys.argv[0] = '/usr/bin/registry'\n"
               "from registry.interrupts import exit_quietly_while_starting\n"
               "exit_quietly_while_starting()\n"
               "os.kill(os.getpid(), signal.SIGINT)\n"
               "time.sleep(10)\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (130, "interrupted\n")


def test_ctrl_c_inside_sqlalchemys_pool_cleanup_is_held_until_it_returns(monkeypatch):
    """SQLAlchemy catches an exception raised while its pool resets a connection and prints the
    traceback ("Exception during reset or similar"): a Ctrl-C there is asked again a moment later."""
    import os as os_
    import types

    from registry import interrupts

    monkeypatch.setattr(interrupts, "_holding", True)  # as inside the command's block

    def frame(filename: str) -> types.SimpleNamespace:
        return types.SimpleNamespace(f_code=types.SimpleNamespace(co_filename=filename), f_back=None)

    asked_again: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: asked_again.append(signum))
    try:
        pool = frame(os_.sep.join(["", "venv", "sqlalchemy", "pool", "base.py"]))
        interrupts._raise_when_safe(signal.SIGINT, types.SimpleNamespace(f_code=frame("x.py").f_code, f_back=pool))
        deadline = time.monotonic() + 5
        while not asked_again and time.monotonic() < deadline:
            time.sleep(0.01)
        assert asked_again == [signal.SIGINT]
        with pytest.raises(KeyboardInterrupt):
            interrupts._raise_when_safe(signal.SIGINT, frame(os_.sep.join(["", "app", "registry", "scan.py"])))
    finally:
        signal.signal(signal.SIGINT, previous)
