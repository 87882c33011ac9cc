"""The installed distribution claims only the `registry` import name (issue 2).

Users' training repositories have their own `models/` (both incidents' did); a top-level `models`,
`migrations` or `cli` of ours would shadow theirs or be shadowed by it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel).namelist()


def test_wheel_installs_only_under_registry(wheel_names):
    top_level = {name.split("/", 1)[0] for name in wheel_names}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"registry"}


def test_wheel_ships_models_migrations_and_cli_under_registry(wheel_names):
    names = set(wheel_names)
    assert "registry/models/ctvit.py" in names
    assert "registry/models/ldm_unet.py" in names
    assert "registry/migrations/env.py" in names
    assert any(n.startswith("registry/migrations/versions/") and n.endswith(".py") for n in names)
    # The repository root is mapped to `registry.command` for cli.py and the command modules in
    # commands/ alone: nothing else from the root (tests, benchmarks, examples ...) may ride along.
    commands = sorted(f"registry/command/commands/{p.name}" for p in (ROOT / "commands").glob("*.py"))
    assert {"registry/command/commands/__init__.py", "registry/command/commands/_output.py",
            "registry/command/commands/audit.py"} <= set(commands)
    assert sorted(n for n in names if n.startswith("registry/command/")) == [
        "registry/command/__init__.py",
        "registry/command/cli.py",
        *commands,
    ]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert entry_points


def test_a_user_project_with_its_own_models_package_still_builds_our_families(tmp_path):
    project = tmp_path / "user_project"
    for package in ("models", "migrations"):
        (project / package).mkdir(parents=True)
        (project / package / "__init__.py").write_text(f"OWNER = 'user {package}'\n")
    (project / "cli.py").write_text("OWNER = 'user cli'\n")
    script = (
        "import json, models, migrations, cli\n"
        "from registry.families import families\n"
        "import registry.models\n"
        "print(json.dumps({'user': [models.OWNER, migrations.OWNER, cli.OWNER],"
        " 'families': [f.name for f in families()], 'ours': registry.models.__file__}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=project, env=env, capture_output=True, text=True, check=True
    )
    report = json.loads(result.stdout)
    assert report["user"] == ["user models", "user migrations", "user cli"]
    assert {"ctvit", "ldm-unet", "diffusers-unet"} <= set(report["families"])
    assert not report["ours"].startswith(str(project))

    # The console script from the same directory, with the user's repo on PYTHONPATH.
    cli = subprocess.run(
        [str(Path(sys.executable).with_name("registry")), "families", "--json"],
        cwd=project,
        env={**env, "PYTHONPATH": str(project)},
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 0, cli.stderr
    assert "ctvit" in {f["name"] for f in json.loads(cli.stdout)}
