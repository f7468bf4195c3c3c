"""Alembic, run programmatically: no alembic.ini, the scripts ship inside the package."""

from __future__ import annotations

import importlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Every module that maps tables onto Base. Add yours here: autogenerate, and the test
# that the migrations build exactly these tables, only see imported modules.
TABLE_MODULES = ("moderator.store.tables", "moderator.store.review_tables", "moderator.store.s3_tables")
# Any fixed number: serialises concurrent upgrades (several workers starting at once).
_PG_LOCK_KEY = 0x6D6F6465


def load_table_modules() -> None:
    for module in TABLE_MODULES:
        importlib.import_module(module)


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    """A Config for alembic.command (upgrade, revision --autogenerate, history...)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        # ConfigParser interpolation: a literal % in a password must be doubled.
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revisions() -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def current_revisions(conn: Connection) -> set[str]:
    return set(MigrationContext.configure(conn).get_current_heads())


def upgrade(engine: Engine) -> None:
    """Bring the database to head; cheap when it is there already."""
    with engine.connect() as conn:
        at_head = current_revisions(conn) == head_revisions()
        conn.rollback()
        if at_head:
            return
        sqlite = engine.dialect.name == "sqlite"
        if sqlite:
            # Batch migrations recreate tables; with foreign keys on, dropping the old
            # items table would cascade-delete results. The pragma is ignored inside a
            # transaction, hence before it, and restored before the connection is pooled.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            # One outer transaction: Alembic sees it as external and commits nothing
            # itself, so the lock below is held until every revision is applied.
            with conn.begin():
                if sqlite:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                elif engine.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
                command.upgrade(alembic_config(connection=conn), "head")
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()
