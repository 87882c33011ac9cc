"""nearest-match index: a MinHash sketch per schema and its LSH band buckets, backfilled

Revision ID: 0003_nearest_match_index
Revises: 0002_event_log
Create Date: 2025-01-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from registry.store import codec, sketch

revision = "0003_nearest_match_index"
down_revision = "0002_event_log"
branch_labels = None
depends_on = None

BATCH = 500


def upgrade() -> None:
    with op.batch_alter_table("schemas") as batch:
        batch.add_column(sa.Column("sketch", sa.LargeBinary(), nullable=True))
    op.create_table(
        "schema_sketch_bands",
        sa.Column("bucket", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("schema_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.ForeignKeyConstraint(["schema_id"], ["schemas.id"], name="fk_schema_sketch_bands_schema_id_schemas"),
        sa.PrimaryKeyConstraint("bucket", "schema_id", name="pk_schema_sketch_bands"),
    )
    _backfill()


def _backfill() -> None:
    """Sketch every schema already stored (their rows are kept as they are)."""
    schemas = sa.table("schemas", sa.column("id", sa.Integer), sa.column("entries", sa.LargeBinary),
                       sa.column("sketch", sa.LargeBinary))
    bands = sa.table("schema_sketch_bands", sa.column("bucket", sa.BigInteger), sa.column("schema_id", sa.Integer))
    connection = op.get_bind()
    last_id = 0
    while True:
        rows = connection.execute(
            sa.select(schemas.c.id, schemas.c.entries).where(schemas.c.id > last_id).order_by(schemas.c.id).limit(BATCH)
        ).all()
        if not rows:
            return
        for schema_id, blob in rows:
            packed = sketch.sketch(sketch.features(codec.decode_schema(blob)))
            connection.execute(sa.update(schemas).where(schemas.c.id == schema_id).values(sketch=packed))
            connection.execute(
                sa.insert(bands), [{"bucket": b, "schema_id": schema_id} for b in sorted(set(sketch.bands(packed)))]
            )
        last_id = rows[-1][0]


def downgrade() -> None:
    op.drop_table("schema_sketch_bands")
    with op.batch_alter_table("schemas") as batch:
        batch.drop_column("sketch")
