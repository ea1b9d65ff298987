"""`maskwatch watch`: the event store, the per-source watcher, retention, kill -9, reconnects."""

from __future__ import annotations

import functools
import http.server
import json
import os
import queue
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
from monitoring_helpers import ListSource, ScriptedDetector, write_clip

pytest.importorskip("sqlalchemy", reason="the watch extra is missing (pip install sqlalchemy)")

from maskwatch.cli import main  # noqa: E402
from maskwatch.errors import MaskwatchError  # noqa: E402
from maskwatch.monitoring.store import SCHEMA_VERSION, Store, StoreWriter, parse_time  # noqa: E402
from maskwatch.monitoring.watcher import SourceWatcher, WatchConfig, split_source  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("watch") / "clip.mp4")


def _event(source="door", track_id=1, label="with_mask", first=1000.0, last=1001.0, **kw):
    return {"source": source, "track_id": track_id, "label": label, "first_seen": first,
            "last_seen": last, "frames": kw.get("frames", 10), "score": kw.get("score", 0.9),
            "snapshot": kw.get("snapshot")}


# ---------------------------------------------------------------- the store


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A fresh database: a SQLite file, or a database on the test PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "events.sqlite")
    from postgres_helpers import create_database

    return create_database(request.getfixturevalue("postgres_url"),
                           f"t{abs(hash(request.node.nodeid)) % 10**9}")


def _indexes(store: Store) -> set[str]:
    import sqlalchemy as sa

    return {ix["name"] for ix in sa.inspect(store.engine).get_indexes("events")}


def test_store_migrates_step_by_step_and_refuses_a_newer_schema(db_url):
    old = Store(db_url, migrate=False)
    assert old.version() == 0
    assert old.migrate(target=1) == 1
    assert _indexes(old) == set()
    old.add_events([_event()])  # a version-1 database already holds events
    old.close()
    store = Store(db_url)  # opening migrates the rest, keeping the data
    assert store.version() == SCHEMA_VERSION == 2
    assert "ix_events_last_seen" in _indexes(store)
    assert [e["track_id"] for e in store.events()] == [1]
    if store.dialect == "sqlite":
        assert sqlite3.connect(db_url).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.set_meta("schema_version", "99")
    store.close()
    with pytest.raises(MaskwatchError, match="newer than this maskwatch"):
        Store(db_url)


def test_store_refuses_what_it_cannot_open(tmp_path):
    with pytest.raises(MaskwatchError, match="no such database"):
        Store(tmp_path / "absent.sqlite", create=False)
    with pytest.raises(MaskwatchError, match="only SQLite and PostgreSQL"):
        Store("mysql://u@h/db")
    with pytest.raises(MaskwatchError, match="cannot open the database"):
        Store("postgresql://nobody@127.0.0.1:1/none")


def test_store_queries_filter_and_bucket(db_url):
    store = Store(db_url)
    t0 = 1_800_000_000.0  # 08:00 UTC, on an hour: buckets are easy to tell
    store.add_events([
        _event("door", 1, "with_mask", t0 + 10, t0 + 20),
        _event("door", 2, "without_mask", t0 + 70, t0 + 80),
        _event("door", 3, "with_mask", t0 + 3700, t0 + 3710),
        _event("hall", 1, "incorrect_mask", t0 + 30, t0 + 3605),
    ])
    store.add_counts([{"source": "door", "minute": t0, "label": "with_mask", "faces": 5,
                       "people": 1}])
    store.add_counts([{"source": "door", "minute": t0, "label": "with_mask", "faces": 2,
                       "people": 1}])
    latest = store.events()
    assert [(e["source"], e["track_id"]) for e in latest] == [
        ("door", 3), ("hall", 1), ("door", 2), ("door", 1)]
    assert latest[0]["first_seen"] == "2027-01-15T09:01:40.000+00:00"
    assert [e["track_id"] for e in store.events(source="door", label="with_mask")] == [3, 1]
    # overlap with [since, until): the hall person spans the whole first hour
    window = store.events(since=t0 + 3600, until=t0 + 3700)
    assert [(e["source"], e["track_id"]) for e in window] == [("hall", 1)]
    assert len(store.events(limit=2)) == 2
    stats = store.stats("hour", since=t0, until=t0 + 7200)
    assert stats["series"] == [
        {"start": "2027-01-15T08:00:00.000+00:00", "source": "door",
         "people": {"with_mask": 1, "without_mask": 1}, "faces": {"with_mask": 7},
         "compliance": 0.5},
        {"start": "2027-01-15T08:00:00.000+00:00", "source": "hall",
         "people": {"incorrect_mask": 1}, "faces": {}, "compliance": 0.0},
        {"start": "2027-01-15T09:00:00.000+00:00", "source": "door",
         "people": {"with_mask": 1}, "faces": {}, "compliance": 1.0},
    ]
    assert stats["totals"] == {"with_mask": 2, "without_mask": 1, "incorrect_mask": 1}
    assert stats["compliance"] == 0.5
    assert stats["classes"] == ["with_mask", "without_mask", "incorrect_mask"]
    minute = store.stats("minute", since=t0, until=t0 + 120, source="door")
    assert [(s["start"][11:16], s["people"]) for s in minute["series"]] == [
        ("08:00", {"with_mask": 1}), ("08:01", {"without_mask": 1})]
    assert store.stats("day", since=t0, until=t0 + 86400)["totals"]["with_mask"] == 2
    with pytest.raises(MaskwatchError, match="bucket"):
        store.stats("week")
    assert store.delete_before(t0 + 100) == (2, [])
    assert store.count_events() == 2
    assert parse_time("2027-01-15T08:00:00Z") == t0 == parse_time(str(t0))
    with pytest.raises(MaskwatchError, match="ISO 8601"):
        parse_time("yesterday")


def test_times_outside_what_iso_8601_writes_are_refused(tmp_path):
    """since=1e20 or until=1e12 (year 33658) once ended in OverflowError / ValueError in
    stats; they are one clear MaskwatchError, and the extremes that fit still work."""
    for bad in ("1e20", "-1e300", "1e12", "-1e15", 1e300, 10**400, float("nan")):
        with pytest.raises(MaskwatchError, match="since: out of range"):
            parse_time(bad, "since")
    assert parse_time("0") == 0.0 and parse_time("0001-01-01") == -62_135_596_800.0
    assert parse_time("9999-12-31T23:59:59Z") == 253_402_300_799.0
    store = Store(tmp_path / "e.sqlite")
    store.add_events([_event()])
    for kw in ({"since": 1e20}, {"until": -1e300}, {"since": 0, "until": 1e12}):
        with pytest.raises(MaskwatchError, match="out of range"):
            store.stats("day", **kw)
    for bucket in ("minute", "hour", "day"):  # a default `since` before year 1 is clamped
        assert store.stats(bucket, until=-62_135_596_800.0)["since"].startswith("0001-01-01")
    assert store.stats("day", since=0)["totals"] == {"with_mask": 1}


def test_an_event_id_beyond_64_bits_is_no_event(tmp_path):
    store = Store(tmp_path / "e.sqlite")
    store.add_events([_event()])
    assert store.event(1)["track_id"] == 1
    for event_id in (2**63, -2**63 - 1, 10**20, 0, -1):
        assert store.event(event_id) is None


def test_a_file_that_is_not_a_database_is_one_clear_error(tmp_path, capsys):
    from maskwatch.monitoring.store import NotADatabase

    text = tmp_path / "notes.txt"
    text.write_text("hello, not a database\n")
    with pytest.raises(NotADatabase, match="notes.txt: not a maskwatch database"):
        Store(text)
    with pytest.raises(NotADatabase):
        Store(text, create=False)
    assert issubclass(NotADatabase, MaskwatchError)
    code = main(["watch", str(tmp_path / "clip.mp4"), "--db", str(text), "--detector", "yunet",
                 "--threads", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        f"maskwatch: error: {text}: not a maskwatch database (file is not a database)"]


def test_writer_reports_an_event_only_once_it_is_committed(db_url):
    store, other = Store(db_url), Store(db_url)
    seen = []

    def on_event(row):  # another connection must already see it
        found = other.event(row["id"])
        seen.append((row["track_id"], found and found["label"]))

    writer = StoreWriter(store, on_event=on_event)
    for i in range(1, 6):
        writer.add_event(_event(track_id=i, label="without_mask"))
    writer.add_counts([{"source": "door", "minute": 960.0, "label": "x", "faces": 1,
                        "people": 1}] * 3)
    writer.close(10)
    assert sorted(seen) == [(i, "without_mask") for i in range(1, 6)]
    assert writer.events_written == 5
    assert other.stats("minute", since=900, until=1020)["series"][0]["faces"] == {"x": 3}


# ---------------------------------------------------------------- the watcher


class Collect:
    def __init__(self):
        self.events, self.counts = [], []

    def add_event(self, row):
        self.events.append(row)

    def add_counts(self, rows):
        self.counts.extend(rows)


def _script():
    a, b, noise = (5, 5, 25, 25), (40, 10, 60, 30), (30, 30, 40, 40)
    script = {i: [(a, "without_mask" if i < 8 else "with_mask", 0.8 if i < 8 else 0.6)]
              for i in range(10)}
    for i in range(12, 20):
        script[i] = [(b, "with_mask", 0.9)]
    script[15].append((noise, "with_mask", 0.9))
    return script


def test_watcher_writes_one_event_per_person(tmp_path):
    out = Collect()
    cfg = WatchConfig(max_missed=2, snapshots=tmp_path / "snaps", blur=True)
    w = SourceWatcher("clip.mp4", "clip", ScriptedDetector(_script()), out, cfg,
                      open_source=lambda spec: ListSource(20), clock=lambda: 1000.0)
    w.run()
    assert w.frames == 20 and w.error is None
    a, b = out.events  # the 1-frame face is noise, not a person
    assert (a["track_id"], a["label"], a["frames"]) == (1, "without_mask", 10)
    assert (a["first_seen"], a["last_seen"]) == (1000.0, pytest.approx(1000.9))
    assert a["score"] == pytest.approx((8 * 0.8 + 2 * 0.4) / 10)  # raw scores, majority label
    assert (b["label"], b["frames"], b["first_seen"]) == ("with_mask", 8, pytest.approx(1001.2))
    assert b["last_seen"] == pytest.approx(1001.9)
    counts = {c["label"]: (c["faces"], c["people"], c["minute"]) for c in out.counts}
    assert counts == {"without_mask": (10, 1, 960.0), "with_mask": (9, 2, 960.0)}  # smoothed labels
    snap = Path(a["snapshot"])
    assert snap.is_file() and snap.parent.parent.parent == (tmp_path / "snaps").resolve()
    assert snap.parent.name == "1970-01-01" and snap.name.startswith("clip-001640.000-t1")


class _UnsureDetector(ScriptedDetector):
    """As ScriptedDetector, but faces right of x = 35 are uncertain boxes (not counted)."""

    def detect(self, rgb):
        faces = super().detect(rgb)
        for f in faces:
            f.counted = f.box[0] < 35
        return faces


def test_watcher_leaves_uncounted_faces_out_of_events_and_counts(tmp_path):
    out = Collect()
    w = SourceWatcher("clip.mp4", "clip", _UnsureDetector(_script()), out,
                      WatchConfig(max_missed=2), open_source=lambda spec: ListSource(20),
                      clock=lambda: 1000.0)
    w.run()
    # person b (x = 40) is never counted: no event, and its faces are not in the counts
    assert [(e["track_id"], e["label"]) for e in out.events] == [(1, "without_mask")]
    counts = {c["label"]: (c["faces"], c["people"]) for c in out.counts}
    assert counts == {"without_mask": (10, 1), "with_mask": (1, 1)}  # the 1-frame noise


def test_watcher_reconnects_a_dropped_stream_with_backoff():
    out, logs, opened = Collect(), [], []

    def open_source(spec):
        opened.append(spec)
        if len(opened) in (1, 3):
            raise MaskwatchError("connection refused")
        return ListSource(5)

    script = {i: [((5, 5, 25, 25), "without_mask", 0.9)] for i in range(5)}
    cfg = WatchConfig(reconnect_min=0.01, reconnect_max=1.0, max_reconnects=3)
    w = SourceWatcher("rtsp://user:secret@cam.local/live", "cam", ScriptedDetector(script), out,
                      cfg, log=logs.append, open_source=open_source)
    w.run()
    assert len(opened) == 4 and w.frames == 10 and w.reconnects == 3
    waits = [m for m in logs if "reconnecting" in m]
    assert waits == [
        "cam: cannot open (connection refused); reconnecting in 0.01s (attempt 1)",
        "cam: stream dropped after 5 frame(s); reconnecting in 0.01s (attempt 2)",
        "cam: cannot open (connection refused); reconnecting in 0.02s (attempt 3)",
    ]
    assert "gave up after 3 reconnection(s)" in w.error
    # each connection's person is stored when the stream drops; ids go on across reconnects
    assert [(e["track_id"], e["frames"]) for e in out.events] == [(1, 5), (2, 5)]
    assert not any("secret" in m for m in logs)


def test_watcher_ends_a_file_that_cannot_be_read(tmp_path):
    out, logs = Collect(), []
    w = SourceWatcher(str(tmp_path / "absent.mp4"), "absent", ScriptedDetector({}), out,
                      WatchConfig(), log=logs.append)
    w.run()
    assert "no such video file" in w.error and out.events == []


def test_source_names():
    assert split_source("door=rtsp://u:p@cam/x?a=b") == ("door", "rtsp://u:p@cam/x?a=b")
    assert split_source("rtsp://u:p@cam.local/x?a=b") == ("cam.local_x_a_b", "rtsp://u:p@cam.local/x?a=b")
    assert split_source("0") == ("camera0", "0")
    assert split_source("/videos/hall.mp4") == ("hall", "/videos/hall.mp4")


# ---------------------------------------------------------------- the command


def test_watch_clip_keeps_events_alerts_and_applies_retention(clip, tmp_path, capsys):
    db, snaps = tmp_path / "events.sqlite", tmp_path / "snaps"
    old_snap = snaps / "door" / "old.jpg"
    orphan = snaps / "door" / "orphan.jpg"
    old_snap.parent.mkdir(parents=True)
    old_snap.write_bytes(b"x")
    orphan.write_bytes(b"x")
    ten_days_ago = time.time() - 10 * 86400
    os.utime(orphan, (ten_days_ago, ten_days_ago))
    Store(db).add_events([_event("door", 7, "without_mask", ten_days_ago, ten_days_ago + 5,
                                 snapshot=str(old_snap))])
    alert = tmp_path / "alert.json"
    cmd = shlex.join([sys.executable, "-c",
                      f"import sys; open({str(alert)!r}, 'wb').write(sys.stdin.buffer.read())"])
    code = main(["watch", str(clip), "--db", str(db), "--detector", "yunet", "--threads", "1",
                 "--json", "--snapshots", str(snaps), "--blur", "--keep-days", "1",
                 "--alert-after", "4", "--alert-command", cmd])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = [json.loads(line) for line in captured.out.splitlines()]
    events, summary = lines[:-1], lines[-1]["summary"]
    # the masked walker's drawn mask sits below the nose bridge: the bundled three-class
    # model calls it worn wrongly (either way, not bare)
    assert [(e["source"], e["label"]) for e in events] == [
        ("clip", "without_mask"), ("clip", "incorrect_mask")]
    assert all(e["frames"] >= 15 and e["score"] > 0.5 for e in events)
    assert summary["sources"]["clip"]["frames"] == 40 and summary["deleted"] == 1
    assert "retention: deleted 1 event(s) and 2 snapshot(s)" in captured.err
    assert not old_snap.exists() and not orphan.exists()
    assert all(Path(e["snapshot"]).is_file() for e in events)
    stored = Store(db).events()
    assert sorted(e["id"] for e in stored) == sorted(e["id"] for e in events)
    assert json.loads(alert.read_text())["face"]["label"] == "without_mask"


def _serve_folder(folder: Path):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.slow
def test_kill_9_leaves_every_reported_event_in_a_database_that_opens(clip, tmp_path):
    """A real `maskwatch watch` process on a stream that keeps dropping (so it never ends),
    killed with SIGKILL once it has reported events: each reported event is in the file."""
    server = _serve_folder(clip.parent)
    db = tmp_path / "killed.sqlite"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "maskwatch", "watch",
         f"door=http://127.0.0.1:{server.server_port}/{clip.name}", "--db", str(db), "--json",
         "--detector", "yunet", "--threads", "1", "--reconnect-max", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    reported = []
    try:
        deadline = time.monotonic() + 120
        while len(reported) < 3:
            assert proc.poll() is None, proc.stderr.read()
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
                reported.append(json.loads(line))
            except queue.Empty:
                pytest.fail("no event reported in time")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.shutdown()
    assert proc.returncode == -signal.SIGKILL
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = dict(con.execute("SELECT id, label FROM events").fetchall())
    for event in reported:
        assert rows.get(event["id"]) == event["label"]
    con.close()
    assert "reconnecting" in proc.stderr.read()
    store = Store(db)
    assert store.count_events() >= 3 and store.version() == SCHEMA_VERSION


# ---------------------------------------------------------------- odd sources and situations


def test_source_names_that_cannot_be_folders_or_are_mistyped_are_one_clear_error():
    for item, message in [("..=clip.mp4", "'..' cannot name a source"),
                          ("my door=clip.mp4", "may only use letters"),
                          ("door=", "no source after '='")]:
        with pytest.raises(MaskwatchError, match=message):
            split_source(item)
    with pytest.raises(MaskwatchError) as info:
        split_source("my door=rtsp://user:secret@cam.local/x")
    assert "secret" not in str(info.value)


def test_a_stream_that_cannot_be_opened_is_logged_without_its_password():
    from maskwatch.detection.video import VideoSource

    with pytest.raises(MaskwatchError) as info:
        VideoSource("http://user:secret@127.0.0.1:9/x.mp4")  # a closed port
    assert "secret" not in str(info.value) and "127.0.0.1:9/x.mp4" in str(info.value)


def test_a_snapshot_that_cannot_be_written_keeps_its_event(tmp_path, monkeypatch):
    import maskwatch.imaging

    def full_disk(path, *a, **kw):
        raise MaskwatchError(f"{path}: cannot write the image (No space left on device)")

    monkeypatch.setattr(maskwatch.imaging, "save_rgb", full_disk)
    out, logs = Collect(), []
    w = SourceWatcher("clip.mp4", "clip", ScriptedDetector(_script()), out,
                      WatchConfig(max_missed=2, snapshots=tmp_path / "snaps"), log=logs.append,
                      open_source=lambda spec: ListSource(20), clock=lambda: 1000.0)
    w.run()
    assert [(e["track_id"], e["snapshot"]) for e in out.events] == [(1, None), (2, None)]
    assert sum("No space left on device" in m for m in logs) == 2


def test_writer_outlives_a_failing_report_and_gives_up_on_close(tmp_path):
    store = Store(tmp_path / "e.sqlite")
    reported = []

    def on_event(row):  # `--json | head -1`: the reader is gone after the first line
        if reported:
            raise BrokenPipeError(32, "Broken pipe")
        reported.append(row["id"])

    writer = StoreWriter(store, on_event=on_event, log=lambda m: None)
    for i in range(3):  # one at a time (a broken writer would never take the next)
        writer.add_event(_event(track_id=i))
        time.sleep(0.2)
    writer.close(10)
    assert writer.events_written == 3 and store.count_events() == 3

    class Gone(Store):  # the database went read-only, or the server away, for good
        def _connect(self, write=False):
            raise MaskwatchError("attempt to write a readonly database")

    stuck = StoreWriter(Gone(tmp_path / "e.sqlite", migrate=False), log=lambda m: None,
                        retry_max=0.05)
    stuck.add_event(_event())
    time.sleep(0.3)  # already retrying when the watch stops
    stuck.add_event(_event(track_id=2))
    stuck.close(timeout=10)
    assert not stuck._thread.is_alive() and stuck.lost == 2


def test_watch_refuses_a_snapshot_folder_that_is_a_file_and_a_read_only_db(tmp_path,
                                                                          monkeypatch):
    from maskwatch.monitoring import service

    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    with pytest.raises(MaskwatchError, match="--snapshots .*a file is in the way"):
        service.watch(["clip.mp4"], tmp_path / "e.sqlite", object,
                      WatchConfig(snapshots=afile))
    with pytest.raises(MaskwatchError, match="cannot make its folder"):
        Store(afile / "e.sqlite")
    db = tmp_path / "ro.sqlite"
    Store(db).close()
    db.chmod(0o444)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: m != os.W_OK and real(p, m))  # even as root
    with pytest.raises(MaskwatchError, match="read-only"):
        service.watch(["clip.mp4"], db, object, WatchConfig())


def test_watch_json_into_a_closed_pipe_stops_and_keeps_every_event(clip, tmp_path,
                                                                  monkeypatch, capsys):
    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    db = tmp_path / "e.sqlite"
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    code = main(["watch", str(clip), "--db", str(db), "--detector", "yunet", "--threads", "1",
                 "--json"])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err and "output closed" in err
    assert Store(db).count_events() == 2
