"""One plugin door for every family: entry points (the built-ins too), `[tool.registry]` in
pyproject.toml, `--plugin`, REGISTRY_PLUGINS; where each family came from; one-line errors for a
plugin that fails to import and for two sources claiming one name; `check` with a family that is
not loaded. Driven through the installed `registry` command, as users run it."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from test_user_project import ATTENTION, FAMILIES, NORMS, VIT, git, registry


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text).lstrip())
    return root


MODELS = {"models/__init__.py": "", "models/norms.py": NORMS, "models/attention.py": ATTENTION,
          "models/vit.py": VIT, "models/families.py": FAMILIES}


def families_json(cwd: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, dict]:
    result = registry(cwd, *args, "families", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


def test_builtin_families_arrive_through_the_entry_point(tmp_path):
    from importlib import metadata

    points = [ep for ep in metadata.entry_points(group="registry.families") if ep.dist.name == "model-registry"]
    assert [(ep.name, ep.value) for ep in points] == [("builtin", "registry.models")]
    rows = families_json(tmp_path)
    for name in ("ctvit", "ldm-unet", "diffusers-unet"):
        assert rows[name]["source"] == "built-in"
        assert rows[name]["origin"]["module"] == "registry.models"
        assert rows[name]["origin"]["distribution"] == "model-registry"


@pytest.mark.slow
def test_plugin_option_and_environment_variable_for_code_that_is_not_packaged(tmp_path):
    write(tmp_path, MODELS)
    via_option = families_json(tmp_path, "--plugin", "models.families")
    assert via_option["myvit"]["source"] == "--plugin: models.families"
    assert via_option["myvit"]["description"] == "the team's video transformer"
    via_env = families_json(tmp_path, env={"REGISTRY_PLUGINS": "models.families, "})
    assert via_env["myvit"]["source"] == "REGISTRY_PLUGINS: models.families"
    text = registry(tmp_path, "--plugin", "models.families", "families").stdout
    assert "myvit: the team's video transformer\n  source: --plugin: models.families\n" in text
    assert "myvit" not in families_json(tmp_path)  # nothing loads it
    after = registry(tmp_path, "families", "--json", "--plugin", "models.families")  # after the command too
    assert {row["name"]: row["source"] for row in json.loads(after.stdout)}["myvit"] == "--plugin: models.families"


ACME = '''
from dataclasses import dataclass

from registry.families import register_family


@dataclass(frozen=True)
class AcmeConfig:
    width: int = 4


@register_family("acme-net", config=AcmeConfig, description="a packaged family")
def build(config):
    from torch import nn

    return nn.Linear(config.width, config.width)
'''


@pytest.mark.slow
def test_entry_point_plugin_of_an_installed_distribution(tmp_path):
    """A real distribution's metadata (a *.dist-info on the path), read by importlib.metadata."""
    site = write(tmp_path / "site", {
        "acme_models/__init__.py": ACME,
        "acme_models-1.2.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: acme-models\nVersion: 1.2.0\n",
        "acme_models-1.2.0.dist-info/entry_points.txt": "[registry.families]\nacme = acme_models\n",
    })
    env = {"PYTHONPATH": str(site)}
    row = families_json(tmp_path, env=env)["acme-net"]
    assert row["source"] == "entry point acme-models 1.2.0: acme_models"
    assert (row["origin"]["kind"], row["origin"]["distribution"], row["origin"]["version"]) == (
        "entry-point", "acme-models", "1.2.0")
    added = registry(tmp_path, "--db", "r.db", "variants", "add", "acme/one", "--family", "acme-net", env=env)
    assert added.returncode == 0, added.stderr
    shown = json.loads(registry(tmp_path, "--db", "r.db", "variants", "show", "acme/one", "--json", env=env).stdout)
    version = shown["versions"][0]
    # The family's own code: the distribution's version (this folder is in no git repository).
    assert version["code_revision"] == "acme-models==1.2.0"
    assert version["package_versions"]["acme-models"] == "1.2.0"
    assert shown["variant"]["family_source"] == "entry point acme-models 1.2.0: acme_models"


def test_a_plugin_that_fails_to_import_stops_the_command(tmp_path):
    write(tmp_path, {**MODELS, "models/broken.py": "import torch\nraise RuntimeError('half-done refactor')\n",
                     "pyproject.toml": '[tool.registry]\nplugins = ["models.families", "models.broken"]\n'})
    result = registry(tmp_path, "families")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        f"error: plugin models.broken (pyproject.toml {tmp_path}/pyproject.toml) failed to import: "
        "RuntimeError: half-done refactor",
        "hint: fix the module, or stop loading it",
    ]
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    missing = registry(elsewhere, "--plugin", "no_such_module", "schema", "ctvit")
    assert missing.returncode == 2
    assert missing.stderr.splitlines()[0] == ("error: plugin no_such_module (--plugin) failed to import: "
                                              "ModuleNotFoundError: No module named 'no_such_module'")


def test_a_declared_class_that_cannot_be_imported_is_the_projects_error(tmp_path):
    write(tmp_path, {**MODELS, "pyproject.toml": '''
        [tool.registry.variants."vit/a"]
        class = "models.vit:ViT"
        config = { dim = 8, depth = 1 }
        [tool.registry.variants."vit/b"]
        class = "models.vitt:ViT"
        '''})
    result = registry(tmp_path, "families")
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == (f"error: {tmp_path}/pyproject.toml: variant vit/b: family "
                                             "'models.vitt:ViT' is not loaded: module 'models.vitt' cannot be found")
    (tmp_path / "pyproject.toml").write_text((tmp_path / "pyproject.toml").read_text().replace("vitt", "vit"))
    rows = families_json(tmp_path)
    assert (rows["models.vit:ViT"]["source"], rows["models.vit:ViT"]["description"]) == (
        "class: models.vit:ViT", "A CTViT-like transformer: the team's image encoder.")


@pytest.mark.slow
def test_two_sources_claiming_one_family_name(tmp_path):
    write(tmp_path, {**MODELS, "models/copy.py": FAMILIES.replace("from .vit", "from models.vit"),
                     "pyproject.toml": '[tool.registry]\nplugins = ["models.families"]\n'})
    result = registry(tmp_path, "--plugin", "models.copy", "families")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: family 'myvit' is claimed twice: by pyproject.toml {tmp_path}/pyproject.toml: models.families "
        "and by --plugin: models.copy",
        "hint: rename one of them, or load only one of the plugins",
    ]
    write(tmp_path, {"models/ctvit_copy.py": FAMILIES.replace("from .vit", "from models.vit").replace('"myvit"', '"ctvit"')})
    builtin = registry(tmp_path, "--plugin", "models.ctvit_copy", "families")
    assert builtin.stderr.splitlines()[0] == ("error: family 'ctvit' is claimed twice: by built-in and by "
                                              "--plugin: models.ctvit_copy")


@pytest.mark.slow
def test_check_with_a_family_that_is_not_loaded_says_what_to_load(tmp_path):
    write(tmp_path, MODELS)
    db = str(tmp_path / "shared.db")
    assert registry(tmp_path, "--db", db, "--plugin", "models.families", "variants", "add", "myvit/small",
                    "--family", "myvit", "--set", "dim=16").returncode == 0
    elsewhere = tmp_path / "other-team"
    elsewhere.mkdir()
    result = registry(elsewhere, "--db", db, "check")
    assert result.returncode == 0  # not drift: another team's model
    assert result.stderr.splitlines() == [
        "warning: not checked: myvit/small: family 'myvit' is not loaded: load its plugin with --plugin "
        "models.families (or REGISTRY_PLUGINS=models.families)"]
    assert result.stdout == "0 of 1 variants unchanged, 1 not checked (family not loaded)\n"
    as_json = json.loads(registry(elsewhere, "--db", db, "check", "--json").stdout)
    assert (as_json["ok"], as_json["not_loaded"], as_json["variants"][0]["status"]) == (
        True, ["myvit/small"], "family-not-loaded")
    named = registry(elsewhere, "--db", db, "check", "myvit/small")
    assert named.returncode == 2  # asked for it by name, and it could not be checked
    loaded = registry(elsewhere, "--db", db, "check", env={"REGISTRY_PLUGINS": "models.families",
                                                           "PYTHONPATH": str(tmp_path)})
    assert (loaded.returncode, loaded.stdout.splitlines()[-1]) == (0, "1 of 1 variants unchanged"), loaded.stderr


@pytest.mark.slow
def test_class_families_from_the_command_line(tmp_path):
    write(tmp_path, {**MODELS, "models/gpt.py": '''
        from torch import nn


        class GPTConfig:  # nanoGPT style: a plain class, and an unannotated parameter
            def __init__(self, n_layer: int = 2, n_embd: int = 8):
                self.n_layer, self.n_embd = n_layer, n_embd


        class GPT(nn.Module):
            def __init__(self, config):
                super().__init__()
                self.h = nn.ModuleList(nn.Linear(config.n_embd, config.n_embd) for _ in range(config.n_layer))
        ''', "configs/gpt.yaml": "model:\n  n_layer: 3\n  n_embd: 16\ntrain:\n  lr: 0.1\n"})
    db = str(tmp_path / "r.db")
    added = registry(tmp_path, "--db", db, "variants", "add", "gpt/small", "--class", "models.gpt:GPT",
                     "--config-class", "models.gpt:GPTConfig", "--config", "configs/gpt.yaml", "--config-key", "model",
                     "--json")
    assert added.returncode == 0, added.stderr
    assert (json.loads(added.stdout)["family"], json.loads(added.stdout)["status"]) == ("models.gpt:GPT", "registered")
    shown = json.loads(registry(tmp_path, "--db", db, "variants", "show", "gpt/small", "--json").stdout)
    assert json.loads(shown["variant"]["config_json"]) == {"n_layer": 3, "n_embd": 16}
    assert shown["variant"]["family_source"] == "class: models.gpt:GPT config_class=models.gpt:GPTConfig"
    # A later process knows the config class from the recorded source.
    assert registry(tmp_path, "--db", db, "check").returncode == 0
    unknown = registry(tmp_path, "--db", db, "variants", "add", "gpt/x", "--class", "models.gpt:GPT",
                       "--config-class", "models.gpt:GPTConfig", "--set", "n_head=4")
    assert (unknown.returncode, unknown.stderr.splitlines()[0]) == (
        2, "error: unknown config key for family 'models.gpt:GPT': n_head")
    schema = registry(tmp_path, "schema", "models.gpt:GPT", "--config-class", "models.gpt:GPTConfig",
                      "--config", "configs/gpt.yaml", "--config-key", "model", "--json")
    assert json.loads(schema.stdout)["fingerprint"] == shown["versions"][0]["fingerprint"]
    hydra = registry(tmp_path, "--db", db, "schema", "models.vit:ViT", "--set", "dim=8")
    assert hydra.returncode == 2
    assert hydra.stderr.splitlines()[0] == "error: missing required config key for family 'models.vit:ViT': depth"


def test_pyproject_db_is_the_default_database(tmp_path):
    write(tmp_path, {"pyproject.toml": '[tool.registry]\ndb = "data/registry.db"\n', "sub/x": ""})
    (tmp_path / "data").mkdir()
    info = json.loads(registry(tmp_path / "sub", "info", "--json").stdout)
    assert (info["url"], info["source"]) == (f"sqlite:///{tmp_path}/data/registry.db",
                                             f"pyproject.toml {tmp_path}/pyproject.toml")
    assert json.loads(registry(tmp_path, "info", "--json", env={"REGISTRY_DB": "sqlite:///other.db"}).stdout)[
        "source"] == "REGISTRY_DB"
    assert json.loads(registry(tmp_path, "--db", "x.db", "info", "--json").stdout)["source"] == "--db"


@pytest.mark.parametrize("table, message", [
    ('[tool.registry]\nplugin = ["x"]\n', "{p}: [tool.registry]: unknown key plugin"),
    ('[tool.registry.variants."a"]\nfamily = "ctvit"\nclass = "m:C"\n',
     '{p}: [tool.registry.variants."a"]: give `family` or `class`, not both'),
    ('[tool.registry.variants."a"]\nclass = "m:C"\nexample_inputs = [{ shape = [1, 8], dtype = "int64" }]\n',
     '{p}: [tool.registry.variants."a"]: example_inputs[0]: an integer input needs `high` (e.g. the vocabulary size)'),
    ('[tool.registry\n', "{p} is not valid TOML: Expected ']' at the end of a table declaration (at line 1, column 15)"),
])
def test_a_bad_pyproject_table_is_a_usage_error(tmp_path, table, message):
    from registry.errors import UsageError
    from registry.project import load_project

    write(tmp_path, {"pyproject.toml": table, "deeper/x": ""})
    with pytest.raises(UsageError) as error:
        load_project(tmp_path / "deeper")
    assert error.value.message == message.format(p=tmp_path / "pyproject.toml")
    assert error.value.exit_code == 2


def test_a_pyproject_table_is_parsed_with_paths_relative_to_it(tmp_path):
    from registry.project import InputSpec, load_project

    write(tmp_path, {"pyproject.toml": '''
        [tool.registry]
        plugins = ["src.models.families"]
        db = "sqlite:///registry.db"
        [tool.registry.variants."myvit/baseline"]
        family = "myvit"
        config = "configs/base.yaml"
        config_key = "model.image_encoder"
        [tool.registry.variants."gpt/small"]
        class = "src.models.gpt:GPT"
        config_class = "src.models.gpt:GPTConfig"
        config = { n_layer = 6, n_head = 6, n_embd = 384 }
        example_inputs = [{ shape = [1, 8], dtype = "int64", high = 100 }]
        probe_config = { n_layer = 1 }
        ''', "a/b/c": ""})
    project = load_project(tmp_path / "a" / "b")
    assert (project.path, project.root, project.plugins) == (tmp_path / "pyproject.toml", tmp_path,
                                                              ("src.models.families",))
    assert project.db == f"sqlite:///{tmp_path}/registry.db"
    baseline, gpt = project.variants["myvit/baseline"], project.variants["gpt/small"]
    assert (baseline.family, baseline.config_file, baseline.config_key) == (
        "myvit", tmp_path / "configs" / "base.yaml", "model.image_encoder")
    assert (gpt.class_target, gpt.config_class, gpt.config) == (
        "src.models.gpt:GPT", "src.models.gpt:GPTConfig", {"n_layer": 6, "n_head": 6, "n_embd": 384})
    assert (gpt.example_inputs, gpt.probe_config) == ((InputSpec((1, 8), "int64", 0, 100),), {"n_layer": 1})


def test_example_inputs_give_a_deterministic_probe():
    import torch

    from registry.declared import inputs_probe
    from registry.project import InputSpec

    probe = inputs_probe((InputSpec((2, 5), "int64", 0, 7), InputSpec((2, 3), "float32")))
    seen = probe(lambda ids, x: (ids, x), None, torch.Generator().manual_seed(0))
    again = probe(lambda ids, x: (ids, x), None, torch.Generator().manual_seed(0))
    assert seen[0].dtype == torch.int64 and 0 <= int(seen[0].min()) and int(seen[0].max()) < 7
    assert torch.equal(seen[0], again[0]) and torch.equal(seen[1], again[1])


def test_a_failed_project_load_is_reported_again_not_skipped(tmp_path, monkeypatch):
    """In one process (a notebook, a test session), a second lookup must not run with fewer families."""
    from registry import plugins
    from registry.errors import FamilyNotLoadedError
    from registry.families import families

    import sys

    families()
    monkeypatch.setattr(sys, "path", sys.path[:])  # the project's folder goes on it
    write(tmp_path, {"pyproject.toml": '[tool.registry.variants."x/a"]\nclass = "h1_nowhere.models:Net"\n'})
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        with pytest.raises(FamilyNotLoadedError, match="variant x/a: family 'h1_nowhere.models:Net' is not loaded"):
            families()
    monkeypatch.chdir(tmp_path.parent)
    assert str(tmp_path / "pyproject.toml") not in plugins._projects_done
