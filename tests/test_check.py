"""`registry check` and `variants diff`: the first incident fails CI on the commit that makes it."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from registry.catalog import get_builtin_variant
from registry.command.cli import main
from registry.store import open_registry
from registry.store.variants import init_builtin_variants

import registry.models.ctvit_attention as attention


@pytest.fixture
def baseline_db(db_url) -> str:
    with open_registry(db_url, upgrade=True) as reg:
        init_builtin_variants(reg, [get_builtin_variant("ctvit/baseline"), get_builtin_variant("ctvit/optimized")])
    return db_url


def check(db: str, *args: str):
    return CliRunner().invoke(main, ["--db", db, "check", *args])


def test_check_passes_when_the_code_builds_the_registered_layouts(baseline_db):
    result = check(baseline_db)
    assert result.exit_code == 0, result.output
    assert result.stdout == "2 of 2 variants unchanged\n"


def test_the_rmsnorm_incident_fails_check_naming_the_norm_change(baseline_db, monkeypatch):
    # Exactly the incident's bug: Attention builds RMSNorm whatever the flag says.
    original = attention.Attention.__init__

    def hardcoded_rmsnorm(self, *args, use_rms_norm=False, **kwargs):
        original(self, *args, use_rms_norm=True, **kwargs)

    monkeypatch.setattr(attention.Attention, "__init__", hardcoded_rmsnorm)
    result = check(baseline_db)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0] == "drift: ctvit/baseline (schema version 1 → the current code)"
    assert lines[2] == (
        "  96 entries differ only by suffix `.beta/.gamma` → `.weight` in 32 modules: "
        "*_transformer.layers.{0..3}.1.context_norm; *_transformer.layers.{0..3}.1.norm"
    )
    assert "  modules: 32 modules changed class LayerNorm → RMSNorm" in "\n".join(lines)
    assert "  if the change is intended: registry variants bump ctvit/baseline" in lines
    assert lines[-1] == "1 of 2 variants unchanged, 1 drifted"  # optimized already used RMSNorm

    report = json.loads(check(baseline_db, "--json").stdout)
    drifted = [v for v in report["variants"] if v["status"] == "drift"]
    assert report["ok"] is False and [v["variant"] for v in drifted] == ["ctvit/baseline"]
    assert drifted[0]["schema_diff"]["groups"][0]["kind"] == "suffix"


def test_swapping_geglu_for_swiglu_fails_check_on_the_module_signature(baseline_db, monkeypatch):
    # Same tensor names and shapes: only the module signature can see it.
    monkeypatch.setattr(attention, "GEGLU", attention.SwiGLU)
    result = check(baseline_db, "ctvit/baseline")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[:2] == [
        "drift: ctvit/baseline (schema version 1 → the current code)",
        "  tensors unchanged, but module classes changed (same names and shapes, different code)",
    ]
    assert lines[2].startswith("  modules: 16 modules changed class GEGLU → SwiGLU")


def test_bump_records_an_intended_change_and_check_passes_again(baseline_db, monkeypatch):
    monkeypatch.setattr(attention, "GEGLU", attention.SwiGLU)
    bumped = CliRunner().invoke(main, ["--db", baseline_db, "variants", "bump", "ctvit/baseline"])
    assert bumped.exit_code == 0, bumped.output
    result = check(baseline_db)
    assert result.exit_code == 0, result.output


def test_variants_diff_groups_the_differences(baseline_db):
    result = CliRunner().invoke(main, ["--db", baseline_db, "variants", "diff", "ctvit/baseline", "ctvit/optimized"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ctvit/baseline → ctvit/optimized: ")
    assert "differ only by suffix `.beta/.gamma` → `.weight`" in result.stdout
