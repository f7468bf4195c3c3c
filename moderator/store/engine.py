"""Opening a store: the engine (SQLite tuned for a single-machine scan, PostgreSQL by URL),
where the store is, whether it exists, and its migrations (Alembic, run programmatically:
no alembic.ini, the scripts ship inside the package).
"""

from __future__ import annotations

import gc
import importlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

from sqlalchemy import (
    URL,
    BigInteger,
    Boolean,
    Connection,
    Engine,
    String,
    bindparam,
    create_engine,
    event,
    inspect,
    make_url,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.elements import BindParameter, ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import TypeDecorator

if TYPE_CHECKING:
    from alembic.config import Config

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Keys per IN (...) list: far below every backend's bound-parameter limit.
CHUNK = 500
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Every module that maps tables onto Base: autogenerate, and the test that the migrations
# build exactly these tables, only see imported modules.
TABLE_MODULES = (
    "moderator.store.tables",
    "moderator.store.runs",  # rescore checkpoints (issue 17)
    "moderator.store.queue_index",  # the indexed review queue, decisions per content (issues 17, 18)
    "moderator.store.review_work",  # appeals, review leases (issue 18)
)
# Any fixed number: serialises concurrent upgrades (several workers starting at once).
_PG_LOCK_KEY = 0x6D6F6465
# Source metadata may hold datetimes and the like: store their text, never fail a batch on it.
_json_serializer = partial(json.dumps, default=str, ensure_ascii=False)

T = TypeVar("T")


class StoreNotFound(Exception):
    """There is no store at the URL, and the caller asked not to create one. One-line message with the fix."""


class IdRange(NamedTuple):
    """Every row with first <= id <= last: one range predicate, where a list of the ids would take
    a statement (and thousands of bound parameters) per CHUNK of them. For idempotent refreshes
    (decisions, the queue) of a span of items, e.g. a rescore's chunk: recomputing an item of the
    span that the caller did not touch gives it what it already has."""

    first: int
    last: int

    @classmethod
    def of(cls, ids: Sequence[int]) -> IdRange:
        return cls(min(ids), max(ids))


class IdList(TypeDecorator[list[int]]):
    """A list of integer ids bound as ONE parameter: a PostgreSQL bigint[], SQLite JSON text."""

    impl = String
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        return dialect.type_descriptor(ARRAY(BigInteger) if dialect.name == "postgresql" else String())

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        ids = [int(v) for v in value]
        return ids if dialect.name == "postgresql" else json.dumps(ids)


class InIds(ColumnElement[bool]):
    """`column` among a list of ids in one bound parameter, however many: `= ANY(array)` on
    PostgreSQL, `IN (SELECT value FROM json_each(?))` on SQLite. One statement per call, where
    an IN list takes one per CHUNK ids and the driver parses a placeholder per id (issue 17)."""

    type = Boolean()
    inherit_cache = True
    _is_implicitly_boolean = True  # a predicate: no `= 1` after it where booleans are not native
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement), ("ids", InternalTraversal.dp_clauseelement)]

    def __init__(self, column: Any, ids: Iterable[int]) -> None:
        self.column = column
        self.ids: BindParameter[list[int]] = bindparam(None, list(ids), type_=IdList())


@compiles(InIds, "postgresql")
def _in_ids_pg(element: InIds, compiler: Any, **kw: Any) -> str:
    return f"{compiler.process(element.column, **kw)} = ANY({compiler.process(element.ids, **kw)})"


@compiles(InIds)
def _in_ids(element: InIds, compiler: Any, **kw: Any) -> str:
    ids = compiler.process(element.ids, **kw)
    return f"{compiler.process(element.column, **kw)} IN (SELECT value FROM json_each({ids}))"


def ids_sql(dialect: str, column: str, param: str) -> str:
    """The same predicate in text SQL, the list bound as `:param` (with type IdList)."""
    if dialect == "postgresql":
        return f"{column} = ANY(:{param})"
    return f"{column} IN (SELECT value FROM json_each(:{param}))"


def id_in(column: Any, chosen: Sequence[int] | IdRange | Any) -> Any:
    """SQL: `column` among the chosen ids (a list, an IdRange, or a subquery), in one statement."""
    if isinstance(chosen, IdRange):
        return column.between(chosen.first, chosen.last)
    if isinstance(chosen, (list, tuple, range)):
        return InIds(column, chosen)
    return column.in_(chosen)


def chunks(values: Iterable[T], size: int = CHUNK) -> Iterator[list[T]]:
    chunk: list[T] = []
    for value in values:
        chunk.append(value)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def driver_sql(conn: Connection, statement: str) -> str:
    """A statement written with ? placeholders, in the driver's own paramstyle."""
    return statement if conn.dialect.paramstyle == "qmark" else statement.replace("?", "%s")


class HasEngine(Protocol):
    """A store (repository.Store), named by what it offers here: this module sits below it."""

    @property
    def engine(self) -> Engine: ...


@contextmanager
def reading(source: HasEngine | Connection) -> Iterator[Connection]:
    """A Core connection for a few reads (cheaper than an ORM session): the one given, whose
    transaction's own writes count, or a new one of the store's engine."""
    if isinstance(source, Connection):
        yield source
        return
    with source.engine.connect() as conn:
        yield conn


def fetch_rows(conn: Connection, statement: str, params: Sequence[Any]) -> Sequence[Sequence[Any]]:
    """Every row of a statement written with ? placeholders. On PostgreSQL through a binary
    cursor: bytea arrives as stored, not as hex text for both ends to convert (a rescore's
    chunk of 20k embeddings, measured: 0.34 -> 0.23 s)."""
    if conn.dialect.name == "postgresql":
        cursor = conn.connection.driver_connection.cursor(binary=True)  # type: ignore[union-attr]
        cursor.execute(statement.replace("?", "%s"), params)
        return cursor.fetchall()  # type: ignore[no-any-return]
    return conn.exec_driver_sql(driver_sql(conn, statement), tuple(params)).all()


# -- engines ---------------------------------------------------------------------------------


def normalise_url(url: str | URL) -> URL:
    """`postgres://` and `postgresql://` mean psycopg 3, the driver this package installs."""
    u = make_url(url)
    if u.drivername in ("postgres", "postgresql"):
        u = u.set(drivername="postgresql+psycopg")
    return u


def _is_memory(u: URL) -> bool:
    return not u.database or u.database == ":memory:" or u.query.get("mode") == "memory"


def _sqlite_file(u: URL) -> Path | None:
    """The file of a SQLite URL (None for memory and file: URIs)."""
    if u.get_backend_name() != "sqlite" or _is_memory(u) or not u.database or u.database.startswith("file:"):
        return None
    return Path(u.database).expanduser()


def location(url: str | URL) -> str:
    """Where the store is, for people: the absolute path of a SQLite file, else the URL without its password."""
    u = normalise_url(url)
    path = _sqlite_file(u)
    if path is not None:
        return str(path.absolute())
    if u.get_backend_name() == "sqlite" and _is_memory(u):
        return "memory (sqlite://, gone when the process ends)"
    return u.render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: switching to WAL itself may have to wait for a lock.
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable enough with WAL, much faster
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    """WAL is persistent, so only a new file needs the switch; it can fail at once with
    "database is locked" (SQLite does not wait on its busy handler there) when several
    processes open a new database together: retried with backoff, within the busy timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.01
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def create_store_engine(url: str | URL, *, create: bool = True) -> Engine:
    """`create`: make the SQLite file's folder when missing (a scan on a fresh machine)."""
    u = normalise_url(url)
    if u.get_backend_name() != "sqlite":
        return create_engine(u, pool_pre_ping=True, json_serializer=_json_serializer)
    kwargs: dict[str, Any] = {}
    path = _sqlite_file(u)
    if _is_memory(u):
        # One connection, or every checkout would see its own empty database.
        kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
    elif path is not None:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        u = u.set(database=str(path))
    engine = create_engine(u, json_serializer=_json_serializer, **kwargs)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


# -- existence -------------------------------------------------------------------------------

_FIX = "give the right --database-url (or MODERATOR_DATABASE_URL), or run `moderator scan` to create a store"


def shares_one_connection(engine: Engine) -> bool:
    """Whether every session of the engine uses the same DBAPI connection (in-memory SQLite):
    work on another thread would interleave with the caller's transactions."""
    return isinstance(engine.pool, StaticPool)


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: bulk work allocates ~10^5 small containers, each
    allocation burst triggering a collection that walks all of them (measured: ~40% of a
    100k-item rescore, and a 1M export's shaping). What they free goes by reference counting as usual."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Aside:
    """Store work on one background thread, in submission order, while the caller computes:
    the database's time overlaps Python's (the reads and writes of rescore and diff). Inline
    for an engine that shares one connection. Leaving the block waits for the work in flight."""

    def __init__(self, engine: Engine, name: str) -> None:
        self._pool = None if shares_one_connection(engine) else ThreadPoolExecutor(1, thread_name_prefix=name)

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        if self._pool is not None:
            return self._pool.submit(fn, *args, **kwargs)
        done: Future[T] = Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - raised where the result is asked for, as on the thread
            done.set_exception(exc)
        return done

    def __enter__(self) -> Aside:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def pages_ahead(
    engine: Engine, name: str, read: Callable[[int], Sequence[Sequence[Any]]], after: int, size: int
) -> Iterator[Sequence[Sequence[Any]]]:
    """Keyset pages: `read(key)` gives up to `size` rows after `key` in key order (the key is a
    row's first column). The next page is read on a background thread (Aside) while the caller
    works on this one; a short page is the last."""
    with Aside(engine, name) as reader:
        pending = reader.submit(read, after)
        while rows := pending.result():
            full = len(rows) == size
            if full:
                pending = reader.submit(read, rows[-1][0])
            yield rows
            if not full:
                return


def check_file_exists(url: str | URL) -> None:
    """StoreNotFound for a SQLite URL whose file is missing (checked before anything creates it)."""
    u = normalise_url(url)
    path = _sqlite_file(u)
    if path is None or (path.is_file() and path.stat().st_size > 0):
        return
    raw = u.render_as_string(hide_password=True)
    hint = ""
    if not path.is_absolute() and Path("/", path).exists():
        hint = f"; did you mean sqlite:////{path}? an absolute path takes four slashes"
    raise StoreNotFound(f"no store at {path.absolute()} (from {raw}{hint}): {_FIX}")


def check_schema_exists(engine: Engine) -> None:
    """StoreNotFound when the database holds no store (never migrated: no alembic_version table)."""
    with engine.connect() as conn:
        found = inspect(conn).has_table("alembic_version")
    if not found:
        raise StoreNotFound(f"no store in {location(engine.url)} (the database has no moderator tables): {_FIX}")


# -- migrations ------------------------------------------------------------------------------


def load_table_modules() -> None:
    for module in TABLE_MODULES:
        importlib.import_module(module)


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    """A Config for alembic.command (upgrade, revision --autogenerate, history...)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        # ConfigParser interpolation: a literal % in a password must be doubled.
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def current_revisions(conn: Connection) -> set[str]:
    from alembic.runtime.migration import MigrationContext

    return set(MigrationContext.configure(conn).get_current_heads())


def upgrade(engine: Engine) -> None:
    """Bring the database to head; cheap when it is there already."""
    from alembic import command

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


def copy_to_temp_table(conn: Connection, table: str, rows: Iterable[Sequence[Any]]) -> None:
    """PostgreSQL: COPY rows into the temp table `table` ("name (column type, ...)") of this session,
    created when missing, emptied at commit (ON COMMIT DELETE ROWS) and of what an earlier call of
    this transaction left. Bulk writers then upsert from it in one statement (issue 17)."""
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    name = table.split()[0]
    cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} ON COMMIT DELETE ROWS")
    cursor.execute(f"DELETE FROM {name}")
    with cursor.copy(f"COPY {name} FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


# PostgreSQL's autovacuum rule for ANALYZE (a tenth of the table changed), kept by the writers
# themselves: with autovacuum off or behind, a store filled from empty stays planned as empty
# and every batch's queue statements scan the items (measured on a 1M fill: 1,400 items/s at
# the start, 170 items/s by 570k items).
ANALYZE_MIN_ROWS = 1000
ANALYZE_FRACTION = 0.1
GROWING_TABLES = ("items", "results", "embeddings", "queue_contents", "queue_places", "queue_facets")


class GrowthWatch:
    """Items one Store inserted since it last refreshed PostgreSQL's statistics of GROWING_TABLES."""

    def __init__(self) -> None:
        self.inserted = 0
        self.due = ANALYZE_MIN_ROWS  # inserted items at which the planner's count is read again

    def note(self, engine: Engine, inserted: int) -> None:
        """Count `inserted` new items; ANALYZE once they are a tenth of what the planner believes
        the table holds (and at least ANALYZE_MIN_ROWS). The planner's count is read only when
        the last one read is reached, not per batch. SQLite: nothing (its planner uses the
        indexes without statistics; Store.analyze runs after bulk work)."""
        if engine.dialect.name != "postgresql" or inserted <= 0:
            return
        self.inserted += inserted
        if self.inserted < self.due:
            return
        with engine.connect() as conn:
            believed = conn.exec_driver_sql("SELECT reltuples FROM pg_class WHERE oid = to_regclass('items')").scalar()
            self.due = max(ANALYZE_MIN_ROWS, int(ANALYZE_FRACTION * max(float(believed or 0), 0.0)))
            if self.inserted < self.due:
                return
            conn.exec_driver_sql(f"ANALYZE {', '.join(GROWING_TABLES)}")
            conn.commit()
        self.inserted = 0
