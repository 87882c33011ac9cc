"""From the user's side: a class family declared in pyproject.toml gives config inference the values
of a free-string field (`config_choices`), as a plugin family does in code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REGISTRY = str(Path(sys.executable).parent / "registry")

NET = '''
from torch import nn


class Net(nn.Module):
    def __init__(self, width: int = 8, depth: int = 2, norm: str = "layer"):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.norm = nn.LayerNorm(width) if norm == "layer" else nn.RMSNorm(width)
'''

SAVE = '''
import torch
from netpkg.net import Net

torch.save(Net(width=12, depth=3, norm="rms").state_dict(), "rms.pt")
'''

PYPROJECT = '''
[project]
name = "netproj"
version = "0.1"

[tool.registry]
db = "sqlite:///registry.db"

[tool.registry.variants."net/base"]
class = "netpkg.net:Net"
config = {{ width = 8 }}
{choices}
'''


def write_project(root: Path, choices: str) -> Path:
    files = {"netpkg/__init__.py": "", "netpkg/net.py": NET, "save.py": SAVE,
             "pyproject.toml": PYPROJECT.format(choices=choices)}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text).lstrip())
    return root


def run(root: Path, *args: str, program: str = REGISTRY) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_DB", "REGISTRY_PLUGINS")}
    command = [program, *args] if program == REGISTRY else [sys.executable, program, *args]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = write_project(tmp_path_factory.mktemp("netproj"), 'config_choices = { norm = ["layer", "rms"] }')
    saved = run(root, program="save.py")
    assert saved.returncode == 0, saved.stderr
    return root


def test_infer_searches_the_declared_choices_of_a_free_string(project):
    found = run(project, "infer", "rms.pt", "--class", "netpkg.net:Net", "--json")
    assert found.returncode == 0, found.stdout + found.stderr
    result = json.loads(found.stdout)
    assert result["exact"] and result["config"] == {"width": 12, "depth": 3, "norm": "rms"}
    assert result["declared_choices"] == ["norm"] and result["not_searched"] == []
    text = run(project, "infer", "rms.pt", "--class", "netpkg.net:Net")
    assert text.returncode == 0 and "searched among the family's declared choices: norm" in text.stdout


def test_without_choices_the_free_string_is_not_searched(tmp_path, project):
    root = write_project(tmp_path, "")
    (root / "rms.pt").write_bytes((project / "rms.pt").read_bytes())
    found = run(root, "infer", "rms.pt", "--class", "netpkg.net:Net", "--json")
    assert found.returncode == 1
    result = json.loads(found.stdout)
    assert not result["exact"] and result["not_searched"] == ["norm"]


@pytest.mark.parametrize("choices, message", [
    ('config_choices = { nrom = ["layer", "rms"] }',
     "variant net/base: config_choices names 'nrom', which is not a field of family netpkg.net:Net's config"),
    ('config_choices = { norm = "rms" }', "config_choices.norm must be a non-empty list of values"),
    ('config_choices = ["rms"]', "config_choices must be an inline table of field = [values]"),
])
def test_bad_choices_are_one_line_and_exit_2(tmp_path, choices, message):
    result = run(write_project(tmp_path, choices), "families")
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr.splitlines()[0] and "Traceback" not in result.stderr
