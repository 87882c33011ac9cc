"""Drift where developers look: `pytest --registry-check` and the `registry-check` pre-commit hook,
in a user's repository with its own package, pyproject table and git history."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]

MODEL = textwrap.dedent('''
    from torch import nn


    class Net(nn.Module):
        def __init__(self, width: int = 4, depth: int = 1, use_rms_norm: bool = False):
            super().__init__()
            self.layers = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])
            self.norm = nn.RMSNorm(width) if use_rms_norm else nn.LayerNorm(width)

        def forward(self, x):
            return self.norm(self.layers(x))
''')
PYPROJECT = textwrap.dedent('''
    [project]
    name = "userproj"
    version = "0.1.0"

    [tool.registry]
    db = "sqlite:///registry.db"

    [tool.registry.variants."net/small"]
    class = "userproj.model:Net"
    config = { width = 8, depth = 2 }
    example_inputs = [{ shape = [2, 8] }]
''')


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_DB", "PYTEST_ADDOPTS", "REGISTRY_PLUGINS")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=300)


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=dev", "-c", "user.email=dev@example.org", *args], cwd=cwd, check=True,
                   capture_output=True)


@pytest.fixture(scope="module")
def initialised_project(tmp_path_factory) -> Path:
    """The user's project after `registry init` (which builds every built-in variant: done once)."""
    project = tmp_path_factory.mktemp("template") / "userproj"
    (project / "userproj").mkdir(parents=True)
    (project / "userproj" / "__init__.py").write_text("")
    (project / "userproj" / "model.py").write_text(MODEL)
    (project / "pyproject.toml").write_text(PYPROJECT)
    (project / "tests").mkdir()
    (project / "tests" / "test_model.py").write_text("def test_something():\n    assert 1 + 1 == 2\n")
    _git(project, "init", "-q")
    _git(project, "add", ".")
    _git(project, "commit", "-q", "-m", "a user's project")
    env = {**_env(), "XDG_DATA_HOME": str(project.parent / "xdg-data")}
    done = _run([str(BIN / "registry"), "init"], project, env)
    assert done.returncode == 0, done.stderr
    return project


@pytest.fixture
def user_project(initialised_project, tmp_path) -> Path:
    """A fresh copy of the initialised project (its git history and registry.db included)."""
    return Path(shutil.copytree(initialised_project, tmp_path / "userproj"))


def _plant_the_incident(project: Path) -> None:
    model = project / "userproj" / "model.py"
    model.write_text(model.read_text().replace("nn.RMSNorm(width) if use_rms_norm else nn.LayerNorm(width)",
                                               "nn.RMSNorm(width)"))


def test_pytest_registry_check_reports_each_variant_as_a_test(user_project):
    clean = _run([sys.executable, "-m", "pytest", "--registry-check", "-p", "no:cacheprovider", "-v"], user_project)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "registry-check[net/small] PASSED" in clean.stdout
    assert "test_something PASSED" in clean.stdout

    _plant_the_incident(user_project)
    drifted = _run([sys.executable, "-m", "pytest", "--registry-check", "-p", "no:cacheprovider", "-v"], user_project)
    assert drifted.returncode == 1
    assert "registry-check[net/small] FAILED" in drifted.stdout
    assert "drift: net/small (schema version 1 → the current code)" in drifted.stdout
    assert "LayerNorm → RMSNorm" in drifted.stdout
    assert "norm.bias" in drifted.stdout
    assert "test_something PASSED" in drifted.stdout  # the user's own tests still run

    only = _run([sys.executable, "-m", "pytest", "--registry-check", "-m", "registry_check", "-p",
                 "no:cacheprovider", "-q"], user_project)
    assert only.returncode == 1 and "1 failed, 1 deselected" in only.stdout


def test_pytest_without_the_option_is_untouched(user_project):
    _plant_the_incident(user_project)
    done = _run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"], user_project)
    assert done.returncode == 0, done.stdout
    assert "1 passed" in done.stdout


def test_pytest_registry_check_with_an_unreachable_database_is_a_usage_error(user_project):
    done = _run([sys.executable, "-m", "pytest", "--registry-check", "--registry-db",
                 f"sqlite:///{user_project / 'missing.db'}", "-p", "no:cacheprovider", "-q"], user_project)
    assert done.returncode == 4  # pytest's usage-error exit code
    assert "--registry-check: no registry database at" in done.stderr
    assert "Traceback" not in done.stderr


def test_pre_commit_hook_runs_registry_check_in_the_users_environment(user_project, tmp_path):
    """The real `pre-commit`, with this repository's .pre-commit-hooks.yaml as a hook repository."""
    if shutil.which("pre-commit", path=str(BIN)) is None:
        pytest.fail("pre-commit is not installed: it is part of the test extra (pip install -e '.[test]')")
    hooks = tmp_path / "hooks-repo"
    hooks.mkdir()
    shutil.copy(REPO / ".pre-commit-hooks.yaml", hooks / ".pre-commit-hooks.yaml")
    _git(hooks, "init", "-q")
    _git(hooks, "add", ".")
    _git(hooks, "commit", "-q", "-m", "hooks")
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=hooks, capture_output=True, text=True).stdout.strip()
    (user_project / ".pre-commit-config.yaml").write_text(
        f"repos:\n  - repo: {hooks}\n    rev: {rev}\n    hooks:\n      - id: registry-check\n")
    _git(user_project, "add", ".pre-commit-config.yaml")
    env = {**_env(), "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home")}
    clean = _run([str(BIN / "pre-commit"), "run", "--all-files"], user_project, env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "registry check (architecture drift)" in clean.stdout and "Passed" in clean.stdout

    _plant_the_incident(user_project)
    _git(user_project, "add", "userproj/model.py")
    drifted = _run([str(BIN / "pre-commit"), "run", "--all-files"], user_project, env)
    assert drifted.returncode == 1
    assert "Failed" in drifted.stdout
    assert "drift: net/small" in drifted.stdout
    assert "LayerNorm → RMSNorm" in drifted.stdout
    # language: system: pre-commit made no environment of its own (no torch installed twice)
    assert not list((tmp_path / "pre-commit-home").glob("repo*/py_env-*"))
