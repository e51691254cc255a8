"""Asset paths, content file manifests, relationships; upload sessions carry a path and files.

Existing data: every asset gets a path (its latest content's file name where that
is a valid relative path, else its id), and every content one manifest row (the
whole stream as one file, named like that). Portable: plain ADD COLUMN with a
default, CREATE TABLE and INDEX, and the backfill through SQLAlchemy Core, so it
runs on SQLite without rebuilding tables and on PostgreSQL as it is.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def _valid_path(path: str | None) -> bool:
    """The path rules of ``dataerai_server.paths`` as of this revision (a migration must not
    change when the application's code does)."""
    if not path or len(path) > 1024 or "\\" in path or "\x00" in path or path.startswith("/"):
        return False
    return all(segment not in ("", ".", "..") for segment in path.split("/"))


def upgrade() -> None:
    op.add_column('assets', sa.Column('path', sa.String(length=1024), server_default='', nullable=False))
    op.create_index('ix_assets_project_id_path', 'assets', ['project_id', 'path'], unique=False)
    op.create_index('ix_assets_collection_id_path', 'assets', ['collection_id', 'path'], unique=False)
    op.add_column('upload_sessions', sa.Column('path', sa.String(length=1024), nullable=True))
    op.add_column('upload_sessions', sa.Column('files', sa.JSON(), nullable=True))

    content_files = op.create_table('content_files',
    sa.Column('content_id', sa.String(length=40), nullable=False),
    sa.Column('index', sa.Integer(), nullable=False),
    sa.Column('path', sa.String(length=1024), nullable=False),
    sa.Column('offset', sa.BigInteger(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['content_id'], ['contents.id'], name=op.f('fk_content_files_content_id_contents')),
    sa.PrimaryKeyConstraint('content_id', 'index', name=op.f('pk_content_files')),
    sa.UniqueConstraint('content_id', 'path', name=op.f('uq_content_files_content_id_path'))
    )
    op.create_table('relationships',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('from_asset_id', sa.String(length=40), nullable=False),
    sa.Column('to_asset_id', sa.String(length=40), nullable=False),
    sa.Column('rel_type', sa.String(length=255), nullable=False),
    sa.Column('analysis_mode', sa.String(length=20), nullable=True),
    sa.Column('qualifier_note', sa.Text(), nullable=True),
    sa.Column('qualifier_time', sa.DateTime(), nullable=True),
    sa.Column('qualifiers', sa.JSON(), nullable=True),
    sa.Column('created_by', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], name=op.f('fk_relationships_created_by_users')),
    sa.ForeignKeyConstraint(['from_asset_id'], ['assets.id'], name=op.f('fk_relationships_from_asset_id_assets')),
    sa.ForeignKeyConstraint(['to_asset_id'], ['assets.id'], name=op.f('fk_relationships_to_asset_id_assets')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_relationships'))
    )
    op.create_index(op.f('ix_relationships_from_asset_id'), 'relationships', ['from_asset_id'], unique=False)
    op.create_index(op.f('ix_relationships_to_asset_id'), 'relationships', ['to_asset_id'], unique=False)

    _backfill(content_files)


def _backfill(content_files: sa.Table) -> None:
    """Give existing assets a path and existing contents their one-file manifest."""
    bind = op.get_bind()
    assets = sa.table('assets', sa.column('id', sa.String), sa.column('path', sa.String))
    contents = sa.table(
        'contents',
        sa.column('id', sa.String),
        sa.column('asset_id', sa.String),
        sa.column('size', sa.BigInteger),
        sa.column('sha256', sa.String),
        sa.column('file_name', sa.Text),
        sa.column('created_at', sa.DateTime),
    )
    rows = bind.execute(
        sa.select(contents.c.id, contents.c.asset_id, contents.c.size, contents.c.sha256, contents.c.file_name)
        .order_by(contents.c.asset_id, contents.c.created_at, contents.c.id)
    ).all()
    latest_name: dict[str, str | None] = {}
    for row in rows:
        latest_name[row.asset_id] = row.file_name  # ordered oldest first: the last one wins
    for asset_id in bind.execute(sa.select(assets.c.id)).scalars().all():
        name = latest_name.get(asset_id)
        path = name if name is not None and _valid_path(name) else asset_id
        bind.execute(sa.update(assets).where(assets.c.id == asset_id).values(path=path))
    files = [
        {
            'content_id': row.id,
            'index': 0,
            'path': row.file_name if row.file_name is not None and _valid_path(row.file_name) else row.asset_id,
            'offset': 0,
            'size': row.size,
            'sha256': row.sha256,  # one file: the verified whole-stream digest is the file's
        }
        for row in rows
    ]
    if files:
        op.bulk_insert(content_files, files)


def downgrade() -> None:
    op.drop_index(op.f('ix_relationships_to_asset_id'), table_name='relationships')
    op.drop_index(op.f('ix_relationships_from_asset_id'), table_name='relationships')
    op.drop_table('relationships')
    op.drop_table('content_files')
    # Plain DROP COLUMN (SQLite 3.35+): a batch rebuild of `assets` would trip the
    # foreign keys that point at it.
    op.drop_column('upload_sessions', 'files')
    op.drop_column('upload_sessions', 'path')
    op.drop_index('ix_assets_collection_id_path', table_name='assets')
    op.drop_index('ix_assets_project_id_path', table_name='assets')
    op.drop_column('assets', 'path')
