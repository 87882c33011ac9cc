"""Grouped schema differences: what a person reads when a checkpoint does not load."""

from __future__ import annotations

from registry.diff import apply_renames, compress_names, diff_schemas, diff_signatures
from registry.schema import ModuleSignature, Schema, TensorEntry


def _layers(template: str, shape=(8,), layers=range(4), kinds=("spatial", "temporal")) -> list[TensorEntry]:
    return [TensorEntry(template.format(kind=k, i=i), shape) for k in kinds for i in layers]


def _ctvit_like(norm_leaves=("gamma", "beta"), attn="to_q") -> Schema:
    entries = []
    for leaf in norm_leaves:
        entries += _layers("enc_{kind}_transformer.layers.{i}.1.norm.%s" % leaf)
    entries += _layers("enc_{kind}_transformer.layers.{i}.1.%s.weight" % attn, shape=(16, 8))
    entries += _layers("enc_{kind}_transformer.layers.{i}.0.dsconv.weight", shape=(8, 1, 3, 3, 3))
    entries += _layers("enc_{kind}_transformer.layers.{i}.0.dsconv.bias")
    return Schema(entries)


def test_identical_schemas_have_no_groups():
    diff = diff_schemas(_ctvit_like(), _ctvit_like())
    assert diff.identical and diff.score == 1.0 and diff.lines() == []


def test_the_ctvit_incident_is_one_suffix_group():
    checkpoint = _ctvit_like(norm_leaves=("gamma", "beta"))
    code = _ctvit_like(norm_leaves=("weight",))
    diff = diff_schemas(code, checkpoint)
    assert diff.lines() == [
        "24 entries differ only by suffix `.beta/.gamma` → `.weight` in 8 modules: "
        "enc_*_transformer.layers.{0..3}.1.norm"
    ]
    assert diff.rename_rules == []  # beta has nowhere to go: no rename explains it


def test_a_module_rename_is_explained_by_one_rule_and_verified():
    checkpoint = _ctvit_like(attn="attn_q")
    code = _ctvit_like(attn="to_q")
    diff = diff_schemas(code, checkpoint)
    assert diff.lines() == [
        "8 entries explained by renaming `.attn_q.` → `.to_q.`: enc_*_transformer.layers.{0..3}.1.to_q.weight (8 entries)"
    ]
    assert diff.rename_rules == [(".attn_q.", ".to_q.")]
    assert apply_renames(checkpoint, diff.rename_rules) == code


def test_shape_changes_show_both_shapes():
    code = Schema([TensorEntry("blocks.0.to_q.weight", (768, 512)), TensorEntry("blocks.1.to_q.weight", (768, 512))])
    checkpoint = Schema([TensorEntry("blocks.0.to_q.weight", (512, 512)), TensorEntry("blocks.1.to_q.weight", (512, 512))])
    diff = diff_schemas(code, checkpoint)
    assert diff.lines() == ["2 shape changes [512,512] → [768,512]: blocks.{0..1}.to_q.weight (2 entries)"]
    assert diff.score == 0.0


def test_prefix_offset_is_reported_once():
    code = _ctvit_like()
    diff = diff_schemas(code, code.with_prefix("model.diffusion_model."))
    assert diff.lines() == ["every checkpoint entry carries the extra prefix `model.diffusion_model.`"]


def test_missing_and_unexpected_are_summarised_by_pattern():
    full = _ctvit_like()
    without_conv = Schema(e for e in full if ".dsconv." not in e.name)
    diff = diff_schemas(full, without_conv)
    assert diff.lines() == ["16 missing: enc_*_transformer.layers.{0..3}.0.dsconv.* (16 entries)"]
    assert diff.to_json()["groups"][0]["count"] == 16
    diff = diff_schemas(without_conv, full)
    assert diff.lines() == ["16 unexpected: enc_*_transformer.layers.{0..3}.0.dsconv.* (16 entries)"]


def test_compress_names_keeps_counts():
    names = [f"down.{i}.conv.{leaf}" for i in (0, 1, 2, 5) for leaf in ("weight", "bias")] + ["out.weight"]
    assert compress_names(names) == [("down.{0,1,2,5}.conv.*", 8), ("out.weight", 1)]


def test_signature_diff_names_the_class_change():
    old = ModuleSignature((("", "m.Net"), ("ff.2", "m.GEGLU"), ("ff2.2", "m.GEGLU")))
    new = ModuleSignature((("", "m.Net"), ("ff.2", "m.SwiGLU"), ("ff2.2", "m.SwiGLU"), ("extra", "m.Drop")))
    groups = diff_signatures(old, new)
    assert [g.summary for g in groups] == [
        "2 modules changed class GEGLU → SwiGLU (m.GEGLU → m.SwiGLU): {ff,ff2}.2",
        "1 module added: extra",
    ]
