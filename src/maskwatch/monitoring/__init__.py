"""Watching cameras for days: the event store, the per-source watcher and retention.

- :mod:`~maskwatch.monitoring.store`: the versioned schema (SQLite or PostgreSQL through
  SQLAlchemy), its migrations, queries, and the single writer thread.
- :mod:`~maskwatch.monitoring.watcher`: one thread per source: decode, detect, track, and
  turn each tracked person into one event.
"""
