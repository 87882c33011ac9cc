"""The frozen fingerprint form (DESIGN §3), reference listings, and module signatures."""

from __future__ import annotations


import pytest
from conftest import reference_text

from registry.schema import (
    ModuleSignature,
    Schema,
    TensorEntry,
    module_signature,
    parse_schema_tsv,
    schema_of_state_dict,
    short_form,
)

GOLDEN_ENTRIES = [
    TensorEntry("block.2.weight", (0, 5), "float16"),
    TensorEntry("block.10.bias", (64,), "bfloat16"),
    TensorEntry("a", (), "int64"),
    TensorEntry("block.0.weight", (64, 3, 3, 3), "float32"),
]
# Never change this value: fingerprints stored in users' databases depend on the canonical form.
GOLDEN_FINGERPRINT = "sha256:4d940aa52eeac8300902aa62aa499d913c59e6cba89125e89ee1bdb67c59f704"


def test_golden_fingerprint_is_frozen():
    schema = Schema(GOLDEN_ENTRIES)
    assert schema.canonical_text == (
        "a\t[]\nblock.0.weight\t[64,3,3,3]\nblock.10.bias\t[64]\nblock.2.weight\t[0,5]\n"
    )
    assert schema.fingerprint == GOLDEN_FINGERPRINT
    assert schema.short == "4d940aa52eea" == short_form(GOLDEN_FINGERPRINT)


def test_fingerprint_ignores_dtype_and_input_order_but_not_shape_or_name():
    base = Schema(GOLDEN_ENTRIES)
    recast = Schema(TensorEntry(e.name, e.shape, "float64") for e in reversed(GOLDEN_ENTRIES))
    assert recast.fingerprint == base.fingerprint
    reshaped = Schema([*GOLDEN_ENTRIES[1:], TensorEntry("block.2.weight", (5, 0))])
    renamed = Schema([*GOLDEN_ENTRIES[1:], TensorEntry("block.2.gamma", (0, 5))])
    assert len({base.fingerprint, reshaped.fingerprint, renamed.fingerprint}) == 3


def test_entries_sort_in_python_string_order():
    names = Schema(GOLDEN_ENTRIES).names
    assert names == ["a", "block.0.weight", "block.10.bias", "block.2.weight"]


def test_duplicate_names_are_rejected():
    with pytest.raises(ValueError, match="duplicate tensor entry name 'a'"):
        Schema([TensorEntry("a", (1,)), TensorEntry("a", (2,))])


@pytest.mark.parametrize("listing", ["ctvit_ctclip_main.tsv", "ctvit_ctclip_seed.tsv", "ctvit_ctclip_seed_vgg_gan.tsv"])
def test_reference_listing_fingerprint_matches_its_header(listing):
    schema, header = parse_schema_tsv(reference_text(listing, "the golden fingerprint test still runs"))
    declared = header["schema_fingerprint"].split()[0]
    assert schema.fingerprint == declared
    assert len(schema) == int(header["entries"].split()[0])


def test_under_and_with_prefix_round_trip():
    schema = Schema(GOLDEN_ENTRIES)
    wrapped = schema.with_prefix("visual_transformer.")
    assert wrapped.under("visual_transformer.") == schema
    assert wrapped.fingerprint != schema.fingerprint


def test_schema_of_state_dict_skips_non_tensors():
    torch = pytest.importorskip("torch")
    state = {"w": torch.zeros(2, 3, dtype=torch.float16), "_extra_state": {"x": 1}, "step": 3}
    assert schema_of_state_dict(state).as_rows() == [["w", [2, 3], "float16"]]


def test_module_signature_lists_parameterless_modules_and_tells_classes_apart():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    gelu = module_signature(nn.Sequential(nn.Linear(2, 2), nn.GELU()))
    silu = module_signature(nn.Sequential(nn.Linear(2, 2), nn.SiLU()))
    assert gelu.as_dict()["1"] == "torch.nn.modules.activation.GELU"
    assert gelu.as_dict()[""] == "torch.nn.modules.container.Sequential"
    assert gelu.hash != silu.hash
    assert isinstance(gelu, ModuleSignature) and gelu.hash.startswith("sha256:")
