"""What every command of the command line shares: the --config option, loading the
configuration, opening the store, and failing with a message and an exit code (README).

Apart from connector/cli.py so that the command groups in their own modules (cli_store,
cli_retention, cli_run) use the same helpers without importing the command line itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from connector.adapters.mapping import DEFAULT_MAPPINGS_DIR, MappingError, load_mappings
from connector.collections import collection_rows
from connector.config import DATABASE_ENV, Config, ConfigError, load_config
from connector.config import config_path as resolve_config_path
from connector.console import console, labelled
from connector.store import Store

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML configuration (default: $MELDPUNT_CONFIG or config/meldpunt.yaml)."
    ),
]


def fail(message: str, code: int = 2) -> typer.Exit:
    console.print(labelled("error:", "bold red", message))
    return typer.Exit(code)


def load(config_path: Path | None, *, new_recipient_files: bool = False) -> Config:
    """The configuration, or exit 2 saying what is wrong (`new_recipient_files`: see load_config)."""
    try:
        return load_config(config_path, new_recipient_files=new_recipient_files)
    except ConfigError as exc:
        raise fail(exc.render()) from None


def mappings(config: Config) -> dict:  # type: ignore[type-arg]
    try:
        return load_mappings(config.mappings_dir or DEFAULT_MAPPINGS_DIR)
    except MappingError as exc:
        raise fail(str(exc)) from None


def known_recipient(config: Config, recipient: str | None) -> None:
    """A mistyped --recipient must fail, not look like a recipient with nothing to do."""
    if recipient is not None:
        try:
            config.recipient(recipient)
        except KeyError:
            raise fail(f"unknown recipient {recipient!r}") from None


def missing_sqlite_file(database: str) -> Path | None:
    """The SQLite file `database` names, when it does not exist (else None: it exists, or the
    URL is not a SQLite file: PostgreSQL, in-memory, a `file:` URI)."""
    from sqlalchemy.engine import make_url

    url = make_url(database)
    name = url.database
    if url.get_backend_name() != "sqlite" or not name or name == ":memory:":
        return None
    if name.startswith("file:") or url.query.get("uri"):
        return None
    path = Path(name)
    return None if path.exists() else path.absolute()


def refuse_missing_store(config: Config, config_path: Path | None) -> None:
    """Fail (exit 1) when the configuration names a SQLite file that does not exist.

    Only commands that write what they are given (`ingest`, `serve`, `run`, `store upgrade`)
    may create a SQLite store. For the others a missing file means the configuration points
    somewhere else than the operator thinks: opening it would create an empty store and answer
    "0 objects" with success. (The check is here, not in Store: opening is how Store creates one.)
    """
    missing = missing_sqlite_file(config.database)
    if missing is None:
        return
    if os.environ.get(DATABASE_ENV):
        look = f"${DATABASE_ENV} (a relative SQLite path there is relative to the working directory)"
    else:
        look = (
            f"`database` in {resolve_config_path(config_path)} (a relative SQLite path is "
            "relative to the configuration file)"
        )
    raise fail(
        f"cannot open the store: the store {missing} does not exist (this command does not "
        f"create one); check {look}; `meldpunt ingest` creates the store",
        code=1,
    )


def store_failure(config: Config, exc: BaseException) -> typer.Exit:
    """The store could not be reached or used: its URL (password hidden) and why, exit 1."""
    from sqlalchemy.engine import make_url

    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    where = make_url(config.database).render_as_string(hide_password=True)
    return fail(f"cannot open the store {where}: {reason}", code=1)


STORE_ERRORS: tuple[type[BaseException], ...] = (OSError, ImportError)


def store_errors() -> tuple[type[BaseException], ...]:
    """What opening a store raises when the database cannot be reached or used."""
    from alembic.util.exc import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    return (SQLAlchemyError, CommandError, *STORE_ERRORS)


def store_if_there(config: Config) -> tuple[Store | None, str | None]:
    """The store when there is one to open, else None and why: for a command that answers from
    the configuration alone but more truly with the store (route explain: approved portal
    claims route too), never creating one."""
    missing = missing_sqlite_file(config.database)
    if missing is not None:
        return None, f"the store {missing} does not exist yet"
    try:
        store = Store.open(config.database)
        store.sync_collections(collection_rows(config))
    except store_errors() as exc:
        return None, f"the store could not be opened ({type(exc).__name__})"
    return store, None


def open_store(
    config: Config, config_path: Path | None = None, *, create: bool = False, migrate: bool = True
) -> Store:
    """Open the store, migrated and with the configuration's collections (`migrate` False: as it
    is, for commands that only look at its schema); a store that cannot be reached or used is
    an error message naming it (password hidden) and why, never a driver traceback."""
    if not create:
        refuse_missing_store(config, config_path)
    try:
        if not migrate:
            return Store(config.database)
        store = Store.open(config.database)
        store.sync_collections(collection_rows(config))
    except store_errors() as exc:
        raise store_failure(config, exc) from None
    return store
