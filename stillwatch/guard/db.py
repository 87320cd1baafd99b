"""The guard's database: an engine for a SQLite file (the embedded default) or PostgreSQL, and migrations.

SQLite runs in WAL mode. With `synchronous=NORMAL` (the default) a commit is in the WAL before it returns, so
a record the gateway said was written survives a SIGKILL or crash of the process; only a power cut can take
the last commits. `synchronous=FULL` (`STILLWATCH_SQLITE_SYNCHRONOUS=FULL`) fsyncs every commit and survives a
power cut too, at one fsync per transaction, which the audit log's group commit (audit.py) spreads over every
record of a batch. `busy_timeout` lets the gateway, the
CLI and a second process share one file. Several gateway replicas share PostgreSQL instead (by URL).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

from stillwatch.errors import ConfigError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
BUSY_TIMEOUT_MS = 10_000
# pg_advisory_xact_lock key: replicas that start together run the migrations one at a time.
_MIGRATION_LOCK = 0x5717_3A7C
_WRITE = "stillwatch_write"


def normalize_url(url: str) -> str:
    """Map `postgres://` and `postgresql://` onto the psycopg 3 driver; other URLs pass through."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


SYNCHRONOUS_MODES = ("NORMAL", "FULL")


def make_engine(url: str, synchronous: str = "NORMAL") -> Engine:
    """An engine for `url`: a SQLite file (WAL, `synchronous`, busy_timeout, foreign keys) or PostgreSQL."""
    synchronous = synchronous.upper()
    if synchronous not in SYNCHRONOUS_MODES:
        raise ConfigError(f"SQLite synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, got {synchronous!r}")
    url = normalize_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"not a database URL: {url!r}") from None
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed.database or "", synchronous)
    if parsed.get_backend_name() == "postgresql":
        try:
            return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20)
        except ModuleNotFoundError as exc:  # the optional driver
            raise ConfigError(f"PostgreSQL needs psycopg: pip install 'stillwatch[postgres]' ({exc})") from None
    raise ConfigError(f"unsupported database {parsed.get_backend_name()!r}: use sqlite:/// or postgresql://")


def _sqlite_engine(database: str, synchronous: str) -> Engine:
    memory = database in ("", ":memory:")
    if memory:  # one shared connection, or every thread would see its own empty database
        engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(f"sqlite:///{database}", connect_args={"check_same_thread": False,
                                                                       "timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        # SQLAlchemy, not the sqlite3 module, emits BEGIN (see _on_begin): real transactions, DDL included.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        if not memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A writer takes the write lock up front (waiting up to busy_timeout); a deferred transaction that
        # reads and then writes would fail at once with SQLITE_BUSY when another process wrote in between.
        immediate = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in a write transaction, committed on success (BEGIN IMMEDIATE on SQLite)."""
    with engine.connect() as conn:
        conn.execution_options(**{_WRITE: True})
        with conn.begin():
            yield conn


def alembic_config():  # -> alembic.config.Config
    """Alembic's configuration without an alembic.ini: the migrations ship inside the package."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def upgrade(target: str | Engine, revision: str = "head") -> None:
    """Bring the database at `target` (URL or engine) up to `revision` with the packaged Alembic migrations."""
    from alembic import command

    engine = make_engine(target) if isinstance(target, str) else target
    cfg = alembic_config()
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    if isinstance(target, str):
        engine.dispose()


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
