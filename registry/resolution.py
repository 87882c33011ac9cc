"""The document `registry resolve` writes: what a trainer must build to load a checkpoint."""

from __future__ import annotations

import json
from typing import Any


def resolution_document(result: Any, *, as_json: bool = False) -> str:
    """YAML (default) or JSON text with family, variant, config, prefix and how it was matched."""
    document = {
        "family": result.family,
        "variant": result.variant,
        "status": result.status,
        "schema_version": result.schema_version,
        "prefix": result.prefix,
        "converter": result.converter,
        "fingerprint": result.fingerprint,
        "config": result.config,
    }
    if as_json:
        return json.dumps(document, indent=2) + "\n"
    import yaml

    return yaml.safe_dump(document, sort_keys=False)
