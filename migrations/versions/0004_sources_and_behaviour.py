"""family sources and behaviour digests: where a variant's family came from, how a version behaves

Revision ID: 0004_sources_and_behaviour
Revises: 0003_nearest_match_index
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_sources_and_behaviour"
down_revision = "0003_nearest_match_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Where the family of a variant was loaded from when it was registered: "built-in",
    # "entry point <dist> <version>", "pyproject <path>", "--plugin <module>", "class <pkg.mod:Class>".
    with op.batch_alter_table("variants") as batch:
        batch.add_column(sa.Column("family_source", sa.String(length=500), nullable=True))
    # The behaviour digest of a schema version (DESIGN §11): probe, digest, tolerance; NULL when
    # the family has no probe or the version predates digests.
    with op.batch_alter_table("schema_versions") as batch:
        batch.add_column(sa.Column("behaviour", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("schema_versions") as batch:
        batch.drop_column("behaviour")
    with op.batch_alter_table("variants") as batch:
        batch.drop_column("family_source")
