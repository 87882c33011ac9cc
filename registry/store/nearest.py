"""Candidate retrieval for nearest-match: LSH band lookup, sketch estimate, then exact Jaccard.

1. The query schema's 32 band buckets select, through the primary key of
   `schema_sketch_bands`, every stored schema sharing a bucket, most shared buckets first
   (at most `CANDIDATE_CAP`).
2. Their sketches estimate the Jaccard index; the best few are decoded and scored exactly.
Cost depends on how many stored schemas resemble the query, not on how many are stored.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry.schema import Schema

from . import codec, sketch
from .orm import SchemaRow, SchemaSketchBandRow

CANDIDATE_CAP = 2000
_CHUNK = 500  # keeps IN lists well under SQLite's bound-parameter limit


def index_entries(schema: Schema) -> tuple[bytes, list[int]]:
    """The packed sketch of a schema and its distinct band buckets (what gets stored)."""
    packed = sketch.sketch(sketch.features(schema))
    return packed, sorted(set(sketch.bands(packed)))


def rank(session: Session, schema: Schema, limit: int) -> list[tuple[int, float]]:
    """`(schema_id, exact Jaccard)` of the stored schemas most like `schema`, best first."""
    query_features = sketch.features(schema)
    packed = sketch.sketch(query_features)
    buckets = sorted(set(sketch.bands(packed)))
    hits = func.count().label("hits")
    candidates = [
        schema_id
        for schema_id, _ in session.execute(
            select(SchemaSketchBandRow.schema_id, hits)
            .where(SchemaSketchBandRow.bucket.in_(buckets))
            .group_by(SchemaSketchBandRow.schema_id)
            .order_by(hits.desc(), SchemaSketchBandRow.schema_id)
            .limit(CANDIDATE_CAP)
        )
    ]
    if not candidates:
        return []
    mine = sketch.unpack(packed)
    estimated: list[tuple[float, int]] = []
    for start in range(0, len(candidates), _CHUNK):
        chunk = candidates[start : start + _CHUNK]
        for schema_id, stored in session.execute(select(SchemaRow.id, SchemaRow.sketch).where(SchemaRow.id.in_(chunk))):
            estimated.append((sketch.estimate(mine, sketch.unpack(stored)), schema_id))
    estimated.sort(key=lambda pair: (-pair[0], pair[1]))
    shortlist = [schema_id for _, schema_id in estimated[: max(3 * limit, 30)]]
    scored = [
        (schema_id, sketch.jaccard(query_features, sketch.features(codec.decode_schema(blob))))
        for schema_id, blob in session.execute(select(SchemaRow.id, SchemaRow.entries).where(SchemaRow.id.in_(shortlist)))
    ]
    scored.sort(key=lambda pair: (-pair[1], pair[0]))
    return scored[:limit]
