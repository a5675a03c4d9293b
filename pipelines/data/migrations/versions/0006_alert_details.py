"""The alert log keeps each alert's details, so that one no sink delivered can be sent again.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.add_column("alert_log", sa.Column("details", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("alert_log") as batch:
        batch.drop_column("details")
