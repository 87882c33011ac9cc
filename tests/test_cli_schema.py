"""`registry families` and `registry schema`: the no-database hooks scripts use."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from registry.catalog import get_builtin_variant
from registry.families import build_schema, get_family, make_config
from registry.command.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_families_lists_fields_with_defaults():
    result = run("families", "--json")
    assert result.exit_code == 0, result.output
    families = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"ctvit", "ldm-unet", "diffusers-unet"} <= set(families)
    fields = {f["name"]: f for f in families["ctvit"]["fields"]}
    assert fields["use_rms_norm"] == {"name": "use_rms_norm", "type": "bool", "default": False}
    assert fields["dim"]["default"] == 512


def test_schema_json_matches_the_library_and_fills_every_default():
    result = run("schema", "diffusers-unet", "--variant", "tiny", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    variant = get_builtin_variant("diffusers-unet/tiny")
    family = get_family("diffusers-unet")
    built = build_schema(family, make_config(family, variant.config))
    assert report["fingerprint"] == built.fingerprint
    assert report["module_signature_hash"] == built.signature.hash
    assert report["entries"] == built.schema.as_rows()
    assert report["config"]["norm_eps"] == 1e-5  # a default the variant does not set
    assert set(report) >= {"family", "config", "fingerprint", "entries", "module_signature_hash"}


def test_schema_set_overrides_and_human_output():
    result = run("schema", "ctvit", "--variant", "tiny", "--set", "use_rms_norm=true", "--entries")
    assert result.exit_code == 0, result.output
    assert "fingerprint   sha256:" in result.stdout
    assert "norm.weight" in result.stdout and "norm.gamma" not in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["schema", "ctvit", "--set", "nope=1"], "error: unknown config key for family 'ctvit': nope\n"
         "hint: `registry families` lists the fields of 'ctvit'\n"),
        (["schema", "ctvit", "--set", "dim=abc"], "error: ctvit.dim: expected an integer, got 'abc'\n"),
        (["schema", "ctvit", "--set", "use_rms_norm=2"], "error: ctvit.use_rms_norm: expected true or false, got 2\n"),
        (["schema", "ctvit", "--set", "dim"], "error: --set expects key=value, got 'dim'\n"),
        (["schema", "resnet"], "error: unknown family 'resnet'\nhint: known families: ctvit, diffusers-unet, ldm-unet\n"),
        (["schema", "ctvit", "--variant", "huge"], "error: unknown variant 'ctvit/huge'\n"
         "hint: `registry variants list` shows the known variants\n"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert result.stderr == message
    assert result.stdout == ""


def test_config_post_init_errors_are_usage_errors():
    result = run("schema", "ctvit", "--set", "image_size=33", "--set", "patch_size=8")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: invalid ctvit config: ")
    assert "Traceback" not in result.output


def test_every_command_has_help_with_an_example():
    def walk(command: click.Command, path: list[str]):
        yield path, command
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from walk(sub, path + [name])

    for path, command in walk(main, []):
        result = run(*path, "--help")
        assert result.exit_code == 0, path
        if not isinstance(command, click.Group) or not path:
            assert "Example" in (command.help or ""), f"`registry {' '.join(path)}` help has no example"
