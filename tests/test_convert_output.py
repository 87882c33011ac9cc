"""Where `registry convert` writes, and that it never leaves half a result (issue 13, item 3).

Rules (decided in issue 13; README "convert"):
- `-o FOLDER` or `-o FOLDER/` naming an existing folder writes `FOLDER/<source stem>.safetensors`;
- an output whose folder does not exist is refused (exit 2, one line and a `mkdir -p` hint), never
  created: a typo must not grow a directory tree;
- an unwritable folder is refused before any work (exit 2);
- a conversion whose recording fails (a read-only database: exit 4) leaves no file: the output is
  written to a temporary file, recorded, and only then renamed into place.
Driven through the installed `registry` command, as a user runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from registry.catalog import get_builtin_variant
from registry.families import get_family, make_config
from registry.store import open_registry
from registry.store.variants import init_builtin_variants

REGISTRY = shutil.which("registry", path=str(Path(sys.executable).parent)) or "registry"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A ctvit/tiny checkpoint (converted by extraction: it already is the target's layout)."""
    variant = get_builtin_variant("ctvit/tiny")
    family = get_family(variant.family)
    path = tmp_path_factory.mktemp("source") / "tiny.pt"
    torch.save({"model": family.build(make_config(family, variant.config)).state_dict(), "step": 3}, path)
    return path


@pytest.fixture
def db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'db' / 'registry.db'}"
    (tmp_path / "db").mkdir()
    with open_registry(url, upgrade=True) as reg:
        init_builtin_variants(reg, [get_builtin_variant("ctvit/tiny")])
    return url


def unprivileged() -> dict:
    """Popen arguments under which mode bits bind root too (drops CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH,
    CAP_FOWNER from the bounding set before exec)."""
    if os.geteuid() != 0:
        return {}
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def drop() -> None:
        for cap in (1, 2, 3):
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")

    return {"preexec_fn": drop}


def convert(db: str, source: Path, output: str, *extra: str, cwd: Path | None = None, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([REGISTRY, "--db", db, "convert", str(source), "--to", "ctvit/tiny", "-o", output, *extra],
                          capture_output=True, text=True, cwd=cwd, timeout=300, **popen)


def recorded(db: str) -> list[str]:
    with open_registry(db) as reg:
        return [c.path for c in reg.list_checkpoints()]


def test_a_missing_output_folder_is_refused_not_created(db, source, tmp_path):
    for output, folder in ((str(tmp_path / "missing" / "dir" / "out.safetensors"), str(tmp_path / "missing" / "dir")),
                           ("typo/", "typo/")):
        done = convert(db, source, output, cwd=tmp_path)
        assert (done.returncode, done.stdout) == (2, "")
        assert done.stderr.splitlines() == [f"error: output folder {folder} does not exist",
                                            f"hint: create it first: mkdir -p {folder}"]
    assert not (tmp_path / "missing").exists() and not (tmp_path / "typo").exists()
    assert recorded(db) == []


def test_an_output_under_a_file_is_refused(db, source, tmp_path):
    (tmp_path / "plain").write_text("x")
    done = convert(db, source, str(tmp_path / "plain" / "out.safetensors"))
    assert (done.returncode, done.stderr) == (2, f"error: cannot write {tmp_path}/plain/out.safetensors: "
                                                 f"{tmp_path}/plain is a file, not a folder\n")


def test_an_existing_folder_receives_the_source_stem_as_safetensors(db, source, tmp_path):
    (tmp_path / "out").mkdir()
    done = convert(db, source, "out/", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = tmp_path / "out" / "tiny.safetensors"
    assert json.loads(done.stdout)["output"] == str(written)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tiny.safetensors"]
    assert recorded(db) == [str(written)]
    again = convert(db, source, "out", cwd=tmp_path)  # without the slash: the same folder, now taken
    assert (again.returncode, again.stderr.splitlines()) == (
        2, [f"error: {written} exists", "hint: choose another -o path, or pass --force to replace it"])


def test_an_unwritable_output_folder_is_refused_before_any_work(db, source, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        done = convert(db, source, str(locked / "out.safetensors"), **unprivileged())
    finally:
        locked.chmod(0o755)
    assert (done.returncode, done.stderr) == (2, f"error: cannot write to {locked}: permission denied\n")
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_failed_recording_leaves_no_output_file(db, source, tmp_path, suffix):
    db_file = tmp_path / "db" / "registry.db"
    out = tmp_path / "out"
    out.mkdir()
    db_file.chmod(0o444)
    try:
        done = convert(db, source, str(out / f"tiny{suffix}"), **unprivileged())
    finally:
        db_file.chmod(0o644)
    assert done.returncode == 4, done.stderr
    assert done.stderr.splitlines()[0] == f"error: database {db} is read-only: attempt to write a readonly database"
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) <= 2
    assert list(out.iterdir()) == []  # neither the output nor its temporary file
    assert recorded(db) == []


def test_a_terminal_sees_progress_and_a_pipe_sees_none(db, source, tmp_path):
    import pty

    quiet = convert(db, source, str(tmp_path / "quiet.safetensors"))
    assert (quiet.returncode, quiet.stderr) == (0, "")
    leader, follower = pty.openpty()
    try:
        shown = subprocess.run([REGISTRY, "--db", db, "convert", str(source), "--to", "ctvit/tiny", "-o",
                                str(tmp_path / "shown.safetensors")], stdout=subprocess.PIPE, stderr=follower,
                               text=True, timeout=300)
        os.close(follower)
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 1 << 16)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(leader)
    assert shown.returncode == 0
    text = seen.decode("utf-8", "replace")
    assert "reading..." in text and "matching..." in text and "writing" in text and "100%" in text
