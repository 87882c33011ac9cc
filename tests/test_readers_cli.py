"""`registry fingerprint`: output for people and scripts, several paths, exit codes, and a
process that never imports torch (issue 3, DESIGN §7)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from hostile.corpus import write_safetensors
from registry.command.cli import main
from registry.errors import CheckpointError
from registry.readers import read_checkpoint
from registry.readers.limits import human_bytes

HEAVY = ("torch", "numpy", "sqlalchemy", "diffusers")


def run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def files(tmp_path):
    state = {"module.fc.weight": torch.zeros(3, 4), "module.fc.bias": torch.zeros(3),
             "module.norm.weight": torch.zeros(4, dtype=torch.float16)}
    record = {"variant": "demo/tiny", "run_id": 3, "step": 1500, "fingerprint": "sha256:" + "0" * 64}
    pt = tmp_path / "run.pt"
    torch.save({"model": state, "step": 1500, "registry": record}, pt)
    st = write_safetensors(tmp_path / "plain.safetensors", {k.removeprefix("module."): v for k, v in state.items()})
    return {"pt": pt, "st": st, "missing": tmp_path / "missing.pt"}


def test_human_output(files):
    result = run("fingerprint", str(files["pt"]))
    assert result.exit_code == 0, result.output
    info = read_checkpoint(files["pt"])
    assert result.stdout == (
        f"{files['pt']}\n"
        f"  fingerprint  {info.short}  {info.fingerprint}\n"
        f"  format       torch-zip, 1 file, {human_bytes(files['pt'].stat().st_size)}\n"
        "  layout       container 'model', wrapper 'module.' stripped\n"
        "  entries      3\n"
        "  parameters   19  (elements over all entries, buffers included)\n"
        "  dtypes       float16 1, float32 2\n"
        "  step         1,500\n"
        "  registry     demo/tiny (run_id 3, step 1500) embedded fingerprint DIFFERS from the file's (mislabeled?)\n"
    )


def test_json_output_with_entries_and_prefixes(files):
    result = run("fingerprint", str(files["pt"]), str(files["st"]), "--json", "--entries", "--prefixes")
    assert result.exit_code == 0, result.output
    pt, st = json.loads(result.stdout)
    assert pt["fingerprint"] == st["fingerprint"] and pt["short"] == pt["fingerprint"][7:19]
    assert set(pt) == {"path", "format", "fingerprint", "short", "entries", "parameters", "dtypes", "container",
                       "wrapper", "step", "metadata", "warnings", "files", "size_bytes", "entry_list", "prefixes"}
    assert (pt["format"], pt["container"], pt["wrapper"], pt["entries"]) == ("torch-zip", "model", "module.", 3)
    assert (st["format"], st["container"], st["wrapper"], st["step"]) == ("safetensors", None, None, None)
    assert pt["parameters"] == 19 and pt["dtypes"] == {"float16": 1, "float32": 2}
    assert pt["metadata"]["step"] == 1500 and pt["metadata"]["registry"]["run_id"] == 3
    assert pt["entry_list"] == [["fc.bias", [3], "float32"], ["fc.weight", [3, 4], "float32"],
                                ["norm.weight", [4], "float16"]]
    assert [p["prefix"] for p in pt["prefixes"]] == ["fc.", "norm."]
    assert pt["prefixes"][0]["entries"] == 2 and len(pt["prefixes"][0]["short"]) == 12


def test_several_paths_one_failing(files):
    paths = [str(files["pt"]), str(files["missing"]), str(files["st"])]
    result = run("fingerprint", *paths)
    assert result.exit_code == 3
    assert result.stderr == f"error: cannot read {files['missing']}: no such file or directory\n"
    assert result.stdout.count("  fingerprint  ") == 2 and str(files["st"]) in result.stdout

    result = run("fingerprint", *paths, "--json")
    assert result.exit_code == 3
    reports = json.loads(result.stdout)
    assert reports[1] == {"path": str(files["missing"]), "error": f"cannot read {files['missing']}: no such file or "
                          "directory", "exit_code": 3}
    assert [r["path"] for r in reports] == paths and "fingerprint" in reports[2]


def test_help_explains_parameters_and_has_examples():
    result = run("fingerprint", "--help")
    assert result.exit_code == 0
    assert "cannot tell parameters from buffers" in result.stdout and "registry fingerprint ckpt.pt" in result.stdout


def test_debug_shows_the_exception(files):
    result = run("--debug", "fingerprint", str(files["missing"]))
    assert isinstance(result.exception, CheckpointError)


def test_no_path_is_a_usage_error():
    assert run("fingerprint").exit_code == 2


@pytest.mark.parametrize("which", ["pt", "st", "folder", "missing"])
def test_the_command_never_imports_heavy_packages(files, which):
    target = files["pt"].parent if which == "folder" else files[which]
    if which == "folder":
        (target / "sub").mkdir()
        target = files["st"].rename(target / "sub" / "model.safetensors").parent
    code = (
        "import sys\n"
        "from registry.command.cli import main\n"
        "try:\n"
        f"    main(['fingerprint', {str(target)!r}])\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        f"print(code, sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    status, _, heavy = result.stderr.splitlines()[-1].partition(" ")
    assert heavy == "[]", result.stderr
    assert status == ("3" if which == "missing" else "0"), result.stderr
