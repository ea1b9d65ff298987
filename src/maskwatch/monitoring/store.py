"""The event store: one schema for SQLite (the default) and PostgreSQL, through SQLAlchemy.

Tables:
- ``events``: one row per tracked person: source, track id, label (the track's majority
  vote), first/last seen (UTC epoch seconds), frames, mean score, optional snapshot path.
- ``minute_counts``: per source, minute and label: faces seen (face-frames) and people
  (distinct tracks) in that minute.
- ``maskwatch_meta``: key/value pairs, among them ``schema_version``.

The schema is versioned: :data:`MIGRATIONS` lists the steps from an empty database to
:data:`SCHEMA_VERSION`; :meth:`Store.migrate` applies the missing ones in one transaction
(under an advisory lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so several watchers
may start at once. SQLite runs in WAL mode: a commit survives ``kill -9`` of the writer, and
readers (the dashboard) never block it. Writes go through one :class:`StoreWriter` thread.
"""

from __future__ import annotations

import math
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

from maskwatch.errors import MaskwatchError
from maskwatch.files import make_folder

SCHEMA_VERSION = 2
DEFAULT_DB = "maskwatch.db"
#: Seconds per bucket of ``/api/stats``.
BUCKETS = {"minute": 60, "hour": 3600, "day": 86400}
MAX_LIMIT = 1000
#: Times the API takes: what ISO 8601 can write, 0001-01-01 to 9999-12-31 UTC (epoch seconds).
MIN_TIME = -62_135_596_800.0
MAX_TIME = 253_402_300_800.0  # exclusive
#: Event ids are 64-bit integers in the database.
MAX_ID = 2**63 - 1

try:  # the tables are built once sqlalchemy is importable (the `serve`/`watch` extra)
    import sqlalchemy as sa
except ImportError:  # pragma: no cover - reported by open_store
    sa = None


def _tables():
    md = sa.MetaData()
    meta = sa.Table(
        "maskwatch_meta", md,
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    events = sa.Table(
        "events", md,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("track_id", sa.Integer, nullable=False),
        sa.Column("label", sa.String(32)),
        sa.Column("first_seen", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("frames", sa.Integer, nullable=False),
        sa.Column("score", sa.Float),
        sa.Column("snapshot", sa.Text),
    )
    counts = sa.Table(
        "minute_counts", md,
        sa.Column("source", sa.String(200), primary_key=True),
        sa.Column("minute", sa.Float, primary_key=True),
        sa.Column("label", sa.String(32), primary_key=True),
        sa.Column("faces", sa.Integer, nullable=False),
        sa.Column("people", sa.Integer, nullable=False),
    )
    return md, meta, events, counts


if sa is not None:
    METADATA, META, EVENTS, COUNTS = _tables()


def _v1(conn) -> None:
    """Tables."""
    for table in (EVENTS, COUNTS):
        table.create(conn, checkfirst=True)


def _v2(conn) -> None:
    """Indexes for the dashboard's queries (latest events, by source, by label)."""
    for sql in (
        "CREATE INDEX IF NOT EXISTS ix_events_last_seen ON events (last_seen)",
        "CREATE INDEX IF NOT EXISTS ix_events_source_last_seen ON events (source, last_seen)",
        "CREATE INDEX IF NOT EXISTS ix_events_label_last_seen ON events (label, last_seen)",
        # covers /api/stats: a month of events is counted from the index alone
        "CREATE INDEX IF NOT EXISTS ix_events_first_seen ON events (first_seen, source, label)",
        "CREATE INDEX IF NOT EXISTS ix_minute_counts_minute ON minute_counts (minute)",
    ):
        conn.exec_driver_sql(sql)


#: Migration to version ``i + 1`` is ``MIGRATIONS[i]``.
MIGRATIONS: list[Callable] = [_v1, _v2]


def iso(t: float | None) -> str | None:
    """UTC epoch seconds as ISO 8601 (milliseconds)."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


class NotADatabase(MaskwatchError):
    """A file that exists but is not a database the store can use."""


def parse_time(text: str | float | None, name: str = "time") -> float | None:
    """ISO 8601 (no zone = UTC) or epoch seconds -> epoch seconds; None stays None.

    Raises MaskwatchError for anything else, and for a time outside 0001-01-01 to
    9999-12-31 UTC (:data:`MIN_TIME`, :data:`MAX_TIME`).
    """
    if text is None or text == "":
        return None
    value: float | None = None
    if isinstance(text, (int, float)):
        try:
            value = float(text)
        except OverflowError:  # an int beyond any float
            value = math.inf
    else:
        try:
            value = float(text)
        except ValueError:
            pass
        if value is not None and not math.isfinite(value):
            value = None  # "nan", "inf": not a time
    if value is None:
        try:
            dt = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
        except ValueError:
            raise MaskwatchError(f"{name}: expected ISO 8601 or epoch seconds, "
                                 f"got {text!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        value = dt.timestamp()
    if not MIN_TIME <= value < MAX_TIME:
        raise MaskwatchError(f"{name}: out of range, got {text!r} (expected a time from "
                             "0001-01-01 to 9999-12-31 UTC)")
    return value


def is_url(db: str) -> bool:
    return "://" in str(db)


def display_url(db: str) -> str:
    """The database as safe to print: a URL without its password."""
    if not is_url(db):
        return str(db)
    return sa.engine.make_url(db).render_as_string(hide_password=True)


class Store:
    """An opened event database: a SQLite file path or a SQLAlchemy URL
    (``postgresql://user:pass@host/db``, ``sqlite:///path``).

    ``create``: make a missing SQLite file (else a missing one is an error). The schema is
    migrated to :data:`SCHEMA_VERSION` on opening unless ``migrate=False``.
    """

    def __init__(self, db: str | Path = DEFAULT_DB, create: bool = True, migrate: bool = True):
        if sa is None:
            raise MaskwatchError("the event store needs SQLAlchemy: pip install 'maskwatch[serve]'")
        db = str(db)
        self.db = db
        if is_url(db):
            url = sa.engine.make_url(db)
            if url.drivername in ("postgresql", "postgres"):
                url = url.set(drivername="postgresql+psycopg")
            self.path = Path(url.database) if url.get_backend_name() == "sqlite" and (
                url.database) else None
        else:
            self.path = Path(db)
            url = sa.engine.URL.create("sqlite", database=str(self.path))
        self.dialect = url.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise MaskwatchError(f"--db: only SQLite and PostgreSQL are supported, got {db!r}")
        if self.path is not None:
            if self.path.is_dir():
                raise MaskwatchError(f"{self.path}: is a folder, not a database file")
            if not self.path.exists():
                if not create:
                    raise MaskwatchError(f"{self.path}: no such database (run `maskwatch watch "
                                         f"... --db {self.path}` first)")
                make_folder(self.path.parent, f"{self.path}: cannot make its folder")
        try:
            if self.dialect == "sqlite":
                self.engine = sa.create_engine(url, connect_args={"timeout": 30})
                sa.event.listen(self.engine, "connect", _sqlite_connect)
                sa.event.listen(self.engine, "begin", _sqlite_begin)
            else:
                self.engine = sa.create_engine(url, pool_pre_ping=True, pool_size=4,
                                               max_overflow=4)
        except ImportError as exc:
            raise MaskwatchError(f"--db {display_url(db)}: database driver missing ({exc}); "
                                 "pip install 'maskwatch[serve]'") from None
        if migrate:
            try:
                self.migrate()
            except sa.exc.DatabaseError as exc:  # a damaged SQLite file past its header
                if self.dialect != "sqlite" or isinstance(exc, sa.exc.OperationalError):
                    raise
                raise self._not_a_database(exc) from None

    # ------------------------------------------------------------ schema

    def _connect(self, write: bool = False):
        try:
            conn = self.engine.connect()
        except sa.exc.OperationalError as exc:
            raise MaskwatchError(f"{display_url(self.db)}: cannot open the database "
                                 f"({_first_line(exc)})") from None
        except sa.exc.DatabaseError as exc:  # SQLite: "file is not a database"
            raise self._not_a_database(exc) from None
        if write:
            conn = conn.execution_options(sqlite_begin="BEGIN IMMEDIATE")
        return conn

    def _not_a_database(self, exc: BaseException) -> NotADatabase:
        return NotADatabase(f"{display_url(self.db)}: not a maskwatch database "
                            f"({_first_line(exc)})")

    def version(self) -> int:
        """The schema version of the database (0 when empty)."""
        with self._connect() as conn:
            return _read_version(conn)

    def migrate(self, target: int = SCHEMA_VERSION) -> int:
        """Apply the missing migrations up to ``target``; returns the version reached."""
        with self._connect(write=True) as conn, conn.begin():
            if self.dialect == "postgresql":
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(81240316)")
            META.create(conn, checkfirst=True)
            current = _read_version(conn)
            if current > SCHEMA_VERSION:
                raise MaskwatchError(
                    f"{display_url(self.db)}: schema version {current} is newer than this "
                    f"maskwatch knows ({SCHEMA_VERSION}); upgrade maskwatch")
            for version in range(current + 1, target + 1):
                MIGRATIONS[version - 1](conn)
                _write_meta(conn, "schema_version", str(version))
            return max(current, target)

    def get_meta(self, key: str) -> str | None:
        with self._connect() as conn:
            return conn.execute(sa.select(META.c.value).where(META.c.key == key)).scalar()

    def set_meta(self, key: str, value: str) -> None:
        with self._connect(write=True) as conn, conn.begin():
            _write_meta(conn, key, value)

    # ------------------------------------------------------------ writing

    def add_events(self, rows: list[dict], conn=None, ids: bool = True) -> list[int]:
        """Insert events (dicts with the ``events`` columns); returns their ids (none when
        ``ids`` is False: a faster bulk insert)."""
        if not rows:
            return []
        if conn is None:
            with self._connect(write=True) as c, c.begin():
                return self.add_events(rows, c, ids)
        cols = [c.name for c in EVENTS.columns if c.name != "id"]
        clean = [{k: r.get(k) for k in cols} for r in rows]
        if not ids:  # straight to the driver's executemany
            mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
            sql = (f"INSERT INTO events ({', '.join(cols)}) "
                   f"VALUES ({', '.join([mark] * len(cols))})")
            conn.exec_driver_sql(sql, [tuple(r[k] for k in cols) for r in clean])
            return []
        result = conn.execute(EVENTS.insert().returning(EVENTS.c.id, sort_by_parameter_order=True),
                              clean)
        return [int(r[0]) for r in result]

    def add_counts(self, rows: list[dict], conn=None) -> None:
        """Add per-minute counts (source, minute, label, faces, people) to what is there."""
        if not rows:
            return
        if conn is None:
            with self._connect(write=True) as c, c.begin():
                return self.add_counts(rows, c)
        if self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        stmt = insert(COUNTS)
        stmt = stmt.on_conflict_do_update(
            index_elements=["source", "minute", "label"],
            set_={"faces": COUNTS.c.faces + stmt.excluded.faces,
                  "people": COUNTS.c.people + stmt.excluded.people},
        )
        conn.execute(stmt, rows)

    def delete_before(self, cutoff: float, conn=None) -> tuple[int, list[str]]:
        """Delete events that ended and minute counts that lie before ``cutoff``; returns
        (events deleted, their snapshot paths)."""
        if conn is None:
            with self._connect(write=True) as c, c.begin():
                return self.delete_before(cutoff, c)
        old = EVENTS.c.last_seen < cutoff
        snaps = [s for (s,) in conn.execute(
            sa.select(EVENTS.c.snapshot).where(old, EVENTS.c.snapshot.is_not(None)))]
        n = conn.execute(EVENTS.delete().where(old)).rowcount
        conn.execute(COUNTS.delete().where(COUNTS.c.minute < cutoff))
        return int(n or 0), snaps

    # ------------------------------------------------------------ reading

    def events(self, since: float | None = None, until: float | None = None,
               source: str | None = None, label: str | None = None,
               limit: int = 100) -> list[dict]:
        """Events that overlap [since, until), latest first, at most ``limit``."""
        limit = max(1, min(int(limit), MAX_LIMIT))
        q = sa.select(EVENTS).order_by(EVENTS.c.last_seen.desc(), EVENTS.c.id.desc())
        if since is not None:
            q = q.where(EVENTS.c.last_seen >= since)
        if until is not None:
            q = q.where(EVENTS.c.first_seen < until)
        if source:
            q = q.where(EVENTS.c.source == source)
        if label:
            q = q.where(EVENTS.c.label == label)
        with self._connect() as conn:
            rows = conn.execute(q.limit(limit)).mappings().all()
        return [event_record(r) for r in rows]

    def event(self, event_id: int) -> dict | None:
        """The event with this id, or None (also for an id no database column can hold)."""
        if not -MAX_ID - 1 <= event_id <= MAX_ID:
            return None
        with self._connect() as conn:
            row = conn.execute(sa.select(EVENTS).where(EVENTS.c.id == event_id)).mappings().first()
        return event_record(row) if row else None

    def count_events(self) -> int:
        with self._connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(EVENTS)).scalar())

    def sources(self) -> list[str]:
        with self._connect() as conn:
            return sorted(s for (s,) in conn.execute(sa.select(EVENTS.c.source).distinct()))

    def _bucket(self, column, size: int):
        if self.dialect == "sqlite":  # CAST truncates; times are positive
            return sa.cast(column / size, sa.Integer) * size
        return sa.func.floor(column / size) * size

    def stats(self, bucket: str = "hour", since: float | None = None,
              until: float | None = None, source: str | None = None) -> dict:
        """People (events, by first_seen) and face-frames (minute counts) per bucket, source
        and label, with totals and compliance (with_mask share of labelled people)."""
        if bucket not in BUCKETS:
            raise MaskwatchError(f"bucket must be one of {', '.join(BUCKETS)}, got {bucket!r}")
        size = BUCKETS[bucket]
        since, until = parse_time(since, "since"), parse_time(until, "until")  # range checks
        until = time.time() if until is None else until
        if since is None:
            since = until - size * (60 if bucket == "minute" else 24 if bucket == "hour" else 30)
        # a default `since` may fall before year 1; MIN_TIME starts a day, so a bucket too
        since = float(max(math.floor(since / size) * size, MIN_TIME))
        people_q = sa.select(
            self._bucket(EVENTS.c.first_seen, size).label("start"), EVENTS.c.source,
            EVENTS.c.label, sa.func.count().label("n"),
        ).where(EVENTS.c.first_seen >= since, EVENTS.c.first_seen < until)
        faces_q = sa.select(
            self._bucket(COUNTS.c.minute, size).label("start"), COUNTS.c.source,
            COUNTS.c.label, sa.func.sum(COUNTS.c.faces).label("n"),
        ).where(COUNTS.c.minute >= since, COUNTS.c.minute < until)
        if source:
            people_q = people_q.where(EVENTS.c.source == source)
            faces_q = faces_q.where(COUNTS.c.source == source)
        series: dict[tuple, dict] = {}
        with self._connect() as conn:
            for kind, q, table in (("people", people_q, EVENTS), ("faces", faces_q, COUNTS)):
                q = q.group_by("start", table.c.source, table.c.label)
                for start, src, label, n in conn.execute(q):
                    key = (float(start), src)
                    entry = series.setdefault(key, {"people": {}, "faces": {}})
                    entry[kind][label or "face"] = int(n)
        from maskwatch.labels import WITH_MASK, sort_classes

        out, totals, per_source = [], {}, {}
        for (start, src), entry in sorted(series.items()):
            labelled = sum(v for k, v in entry["people"].items() if k != "face")
            out.append({
                "start": iso(start), "source": src, "people": entry["people"],
                "faces": entry["faces"],
                "compliance": round(entry["people"].get(WITH_MASK, 0) / labelled, 4)
                if labelled else None,
            })
            for k, v in entry["people"].items():
                totals[k] = totals.get(k, 0) + v
                per_source.setdefault(src, {})
                per_source[src][k] = per_source[src].get(k, 0) + v
        labelled = sum(v for k, v in totals.items() if k != "face")
        return {
            "bucket": bucket, "since": iso(since), "until": iso(until),
            "classes": sort_classes(k for e in out for k in (*e["people"], *e["faces"])),
            "sources": sorted({e["source"] for e in out}),
            "series": out, "totals": totals, "per_source": per_source,
            "compliance": round(totals.get(WITH_MASK, 0) / labelled, 4) if labelled else None,
        }

    def size_bytes(self) -> int | None:
        """Bytes on disk (SQLite file + WAL) or the PostgreSQL database size."""
        if self.path is not None:
            return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal"))
                       if p.exists())
        with self._connect() as conn:
            return int(conn.exec_driver_sql("SELECT pg_database_size(current_database())")
                       .scalar())

    def close(self) -> None:
        self.engine.dispose()


def event_record(row) -> dict:
    """One event as the API returns it."""
    return {
        "id": int(row["id"]), "source": row["source"], "track_id": int(row["track_id"]),
        "label": row["label"], "first_seen": iso(row["first_seen"]),
        "last_seen": iso(row["last_seen"]), "frames": int(row["frames"]),
        "score": None if row["score"] is None else round(float(row["score"]), 4),
        "duration_s": round(float(row["last_seen"]) - float(row["first_seen"]), 3),
        "snapshot": row["snapshot"],
    }


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_version(conn) -> int:
    if not sa.inspect(conn).has_table("maskwatch_meta"):
        return 0
    value = conn.execute(
        sa.select(META.c.value).where(META.c.key == "schema_version")).scalar()
    return int(value) if value else 0


def _write_meta(conn, key: str, value: str) -> None:
    if conn.execute(sa.select(META.c.key).where(META.c.key == key)).first():
        conn.execute(META.update().where(META.c.key == key).values(value=value))
    else:
        conn.execute(META.insert().values(key=key, value=value))


def _sqlite_connect(dbapi_conn, _record) -> None:
    # SQLAlchemy's documented recipe: let it emit BEGIN itself, so DDL is transactional too
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # in WAL: a commit survives a killed process
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin(conn) -> None:
    conn.exec_driver_sql(conn.get_execution_options().get("sqlite_begin", "BEGIN"))


# ---------------------------------------------------------------- the one writer


_STOP = object()


class StoreWriter:
    """The one thread that writes to a :class:`Store`.

    Watchers hand it finished events and minute counts; it writes whatever is waiting in one
    transaction and commits at once, then calls ``on_event(record)`` for each event stored
    (so whatever is reported has been committed). A failed write (database locked, server
    gone) is retried with backoff, up to ``retry_max`` seconds apart, keeping the rows.
    """

    def __init__(self, store: Store, on_event: Callable[[dict], None] | None = None,
                 log: Callable[[str], None] | None = None, retry_max: float = 30.0):
        self.store = store
        self.on_event = on_event
        self.log = log or (lambda msg: print(f"maskwatch: {msg}", file=sys.stderr))
        self.retry_max = retry_max
        self.events_written = 0
        self.deleted = 0
        self.errors = 0
        self.lost = 0  # events given up on at close (the database stayed unwritable)
        self._gave_up = False
        self._q: queue.Queue = queue.Queue()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="maskwatch-db-writer",
                                        daemon=True)
        self._thread.start()

    def add_event(self, row: dict) -> None:
        self._q.put(("event", row))

    def add_counts(self, rows: Iterable[dict]) -> None:
        rows = list(rows)
        if rows:
            self._q.put(("counts", rows))

    def retention(self, cutoff: float, on_done: Callable[[int, list[str]], None]) -> None:
        """Delete what ended before ``cutoff``; ``on_done(n, snapshot_paths)`` after commit."""
        self._q.put(("retention", (cutoff, on_done)))

    def flush(self) -> None:
        """Wait until everything handed over so far is written."""
        self._q.join()

    def close(self, timeout: float | None = None) -> None:
        self._closing.set()  # a write that keeps failing now gives up (after retry_max)
        self._q.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch = [self._q.get()]
            while len(batch) < 1000:
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in batch)
            work = [item for item in batch if item is not _STOP]
            try:
                if work:
                    self._write(work)
            finally:
                for _ in batch:
                    self._q.task_done()
            if stop:
                return

    def _write(self, work: list) -> None:
        events = [row for kind, row in work if kind == "event"]
        counts = [r for kind, rows in work if kind == "counts" for r in rows]
        retention = [arg for kind, arg in work if kind == "retention"]
        delay = 0.5
        while True:
            if self._gave_up:  # closing, and the database did not come back: do not wait again
                self.lost += len(events)
                self.log(f"database write failed, {len(events)} event(s) lost")
                return
            try:
                with self.store._connect(write=True) as conn, conn.begin():
                    ids = self.store.add_events(events, conn)
                    self.store.add_counts(_merge_counts(counts), conn)
                    removed = [self.store.delete_before(cutoff, conn) for cutoff, _ in retention]
                break
            except (MaskwatchError, sa.exc.SQLAlchemyError) as exc:
                self.errors += 1
                if self._closing.is_set() and delay > self.retry_max:
                    self._gave_up = True
                    self.lost += len(events)
                    self.log(f"database write failed, {len(events)} event(s) lost: "
                             f"{_first_line(exc)}")
                    return
                self.log(f"database write failed ({_first_line(exc)}); retrying in {delay:g}s")
                time.sleep(delay)
                delay = min(delay * 2, self.retry_max * 2 if self._closing.is_set()
                            else self.retry_max)
        self.events_written += len(ids)
        for row, event_id in zip(events, ids):
            if self.on_event is not None:
                try:
                    self.on_event({**row, "id": event_id})
                except Exception as exc:  # the event is stored; the writer must go on
                    self.log(f"event {event_id} stored, but not reported: "
                             f"{type(exc).__name__}: {exc}")
        for (_cutoff, on_done), (n, snaps) in zip(retention, removed):
            self.deleted += n
            on_done(n, snaps)


def _merge_counts(rows: list[dict]) -> list[dict]:
    """Sum rows with the same (source, minute, label): one upsert per key."""
    merged: dict[tuple, dict] = {}
    for r in rows:
        key = (r["source"], float(r["minute"]), r["label"])
        m = merged.setdefault(key, {"source": key[0], "minute": key[1], "label": key[2],
                                    "faces": 0, "people": 0})
        m["faces"] += int(r["faces"])
        m["people"] += int(r["people"])
    return list(merged.values())


def open_store(db: str | Path, create: bool = True) -> Store:
    """Open ``db`` with a one-line error when it cannot be."""
    return Store(db, create=create)


__all__ = ["BUCKETS", "DEFAULT_DB", "MAX_TIME", "MIGRATIONS", "MIN_TIME", "SCHEMA_VERSION",
           "NotADatabase", "Store", "StoreWriter", "display_url", "event_record", "iso",
           "open_store", "parse_time"]
