"""The trading database (SQLite by default, PostgreSQL when configured)."""

import dagster as dg
from pydantic import PrivateAttr

from pipelines.data.store import BarStore


class TradingDatabaseResource(dg.ConfigurableResource):  # type: ignore[misc]
    """SQLAlchemy URL of the trading database. Give a URL with credentials through
    ``dg.EnvVar("QUANTDAG_DATABASE_URL")`` so it is never shown in the UI.

    ``connect_timeout_s``: seconds to wait for a PostgreSQL server to answer a new connection
    (at least 2) before the run fails naming its host and port. ``busy_timeout_s``: seconds a
    SQLite writer waits for another run's write to finish before it fails saying so.
    ``statement_timeout_s``: the longest one PostgreSQL statement may run (a server that hangs
    inside a query ends the run instead of blocking it)."""

    url: str
    connect_timeout_s: int = 10
    busy_timeout_s: float = 60.0
    statement_timeout_s: float = 600.0

    _store: BarStore | None = PrivateAttr(default=None)

    def store(self) -> BarStore:
        """The store, migrated to the newest schema on first use."""
        if self._store is None:
            store = BarStore(
                self.url,
                connect_timeout=self.connect_timeout_s,
                busy_timeout=self.busy_timeout_s,
                statement_timeout=self.statement_timeout_s,
            )
            store.migrate()
            self._store = store
        return self._store
