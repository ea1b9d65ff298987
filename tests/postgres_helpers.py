"""A throw-away PostgreSQL server for the tests: Debian's `postgresql` binaries, a temporary
data folder, a free port on 127.0.0.1, run as a non-root user (``postgres`` when the tests
run as root). Every reason it cannot be had becomes a skip reason."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Unavailable(Exception):
    """Why no PostgreSQL server could be started (the skip reason)."""


def server_bindir() -> Path:
    found = shutil.which("pg_ctl")
    if found and Path(found).resolve().with_name("initdb").exists():
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if versions:
        return Path(versions[-1]).parent
    raise Unavailable("PostgreSQL server binaries (initdb, pg_ctl) are missing: "
                      "apt-get install postgresql")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return ""


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server; yields the URL of its ``postgres`` database (user ``maskwatch``)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise Unavailable("the psycopg package is missing (pip install psycopg)") from None
    bindir = server_bindir()
    run_as: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="maskwatch-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(tmp)
            raise Unavailable("running as root and there is no `postgres` user to run the "
                              "server as") from None
        if not shutil.which("runuser"):
            shutil.rmtree(tmp)
            raise Unavailable("running as root and `runuser` is missing")
        os.chown(tmp, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data, log, port = tmp / "data", tmp / "server.log", _free_port()
    try:
        res = subprocess.run(
            [*run_as, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "maskwatch",
             "-E", "UTF8", "--no-sync"], capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise Unavailable(f"initdb failed: {(res.stderr or res.stdout).strip()[-300:]}")
        res = subprocess.run(
            [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
             "-o", f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
            capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise Unavailable(f"the PostgreSQL server did not start: {_tail(log)}")
        try:
            yield f"postgresql://maskwatch@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                            "-w", "stop"], capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise Unavailable(f"the PostgreSQL server could not be run: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def create_database(url: str, name: str) -> str:
    """Create an empty database ``name`` on the server of ``url``; returns its URL."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + "/" + name
