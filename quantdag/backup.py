"""``python -m quantdag.backup dump FILE`` / ``restore FILE``: the trading database, whole.

PostgreSQL goes through ``pg_dump --format=custom``, and a restore empties the database's
``public`` schema (also of tables created after the backup) before ``pg_restore
--single-transaction`` (the client tools of the server's major version); SQLite through its
online backup API (a consistent copy while the session writes). The database is
``QUANTDAG_DATABASE_URL``, else the selected environment's ``database_url``; a password in the
URL is handed to the tools in ``PGPASSWORD``, never on their command line.

Restore replaces what the database holds: stop the live session first (the sensor off, the run
terminated), restore, then let the session reconcile with the broker at its start. See
``docs/runbook.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from quantdag.live import database_url
from quantdag.project import load_project


class BackupError(RuntimeError):
    """The backup or restore could not be done (say why and what to do)."""


def _pg(url: sa.URL) -> tuple[list[str], dict[str, str]]:
    args = ["--host", url.host or "127.0.0.1", "--port", str(url.port or 5432)]
    if url.username:
        args += ["--username", url.username]
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = url.password
    return args, env


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupError(f"{name} is not installed: apt-get install postgresql-client")
    return path


def _run(cmd: list[str], env: dict[str, str], what: str) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise BackupError(f"{what} failed ({cmd[0]} exit {done.returncode}): {done.stderr.strip()}")


def _sqlite_path(url: sa.URL) -> Path:
    if not url.database or url.database == ":memory:":
        raise BackupError(f"{url.render_as_string(hide_password=True)} is not a file")
    return Path(url.database)


def dump(url: str, to: Path) -> None:
    """Write the database at ``url`` to ``to`` (PostgreSQL custom format, or a SQLite file)."""
    u = sa.make_url(url)
    if u.get_backend_name() == "postgresql":
        args, env = _pg(u)
        cmd = [_tool("pg_dump"), *args, "--format=custom", f"--file={to}", u.database or ""]
        _run(cmd, env, "pg_dump")
    elif u.get_backend_name() == "sqlite":
        source = _sqlite_path(u)
        if not source.exists():
            raise BackupError(f"{source} does not exist: nothing to back up")
        with sqlite3.connect(source) as src, sqlite3.connect(to) as dst:
            src.backup(dst)
    else:
        raise BackupError(f"backups of {u.get_backend_name()} are not supported")


def restore(url: str, source: Path) -> None:
    """Replace the database at ``url`` with the backup ``source``."""
    if not source.exists():
        raise BackupError(f"{source} does not exist")
    u = sa.make_url(url)
    if u.get_backend_name() == "postgresql":
        args, env = _pg(u)
        # Everything goes, also what was created after the backup (a newer migration's table
        # that pg_restore --clean would leave behind), then the backup comes back whole.
        wipe = "DROP SCHEMA public CASCADE; CREATE SCHEMA public;"
        _run(
            [_tool("psql"), *args, "-v", "ON_ERROR_STOP=1", "-q", "-c", wipe, u.database or ""],
            env,
            "emptying the database before the restore",
        )
        cmd = [
            _tool("pg_restore"),
            *args,
            "--single-transaction",
            "--no-owner",
            "--exit-on-error",
            f"--dbname={u.database}",
            str(source),
        ]
        _run(cmd, env, "pg_restore")
    elif u.get_backend_name() == "sqlite":
        with sqlite3.connect(source) as src, sqlite3.connect(_sqlite_path(u)) as dst:
            src.backup(dst)
    else:
        raise BackupError(f"restores of {u.get_backend_name()} are not supported")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("dump", "restore"))
    parser.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    url = database_url(load_project())
    try:
        (dump if args.action == "dump" else restore)(url, args.file)
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.action}: {sa.make_url(url).render_as_string(hide_password=True)} "
        f"{'->' if args.action == 'dump' else '<-'} {args.file}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
