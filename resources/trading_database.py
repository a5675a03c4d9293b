"""The trading database (SQLite by default, PostgreSQL when configured)."""

import dagster as dg
from pydantic import PrivateAttr

from pipelines.data.store import BarStore


class TradingDatabaseResource(dg.ConfigurableResource):  # type: ignore[misc]
    """SQLAlchemy URL of the trading database. Give a URL with credentials through
    ``dg.EnvVar("QUANTDAG_DATABASE_URL")`` so it is never shown in the UI."""

    url: str

    _store: BarStore | None = PrivateAttr(default=None)

    def store(self) -> BarStore:
        """The store, migrated to the newest schema on first use."""
        if self._store is None:
            store = BarStore(self.url)
            store.migrate()
            self._store = store
        return self._store
