"""``python -m quantdag.killswitch trip|status|reset``: the kill switch of the trading database.

The database is the selected environment's, as for ``make run``: ``QUANTDAG_ENV`` (local |
paper | live), ``QUANTDAG_SETTINGS`` (default ``config/settings.yaml``) and
``QUANTDAG_DATABASE_URL`` (overrides the settings' ``database_url``). A tripped switch halts
trading (working orders are cancelled, nothing new is sent) in every process that reads that
database, until a person resets it with a reason. Every trip and reset is a row of
``risk_events``.

Examples::

    python -m quantdag.killswitch trip --reason "fills the broker cannot explain"
    python -m quantdag.killswitch status
    python -m quantdag.killswitch reset --reason "fills reconciled with the broker"

Prints one line (the switch's status) and exits 0; an error is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import UTC, datetime

import sqlalchemy as sa

from pipelines.config import ConfigError
from pipelines.data.store import StoreError
from pipelines.risk.killswitch import KillSwitch
from pipelines.secrets import MASK, redact_uri
from quantdag.project import load_project
from quantdag.resources import build_resources


class KillSwitchCliError(Exception):
    """A mistake in the command; the message says what to do."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quantdag.killswitch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "action", choices=("trip", "status", "reset"), help="trip, read or reset the switch"
    )
    parser.add_argument("--reason", help="why (required to reset; recorded with a trip)")
    parser.add_argument("--actor", help="who does it (default: the operating-system user)")
    parser.add_argument("--name", default="global", help="the switch's name (default: global)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    url = ""
    try:
        if args.action == "status" and args.reason is not None:
            raise KillSwitchCliError("status takes no --reason (only trip and reset record one)")
        if args.action == "reset" and not (args.reason or "").strip():
            raise KillSwitchCliError(
                'a reset needs --reason "...": say what was checked and why trading may resume'
            )
        actor = args.actor if args.actor is not None else _user()
        db = build_resources(load_project())["trading_db"].process_config_and_initialize()
        url = db.url
        switch = KillSwitch(db.store().engine, args.name)
        now = datetime.now(UTC)
        if args.action == "trip":
            status = switch.trip(reason=args.reason or "", actor=actor, now=now)
        elif args.action == "reset":
            status = switch.reset(reason=args.reason, actor=actor, now=now)
        else:
            status = switch.status()
    except (KillSwitchCliError, ConfigError, StoreError, ValueError, sa.exc.SQLAlchemyError) as exc:
        if args.debug:
            raise
        print(f"kill switch: {_redacted(str(exc), url)}", file=sys.stderr)
        return 2
    print(f"{status.describe(args.name)} [trading database {redact_uri(url)}]")
    return 0


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        raise KillSwitchCliError(
            "cannot tell the operating-system user: say who you are with --actor NAME"
        ) from None


def _redacted(message: str, url: str) -> str:
    """``message`` in one line, without the database password even where a driver quoted it."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    if url:
        try:
            password = sa.make_url(url).password
        except sa.exc.ArgumentError:
            password = None
        text = text.replace(url, redact_uri(url))
        if password:
            text = text.replace(str(password), MASK)
    return text


if __name__ == "__main__":
    sys.exit(main())
