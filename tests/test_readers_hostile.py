"""Hostile checkpoints: nothing in them ever runs (issue 3, DESIGN §4).

The corpus is built here, in tmp_path: eighteen code-execution techniques as torch zip
checkpoints, several as legacy torch files, plus payloads hidden under a non-tensor key, in a
legacy file's sys_info, inside bytes that torch.storage._load_from_bytes would load, in a second
pickle inside the zip, and in a pickle named .safetensors. Each payload creates a marker file
when loaded; a control test proves that `torch.load(weights_only=False)` (or `pickle.load`) does
run them, then `registry fingerprint` must refuse each with exit code 3 and one line naming the
offending global, and no marker may appear. A helper module shipped beside the files writes its
own marker if it is ever imported.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from hostile.corpus import (MAGIC, PROTOCOL, binbytes, glob, helper_module_source, legacy_file, payloads,
                            tensor_pickle, torch_zip)
from registry.errors import UnsafeCheckpointError
from registry.readers import read_checkpoint
from registry.readers.policy import classify, is_dangerous

TECHNIQUES = sorted(payloads(Path("m")))
LEGACY_TECHNIQUES = ["protocol0-inst", "reduce-os-system", "stack-global-protocol4"]
EXTRA = ["hidden-under-non-tensor-key", "legacy-sys-info", "torch-load-of-embedded-bytes",
         "second-pickle-in-zip", "pickle-named-safetensors"]
NOT_RUN_BY_TORCH = {"second-pickle-in-zip"}  # torch.load never reads it; we still refuse the file
MEMORY_LIMIT = 1 << 30


@dataclass
class Case:
    name: str
    path: Path
    marker: Path
    expected: str  # what the error line must name


class Evil:
    """A non-tensor value whose unpickling runs a shell command (pickled by torch.save itself)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def build_case(name: str, directory: Path) -> Case:
    markers = directory / "markers"
    markers.mkdir(exist_ok=True)
    marker = markers / f"{name}.marker"
    helpers = directory / "helpers"
    if not helpers.exists():
        helpers.mkdir()
        import_marker = markers / "imported.marker"
        (helpers / "evil_helpers.py").write_text(f"open({str(import_marker)!r}, 'w').close()\n" + helper_module_source())
    files = directory / "files"
    files.mkdir(exist_ok=True)
    table = payloads(marker)
    if name in table:
        data, expected = table[name]
        return Case(name, torch_zip(files / f"{name}.pt", data), marker, expected)
    if name.startswith("legacy-") and name[len("legacy-"):] in table:
        data, expected = table[name[len("legacy-"):]]
        return Case(name, legacy_file(files / f"{name}.pt", data), marker, expected)
    system, _ = table["reduce-os-system"]
    if name == "hidden-under-non-tensor-key":
        import torch

        path = files / f"{name}.pt"
        torch.save({"model": {"w": torch.zeros(2)}, "step": 3, "config": Evil(f"touch {marker}")}, path)
        return Case(name, path, marker, "posix.system" if os.name == "posix" else "nt.system")
    if name == "legacy-sys-info":
        return Case(name, legacy_file(files / f"{name}.pt", MAGIC, PROTOCOL, system), marker, "os.system")
    if name == "torch-load-of-embedded-bytes":
        inner = torch_zip(directory / "inner.pt", system).read_bytes()
        data = b"\x80\x03" + glob("torch.storage", "_load_from_bytes") + binbytes(inner) + b"\x85R."
        return Case(name, torch_zip(files / f"{name}.pt", data), marker, "torch.storage._load_from_bytes")
    if name == "second-pickle-in-zip":
        path = torch_zip(files / f"{name}.pt", tensor_pickle(), {"0": bytes(24)}, {"archive/extra.pkl": system})
        return Case(name, path, marker, "second pickle 'archive/extra.pkl'")
    if name == "pickle-named-safetensors":
        return Case(name, legacy_file(files / f"{name}.safetensors", system), marker, "os.system")
    raise KeyError(name)


ALL_CASES = TECHNIQUES + [f"legacy-{name}" for name in LEGACY_TECHNIQUES] + EXTRA


def run_cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """`registry fingerprint ARGS` in a fresh process with bounded memory and time; the helper
    module sits in its working directory and on PYTHONPATH, so importing it would be possible."""
    def bound_memory():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(cwd / "helpers"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "registry.command.cli", "fingerprint", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=bound_memory)


def test_the_corpus_is_live(tmp_path):
    """Control: torch.load(weights_only=False) (pickle.load for the .safetensors) runs every payload."""
    cases = [build_case(name, tmp_path) for name in ALL_CASES if name not in NOT_RUN_BY_TORCH]
    script = (
        "import pickle, sys, torch\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        if path.endswith('.safetensors'):\n"
        "            pickle.load(open(path, 'rb'))\n"
        "        else:\n"
        "            torch.load(path, weights_only=False)\n"
        "    except Exception:\n"
        "        pass\n"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "helpers"))
    subprocess.run([sys.executable, "-c", script, *(str(c.path) for c in cases)], cwd=tmp_path, env=env,
                   capture_output=True, timeout=300, check=True)
    dead = [case.name for case in cases if not case.marker.exists()]
    assert dead == [], f"these payloads did not run under torch.load, so they test nothing: {dead}"
    assert len(TECHNIQUES) >= 10


@pytest.mark.parametrize("name", ALL_CASES)
def test_registry_fingerprint_refuses_and_never_runs_the_payload(tmp_path, name):
    case = build_case(name, tmp_path)
    result = run_cli(str(case.path), cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    if name == "second-pickle-in-zip":
        assert lines[0].startswith(f"error: cannot read {case.path}: the zip holds a second pickle")
    else:
        assert lines[0].startswith(f"error: refusing {case.path}: ")
        assert "would run code under torch.load(weights_only=False)" in lines[0]
    assert case.expected in lines[0]
    assert not case.marker.exists()
    assert not (tmp_path / "markers" / "imported.marker").exists()


def test_error_line_for_os_system_is_exact(tmp_path):
    case = build_case("reduce-os-system", tmp_path)
    result = run_cli(str(case.path), cwd=tmp_path)
    assert result.stderr == (
        f"error: refusing {case.path}: its pickle calls os.system, which would run code under "
        "torch.load(weights_only=False); do not load it unless you trust its source (--allow-unsafe "
        "fingerprints it without running anything)\n"
    )


def test_allow_unsafe_reads_the_model_but_still_runs_nothing(tmp_path):
    case = build_case("hidden-under-non-tensor-key", tmp_path)
    result = run_cli(str(case.path), "--allow-unsafe", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert '"entries": 1' in result.stdout and "unsafe: its pickle calls posix.system" in result.stdout
    assert not case.marker.exists()


def test_library_raises_unsafe_checkpoint_error(tmp_path):
    case = build_case("builtins-eval", tmp_path)
    with pytest.raises(UnsafeCheckpointError, match="calls builtins.eval"):
        read_checkpoint(case.path)
    assert not case.marker.exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_torchscript_archive_is_refused(tmp_path):
    import torch

    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(UnsafeCheckpointError, match="TorchScript archive"):
        read_checkpoint(path)


def test_a_module_patching_build_is_refused(tmp_path):
    # BUILD on a global rewrites its attributes (here torch.load itself) when a real unpickler runs it
    data = b"\x80\x02" + glob("torch.serialization", "_get_layout") + b"N}X\x04\x00\x00\x00nameK\x01s\x86b."
    path = torch_zip(tmp_path / "patch.pt", data)
    with pytest.raises(UnsafeCheckpointError, match="rewrites attributes of torch.serialization._get_layout"):
        read_checkpoint(path)


@pytest.mark.parametrize("module, name, dangerous", [
    ("os", "system", True), ("posix", "system", True), ("nt", "system", True),
    ("subprocess", "Popen", True), ("builtins", "eval", True), ("builtins", "getattr", True),
    ("__builtin__", "__import__", True), ("builtins", "set", False), ("torch", "load", True),
    ("torch.serialization", "load", True), ("torch._utils", "torch.load", True), ("pathlib", "os.system", True),
    ("numpy", "load", True), ("torch._utils", "_rebuild_tensor_v2", False), ("collections", "OrderedDict", False),
    ("mypackage.types", "Config", False), ("mypackage", "Config.__init__", True), ("runpy", "_run_code", True),
    ("__main__", "TrainConfig", False), ("operator", "attrgetter", True), ("functools", "partial", True),
])
def test_classification_of_globals(module, name, dangerous):
    assert (classify(module, name).kind == "dangerous") is dangerous
    if module in ("mypackage.types", "__main__"):
        assert not is_dangerous(module, name)
