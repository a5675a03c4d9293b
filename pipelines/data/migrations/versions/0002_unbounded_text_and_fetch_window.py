"""Unbounded text for outside names; the fetch window of each quarantine row.

Symbols, source names (``files:<directory>``), batch names and symbols in quarantine rows come
from outside and had fixed widths (16, 64, 200), so one long value failed a whole batch on
PostgreSQL where SQLite (which does not enforce widths) stored it. They become ``text``; on
SQLite the declared types are left as they are, since it stores any length already.

``quarantine`` gains ``fetch_start``/``fetch_end``: the window of the fetch that quarantined the
row, so that a re-fetch of that window supersedes the rows it quarantined, including rows whose
own time could not be parsed. Rows quarantined before this revision have no fetch window.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

_WIDENED = {
    "bars": ("symbol", "source"),
    "quarantine": ("batch", "source", "symbol"),
    "ingest_coverage": ("source", "symbol", "batch"),
}


def _ts() -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return (
        sa.DateTime(timezone=True)
        if op.get_bind().dialect.name == "postgresql"
        else sa.BigInteger()
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # varchar -> text is binary coercible: no table rewrite, no index rebuild; on the
        # partitioned ``bars`` it recurses into every partition.
        for table, columns in _WIDENED.items():
            alters = ", ".join(f'ALTER COLUMN "{c}" TYPE text' for c in columns)
            op.execute(f"ALTER TABLE {table} {alters}")
    op.add_column("quarantine", sa.Column("fetch_start", _ts()))
    op.add_column("quarantine", sa.Column("fetch_end", _ts()))
    op.create_index("quarantine_source_ts_idx", "quarantine", ["source", "ts"])


def downgrade() -> None:
    # The widths are not narrowed again: that would fail on (or cut) the values it now holds.
    op.drop_index("quarantine_source_ts_idx", "quarantine")
    op.drop_column("quarantine", "fetch_end")
    op.drop_column("quarantine", "fetch_start")
