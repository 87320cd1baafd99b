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

from stillwatch.errors import ConfigError, StillwatchError

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


class DatabaseError(StillwatchError):
    """The database is unreachable, is not a stillwatch database, or is at a revision this version lacks."""


def head_revision() -> str:
    """The newest revision the packaged migrations know."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def describe(exc: BaseException) -> str:
    """One line for a database failure, without the SQL or parameters that SQLAlchemy appends."""
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip().splitlines()
    return text[0] if text else type(inner).__name__


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and in-memory SQLite)."""
    try:
        parsed = make_url(normalize_url(url))
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser()


def open_database(url: str, synchronous: str = "NORMAL", *, migrate: bool) -> Engine:
    """An engine for `url` whose schema is at the packaged head: migrated first when `migrate`, else only
    checked, so that a read-only command never writes (nor creates a file) and fails with one line."""
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    file = sqlite_file(url)
    if not migrate and file is not None and not file.is_file():
        raise DatabaseError(f"no database at {file}")
    engine = make_engine(url, synchronous)
    try:
        if migrate:
            upgrade(engine)
        else:
            revision, head = current_revision(engine), head_revision()
            if revision is None:
                raise DatabaseError(f"{_where(url)} holds no stillwatch tables; `stillwatch serve` or "
                                    "`stillwatch keys create` sets it up")
            if revision != head and not _known(revision):
                raise CommandError(f"Can't locate revision identified by '{revision}'")
            if revision != head:
                raise DatabaseError(f"{_where(url)} is at revision {revision}, not {head}: run `stillwatch serve` "
                                    "or a write command (e.g. `stillwatch accounts create`) once to migrate it")
    except CommandError as exc:
        engine.dispose()
        raise DatabaseError(f"{_where(url)} is at a schema revision this stillwatch does not know "
                            f"({describe(exc)}); is it newer than this version?") from None
    except SQLAlchemyError as exc:
        engine.dispose()
        raise DatabaseError(f"cannot use the database {_where(url)}: {describe(exc)}") from None
    except BaseException:
        engine.dispose()
        raise
    return engine


def _known(revision: str) -> bool:
    from alembic.script import ScriptDirectory

    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except Exception:  # noqa: BLE001 - alembic raises several kinds for an unknown id
        return False


def _where(url: str) -> str:
    from stillwatch.redact import redact_url

    return redact_url(url)


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
