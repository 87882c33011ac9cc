"""initial: families, variants, schemas, module signatures, schema versions, runs, checkpoints

Revision ID: 0001_initial
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from registry.store.orm import UTCDateTime

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "families",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_families"),
        sa.UniqueConstraint("name", name="uq_families_name"),
    )
    op.create_table(
        "variants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("family_id", sa.Integer(), nullable=False),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=True),
        sa.ForeignKeyConstraint(["family_id"], ["families.id"], name="fk_variants_family_id_families"),
        sa.PrimaryKeyConstraint("id", name="pk_variants"),
        sa.UniqueConstraint("name", name="uq_variants_name"),
    )
    op.create_index("ix_variants_family_id", "variants", ["family_id"])
    op.create_table(
        "schemas",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(80), nullable=False),
        sa.Column("fingerprint", sa.String(80), nullable=False),
        sa.Column("entry_count", sa.Integer(), nullable=False),
        sa.Column("numel", sa.BigInteger(), nullable=False),
        sa.Column("entries", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_schemas"),
        sa.UniqueConstraint("content_hash", name="uq_schemas_content_hash"),
    )
    op.create_index("ix_schemas_fingerprint", "schemas", ["fingerprint"])
    op.create_table(
        "module_signatures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(80), nullable=False),
        sa.Column("module_count", sa.Integer(), nullable=False),
        sa.Column("modules", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_module_signatures"),
        sa.UniqueConstraint("hash", name="uq_module_signatures_hash"),
    )
    op.create_table(
        "schema_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("variant_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("schema_id", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(80), nullable=False),
        sa.Column("signature_id", sa.Integer(), nullable=False),
        sa.Column("signature_hash", sa.String(80), nullable=False),
        sa.Column("code_revision", sa.String(200), nullable=True),
        sa.Column("package_versions", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=True),
        sa.ForeignKeyConstraint(["variant_id"], ["variants.id"], name="fk_schema_versions_variant_id_variants"),
        sa.ForeignKeyConstraint(["schema_id"], ["schemas.id"], name="fk_schema_versions_schema_id_schemas"),
        sa.ForeignKeyConstraint(
            ["signature_id"], ["module_signatures.id"], name="fk_schema_versions_signature_id_module_signatures"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_schema_versions"),
        sa.UniqueConstraint("variant_id", "version", name="uq_schema_versions_variant_id_version"),
    )
    op.create_index("ix_schema_versions_fingerprint", "schema_versions", ["fingerprint"])
    op.create_index("ix_schema_versions_schema_id", "schema_versions", ["schema_id"])
    op.create_index("ix_schema_versions_signature_id", "schema_versions", ["signature_id"])
    op.create_table(
        "runs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("variant_id", sa.Integer(), nullable=False),
        sa.Column("schema_version_id", sa.Integer(), nullable=True),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("host", sa.String(300), nullable=False),
        sa.Column("username", sa.String(200), nullable=False),
        sa.Column("scheduler_job_id", sa.String(200), nullable=True),
        sa.Column("world_size", sa.Integer(), nullable=False),
        sa.Column("code_revision", sa.String(200), nullable=True),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.Column("status", sa.String(40), nullable=False),
        sa.Column("resumed_from_checkpoint_id", sa.Integer(), nullable=True),
        sa.Column("parent_run_id", sa.String(32), nullable=True),
        sa.ForeignKeyConstraint(["variant_id"], ["variants.id"], name="fk_runs_variant_id_variants"),
        sa.ForeignKeyConstraint(
            ["schema_version_id"], ["schema_versions.id"], name="fk_runs_schema_version_id_schema_versions"
        ),
        sa.ForeignKeyConstraint(["parent_run_id"], ["runs.id"], name="fk_runs_parent_run_id_runs"),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
    )
    op.create_index("ix_runs_variant_id", "runs", ["variant_id"])
    op.create_index("ix_runs_started_at", "runs", ["started_at"])
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(4000), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mtime", sa.Double(), nullable=False),
        sa.Column("content_digest", sa.String(80), nullable=True),
        sa.Column("format", sa.String(60), nullable=False),
        sa.Column("container", sa.String(200), nullable=True),
        sa.Column("wrapper", sa.String(200), nullable=True),
        sa.Column("prefix", sa.String(400), nullable=True),
        sa.Column("fingerprint", sa.String(80), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=True),
        sa.Column("schema_version_id", sa.Integer(), nullable=True),
        sa.Column("run_id", sa.String(32), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["schema_version_id"], ["schema_versions.id"], name="fk_checkpoints_schema_version_id_schema_versions"
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_checkpoints_run_id_runs"),
        sa.PrimaryKeyConstraint("id", name="pk_checkpoints"),
        sa.UniqueConstraint("path", "size", "mtime", name="uq_checkpoints_path_size_mtime"),
    )
    op.create_index("ix_checkpoints_content_digest", "checkpoints", ["content_digest"])
    op.create_index("ix_checkpoints_fingerprint", "checkpoints", ["fingerprint"])
    op.create_index("ix_checkpoints_schema_version_id", "checkpoints", ["schema_version_id"])
    op.create_index("ix_checkpoints_run_id", "checkpoints", ["run_id"])
    # runs and checkpoints refer to each other: this side is added once both exist.
    with op.batch_alter_table("runs") as batch:
        batch.create_foreign_key(
            "fk_runs_resumed_from_checkpoint_id_checkpoints", "checkpoints", ["resumed_from_checkpoint_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint("fk_runs_resumed_from_checkpoint_id_checkpoints", type_="foreignkey")
    for table in ("checkpoints", "runs", "schema_versions", "module_signatures", "schemas", "variants", "families"):
        op.drop_table(table)
