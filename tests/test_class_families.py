"""Class families: a user's model class named by import path is a family, its constructor's keyword
arguments (or its one config object) the config; config values as users write them."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from registry.errors import FamilyNotLoadedError, PluginError, UsageError

USER_MODELS = '''
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal, Optional

from torch import nn


class Act(enum.Enum):
    GELU = "gelu"
    RELU = "relu"


@dataclass(frozen=True)
class NormConfig:
    kind: Literal["layer", "rms"] = "layer"
    eps: float = 1e-5


class CNN(nn.Module):
    """A small CNN whose config is its constructor's keyword arguments."""

    def __init__(self, channels: list[int], *, kernel: tuple[int, ...] = (3, 3), act: Act = Act.GELU,
                 head: Optional[int] = None, norm: NormConfig = NormConfig(), pool: Literal["avg", "max"] = "avg"):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(a, b, kernel) for a, b in zip(channels, channels[1:]))
        self.act = nn.GELU() if act is Act.GELU else nn.ReLU()
        self.norm = nn.LayerNorm(channels[-1], eps=norm.eps) if norm.kind == "layer" else nn.RMSNorm(channels[-1])
        self.head = nn.Linear(channels[-1], head) if head is not None else None


@dataclass
class GPTConfig:
    n_layer: int = 2
    n_embd: int = 8
    bias: bool = True


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.h = nn.ModuleList(nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
                               for _ in range(config.n_layer))


class PlainConfig:  # not a dataclass
    def __init__(self, n_layer: int = 1, width=4):
        self.n_layer, self.width = n_layer, width


class NanoGPT(nn.Module):  # nanoGPT style: one unannotated config parameter
    def __init__(self, config):
        super().__init__()
        self.h = nn.ModuleList(nn.Linear(config.width, config.width) for _ in range(config.n_layer))


def not_a_class():
    return None
'''


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    (folder / "h1_user_models.py").write_text(USER_MODELS)
    sys.path.insert(0, str(folder))
    yield "h1_user_models"
    sys.path.remove(str(folder))
    sys.modules.pop("h1_user_models", None)


@pytest.fixture(autouse=True)
def forget_class_families():
    """Class families register on first use; each test starts from the families it found."""
    from registry.families import _FAMILIES, families

    families()
    saved = dict(_FAMILIES)
    yield
    _FAMILIES.clear()
    _FAMILIES.update(saved)


def test_keyword_constructor_is_a_family_with_its_signature_as_config(user_module):
    from registry.families import build_schema, canonical_config_json, get_family, make_config

    family = get_family(f"{user_module}:CNN")
    assert family.name == f"{user_module}:CNN"
    assert family.description == "A small CNN whose config is its constructor's keyword arguments."
    assert family.source == f"class: {user_module}:CNN"
    config = make_config(family, {"channels": [3, 8, 16], "act": "relu", "norm": {"kind": "rms"}, "kernel": [1, 1]})
    # Defaults filled in; lists as JSON lists, the enum as its value, the nested dataclass as a table.
    assert json.loads(canonical_config_json(config)) == {
        "channels": [3, 8, 16], "kernel": [1, 1], "act": "relu", "head": None,
        "norm": {"kind": "rms", "eps": 1e-05}, "pool": "avg",
    }
    built = build_schema(family, config)
    assert [row[0] for row in built.schema.as_rows()][-1:] == ["norm.weight"]  # RMSNorm: weight only
    assert built.signature.as_dict()["act"].endswith("ReLU")
    # The canonical config builds the same model again (what `registry check` does).
    again = make_config(family, json.loads(canonical_config_json(config)))
    assert build_schema(family, again).fingerprint == built.fingerprint


@pytest.mark.parametrize("values, message", [
    ({}, "missing required config key for family '{m}:CNN': channels"),
    ({"channels": [3], "nope": 1, "other": 2}, "unknown config keys for family '{m}:CNN': nope, other"),
    ({"channels": [3, "x"]}, "{m}:CNN.channels[1]: expected an integer, got 'x'"),
    ({"channels": [3], "act": "tanh"}, "{m}:CNN.act: expected one of 'gelu', 'relu' (Act), got 'tanh'"),
    ({"channels": [3], "pool": "sum"}, "{m}:CNN.pool: expected one of 'avg', 'max', got 'sum'"),
    ({"channels": [3], "head": "x"}, "{m}:CNN.head: 'x' is not a valid value (expected an integer, got 'x')"),
    ({"channels": [3], "norm": {"kind": "batch"}}, "{m}:CNN.norm.kind: expected one of 'layer', 'rms', got 'batch'"),
    ({"channels": [3], "norm": {"size": 2}}, "unknown config key for {m}:CNN.norm: size"),
])
def test_config_values_are_checked_against_the_signature(user_module, values, message):
    from registry.families import get_family, make_config

    with pytest.raises(UsageError) as error:
        make_config(get_family(f"{user_module}:CNN"), values)
    assert error.value.message == message.format(m=user_module)
    assert error.value.exit_code == 2


def test_constructor_taking_a_config_dataclass(user_module):
    from registry.families import build_schema, config_dict, get_family, make_config

    family = get_family(f"{user_module}:GPT")
    assert family.config_class.__name__ == "GPTConfig"  # the user's own class
    assert family.description == f"class {user_module}:GPT"  # no docstring of its own (not nn.Module's)
    config = make_config(family, {"n_layer": 3, "bias": False})
    assert config_dict(config) == {"n_layer": 3, "n_embd": 8, "bias": False}
    rows = build_schema(family, config).schema.as_rows()
    assert [name for name, _, _ in rows] == ["h.0.weight", "h.1.weight", "h.2.weight"]


def test_config_class_named_for_an_unannotated_config_parameter(user_module):
    import dataclasses

    from registry.class_family import class_family
    from registry.families import build_schema, config_dict, make_config

    family = class_family(f"{user_module}:NanoGPT", config_class=f"{user_module}:PlainConfig")
    assert dataclasses.is_dataclass(family.config_class)
    assert {f.name: f.type for f in dataclasses.fields(family.config_class)} == {"n_layer": int, "width": int}
    config = make_config(family, {"n_layer": 2, "width": 3})
    assert config_dict(config) == {"n_layer": 2, "width": 3}
    assert list(build_schema(family, config).schema.as_rows()[0][:2]) == ["h.0.bias", [3]]
    assert family.origin.config_class == f"{user_module}:PlainConfig"
    with pytest.raises(UsageError, match="already used with config class"):
        class_family(f"{user_module}:NanoGPT", config_class=f"{user_module}:GPTConfig")


def test_an_unannotated_config_object_needs_its_class_named(user_module):
    from registry.families import get_family

    with pytest.raises(UsageError) as error:
        get_family(f"{user_module}:NanoGPT")
    assert error.value.message == f"{user_module}:NanoGPT takes one config object ('config', not annotated): name its class"
    assert error.value.hint == 'config_class = "pkg.module:Config" in pyproject.toml, or --config-class'


def test_every_class_family_config_is_an_annotated_dataclass(user_module):
    """Generic config inference enumerates fields by their annotations."""
    import dataclasses
    import typing

    from registry.families import get_family

    family = get_family(f"{user_module}:CNN")
    hints = typing.get_type_hints(family.config_class)
    assert dataclasses.is_dataclass(family.config_class)
    assert str(hints["channels"]) == "list[int]"
    assert typing.get_args(hints["pool"]) == ("avg", "max")
    assert hints["act"].__name__ == "Act"


def test_hydra_target_and_config_key_in_a_yaml_file(user_module, tmp_path):
    from registry.configs import config_from_options
    from registry.families import config_dict

    path = tmp_path / "train.yaml"
    path.write_text(textwrap.dedent(f"""\
        model:
          encoder:
            _target_: {user_module}.CNN
            channels: [1, 4]
            pool: max
        """))
    family, config = config_from_options(None, config_file=path, config_key="model.encoder")
    assert family.name == f"{user_module}:CNN"
    assert config_dict(config)["pool"] == "max"
    with pytest.raises(UsageError) as error:
        config_from_options(None, config_file=path, config_key="model.decoder")
    assert error.value.message == (f"config file {path} has no key 'model.decoder' ('decoder' is missing at model; "
                                   "keys there: encoder)")
    with pytest.raises(UsageError, match="is another class than"):
        config_from_options(None, config_file=path, config_key="model.encoder", class_target=f"{user_module}:GPT")


def test_unknown_or_broken_classes_are_one_line_errors(user_module, tmp_path, monkeypatch):
    from registry.families import get_family

    with pytest.raises(FamilyNotLoadedError) as error:
        get_family("nosuchpackage.models:GPT")
    assert error.value.message == "family 'nosuchpackage.models:GPT' is not loaded: module 'nosuchpackage.models' cannot be found"
    with pytest.raises(UsageError, match="has no attribute 'Missing'"):
        get_family(f"{user_module}:Missing")
    with pytest.raises(UsageError, match="is not a class"):
        get_family(f"{user_module}:not_a_class")
    (tmp_path / "h1_broken_models.py").write_text("import torch\nraise RuntimeError('half-done refactor')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError) as broken:
        get_family("h1_broken_models:Model")
    assert broken.value.message == ("importing h1_broken_models for h1_broken_models:Model failed: "
                                    "RuntimeError: half-done refactor")


def test_builtin_canonical_configs_are_unchanged():
    """Stored variants depend on the canonical JSON: the new coercion must not move it."""
    import dataclasses

    from registry.catalog import builtin_variants
    from registry.families import canonical_config_json, get_family, make_config

    for variant in builtin_variants():
        family = get_family(variant.family)
        config = make_config(family, variant.config)
        assert canonical_config_json(config) == json.dumps(dataclasses.asdict(config), sort_keys=True,
                                                           separators=(",", ":")), variant.name


def test_families_lists_a_class_family_with_its_required_fields(user_module):
    from registry.families import get_family
    from registry.reporting import family_rows

    get_family(f"{user_module}:CNN")
    row = {r["name"]: r for r in family_rows()}[f"{user_module}:CNN"]
    assert row["source"] == f"class: {user_module}:CNN"
    assert row["origin"]["kind"] == "class" and row["origin"]["path"].endswith("h1_user_models.py")
    fields = {f["name"]: f for f in row["fields"]}
    assert fields["channels"] == {"name": "channels", "type": "list[int]", "default": None, "required": True}
    assert fields["norm"]["default"] == {"kind": "layer", "eps": 1e-05}
    assert fields["act"]["default"] == "gelu"


def test_provenance_of_a_class_from_an_installed_distribution():
    """An installed package's class: its distribution's version, not the git repository around the venv."""
    from importlib import metadata

    from registry.class_family import class_family
    from registry.families import get_family
    from registry.store.provenance import code_revision, package_versions

    family = class_family("diffusers:UNet2DConditionModel")
    assert code_revision(family) == f"diffusers=={metadata.version('diffusers')}"
    assert package_versions(family)["diffusers"] == metadata.version("diffusers")
    assert code_revision(get_family("ctvit")) == code_revision()  # built-ins: the registry's own revision


def test_check_of_a_class_variant_whose_module_is_gone_says_what_to_load(sqlite_url, tmp_path, monkeypatch):
    from registry.drift import FAMILY_NOT_LOADED, check_all
    from registry.families import _FAMILIES, get_family, make_config
    from registry.store import open_registry
    from registry.store.variants import add_variant

    (tmp_path / "h1_team_b.py").write_text("from torch import nn\n\n\nclass Net(nn.Linear):\n"
                                           "    def __init__(self, width: int = 4):\n        super().__init__(width, width)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    family = get_family("h1_team_b:Net")
    with open_registry(sqlite_url) as reg:
        add_variant(reg, "team-b/net", family.name, make_config(family, {"width": 3}))
        assert [r.status for r in check_all(reg, behaviour=False)] == ["ok"]
    # Another team's checkout: the module is not importable there.
    monkeypatch.syspath_prepend(str(tmp_path / "elsewhere"))
    sys.path.remove(str(tmp_path))
    sys.modules.pop("h1_team_b")
    del _FAMILIES["h1_team_b:Net"]
    with open_registry(sqlite_url, readonly=True) as reg:
        (report,) = check_all(reg, behaviour=False)
    assert (report.status, report.status == FAMILY_NOT_LOADED) == ("family-not-loaded", True)
    assert report.lines() == ["not checked: team-b/net: family 'h1_team_b:Net' is not loaded: its class h1_team_b:Net "
                              "cannot be imported here: run in the project that holds it (or put its folder on "
                              "PYTHONPATH)"]
    assert report.to_json()["bump"] is None
