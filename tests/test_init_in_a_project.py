"""`registry init` in a user's project lists the project's own variants; the built-ins, registered
beside them, are one line (before: 17 rows of built-ins buried the user's one or two)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from registry.catalog import builtin_variants

REGISTRY = str(Path(sys.executable).with_name("registry"))

PYPROJECT = """
[project]
name = "mine"
version = "0.0.1"

[tool.registry]
db = "sqlite:///registry.db"

[tool.registry.variants."mine/small-ctvit"]
family = "ctvit"
description = "our ablation"
config = { dim = 32, codebook_size = 64, image_size = 32, patch_size = 8, temporal_patch_size = 2, spatial_depth = 1, temporal_depth = 1, dim_head = 8, heads = 2, discr_image_size = 32, discr_base_dim = 4, vgg_base_dim = 4, vgg_hidden_dim = 32, use_swiglu = true }
"""


def registry(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    return subprocess.run([REGISTRY, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # two inits: each builds the 17 built-in variants
def test_init_in_a_project_lists_its_variants_and_sums_up_the_builtins(tmp_path):
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    builtin_names = sorted(v.name for v in builtin_variants())

    first = registry(tmp_path, "init")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0] == f"database sqlite:///{tmp_path}/registry.db"
    assert lines[1].split() == ["variant", "status", "version", "fingerprint"]
    assert lines[2].split()[:3] == ["mine/small-ctvit", "registered", "1"]
    assert lines[3:] == [f"and {len(builtin_names)} built-in variants, {len(builtin_names)} registered "
                         "(`registry variants list` shows them)"]

    again = registry(tmp_path, "init", "--json")
    assert again.returncode == 0, again.stderr
    outcomes = json.loads(again.stdout)
    assert [(o["variant"], o["builtin"]) for o in outcomes] == [(n, True) for n in builtin_names] + [
        ("mine/small-ctvit", False)]
    assert all(set(o) == {"variant", "family", "status", "version", "fingerprint", "built_fingerprint", "builtin"}
               and o["status"] == "unchanged" for o in outcomes)

    # the built-ins are registered all the same
    listed = json.loads(registry(tmp_path, "variants", "list", "--json").stdout)
    assert sorted(v["name"] for v in listed) == sorted([*builtin_names, "mine/small-ctvit"])


@pytest.mark.slow
def test_init_outside_a_project_still_lists_every_builtin(tmp_path):
    done = registry(tmp_path, "--db", str(tmp_path / "r.db"), "init")
    assert done.returncode == 0, done.stderr
    rows = [line.split()[0] for line in done.stdout.splitlines()[2:]]
    assert rows == sorted(v.name for v in builtin_variants())
