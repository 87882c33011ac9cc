"""Every built-in variant builds on the meta device with a stable fingerprint (issue 2)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from registry.catalog import builtin_variants
from registry.families import build_schema, families, get_family, make_config

FINGERPRINTS_SCRIPT = """
import json
from registry.catalog import builtin_variants
from registry.families import build_schema, get_family, make_config
out = {}
for v in builtin_variants():
    family = get_family(v.family)
    built = build_schema(family, make_config(family, v.config))
    out[v.name] = [built.fingerprint, built.signature.hash]
print(json.dumps(out))
"""

REQUIRED = {
    "ctvit/ctclip-v2", "ctvit/baseline", "ctvit/baseline-gan", "ctvit/optimized",
    "ctvit/baseline-rmsnorm", "ctvit/baseline-swiglu", "ctvit/baseline-flash", "ctvit/rmsnorm-swiglu",
    "ctvit/tiny", "ldm-unet/sd15", "ldm-unet/tiny", "diffusers-unet/sd15", "diffusers-unet/tiny",
}


def test_the_built_in_families_are_exactly_these():
    # Tests may register families of their own; the built-in ones come from registry.models.
    built_in = [f.name for f in families() if f.build.__module__.startswith("registry.models.")]
    assert built_in == ["ctvit", "diffusers-unet", "ldm-unet"]


def test_the_catalog_has_the_variants_users_train():
    names = {v.name for v in builtin_variants()}
    assert REQUIRED <= names


@pytest.fixture(scope="module")
def fingerprints() -> dict[str, list[str]]:
    out = {}
    for variant in builtin_variants():
        family = get_family(variant.family)
        built = build_schema(family, make_config(family, variant.config))
        assert built.schema.fingerprint.startswith("sha256:") and len(built.schema) > 0
        out[variant.name] = [built.fingerprint, built.signature.hash]
    return out


def test_fingerprints_are_stable_across_builds(fingerprints):
    for variant in builtin_variants():
        family = get_family(variant.family)
        again = build_schema(family, make_config(family, variant.config))
        assert [again.fingerprint, again.signature.hash] == fingerprints[variant.name], variant.name


def test_fingerprints_are_stable_across_processes(fingerprints):
    result = subprocess.run([sys.executable, "-c", FINGERPRINTS_SCRIPT], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == fingerprints


def test_distinct_layouts_have_distinct_fingerprints(fingerprints):
    # Schema-equivalent pairs are allowed (GEGLU vs SwiGLU), but their module signatures differ.
    signatures = [sig for _, sig in fingerprints.values()]
    assert len(set(signatures)) == len(signatures)
