"""Large collections, in any order of machines and processes: nothing here knows models.

- ``select_shard``: this machine's part of a file list (``--shard I/N``: file k of the
  list sorted by path goes to part k mod N).
- ``read_done`` / ``AppendWriter``: results appended to a JSON-lines or CSV file, one
  flushed write per input, so a crash keeps every finished record; ``--resume`` reads
  the file back and skips the inputs already in it.
- ``ordered_map``: a pool of worker processes (each with its own model) with a bounded
  number of tasks in flight; results come back in input order.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from maskwatch.errors import MaskwatchError

T = TypeVar("T")

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


# -------------------------------------------------------------------------- shards


def check_batch_options(workers: int | None, resume: bool, output, shard, ray) -> None:
    """One-line errors for the large-collection options of classify and detect."""
    if resume and not output:
        raise MaskwatchError("--resume needs --results FILE")
    if workers is not None and workers < 1:
        raise MaskwatchError("--workers must be at least 1")
    if shard is not None and ray:
        raise MaskwatchError("--shard and --ray do not mix: Ray spreads the inputs over the "
                             "cluster itself")


def select_shard(items: Sequence[T], shard: tuple[int, int] | None,
                 key: Callable[[T], str] = str) -> list[T]:
    """The items of part I of N: item k of the list sorted by ``key`` goes to part k mod N.

    Deterministic for the same file list on every machine; the result keeps the input
    order. ``shard=None``: everything.
    """
    if shard is None:
        return list(items)
    i, n = shard
    ranked = sorted(range(len(items)), key=lambda j: (key(items[j]), j))
    keep = {j for pos, j in enumerate(ranked) if pos % n == i}
    return [item for j, item in enumerate(items) if j in keep]


def same_file_key(path: str | Path) -> str:
    """How inputs are matched against an output file on --resume (absolute path; a URI
    as it is)."""
    return str(path) if "://" in str(path) else os.path.abspath(str(path))


# ---------------------------------------------------------------------- output file

#: A spreadsheet runs a cell that starts with one of these as a formula.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: How output files are encoded: file names that are not UTF-8 keep their bytes.
ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}


def _escaped(value: str) -> bool:
    """Whether ``value`` reads as a cell ``csv_cell`` escaped: ``'`` then a formula start
    or another ``'``."""
    return value[:1] == "'" and value[1:2].startswith((*FORMULA_START, "'"))


def csv_cell(value):
    """A cell no spreadsheet will run: text starting with = + - @ (or a tab or carriage
    return) gets a leading ``'``, as OWASP advises; numbers such as ``-3`` stay as they are.
    Text that would read back as such a cell (``'=x``, ``''x``) gets one too, so
    ``csv_uncell`` gives back every string."""
    if isinstance(value, str):
        if _escaped(value):
            return "'" + value
        if value.startswith(FORMULA_START):
            try:
                float(value)
            except ValueError:
                return "'" + value
    return value


def csv_uncell(value: str) -> str:
    """The text ``csv_cell`` was given (for reading our own CSV files back)."""
    return value[1:] if _escaped(value) else value


def csv_text(rows: Iterable[Sequence]) -> str:
    """CSV lines (``\n`` ended) for ``rows``, every cell made safe by ``csv_cell``."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([csv_cell(c) for c in r] for r in rows)
    return buf.getvalue()


def write_error(path: str | Path, exc: OSError) -> MaskwatchError:
    """The one-line error for a failed write (a full disk, a lost mount...)."""
    return MaskwatchError(f"{path}: cannot write ({exc.strerror or exc})")


def json_line(obj) -> str:
    """One JSON object on one line (compact), newline included."""
    return json.dumps(obj, separators=(",", ":")) + "\n"


def output_format(path: str | Path) -> str:
    """"jsonl" or "csv" from the file name."""
    suffix = Path(path).suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise MaskwatchError(f"{path}: --results must end in .jsonl or .csv")


def read_done(path: str | Path) -> dict[str, int]:
    """Inputs already in an output file: absolute path -> last frame recorded (-1 for
    an image). A half-written last line (a crash mid-write) is ignored."""
    path = Path(path)
    done: dict[str, int] = {}
    if not path.is_file():
        return done
    fmt = output_format(path)
    with open(path, newline="", **ENCODING) as f:
        text = f.read()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # drop the partial record
    if fmt == "jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise MaskwatchError(f"{path}:{n}: not a JSON line; is this a maskwatch "
                                     "output file?") from None
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        try:
            records = list(reader)
        except csv.Error as exc:  # e.g. a quote never closed: later rows would hide in it
            raise MaskwatchError(f"{path}: a damaged CSV record ({exc}); is this a maskwatch "
                                 "output file?") from None
        if records and "path" not in records[0]:
            raise MaskwatchError(f"{path}: no 'path' column; is this a maskwatch output file?")
        for n, r in enumerate(records, 2):
            if None in r or None in r.values():  # more or fewer cells than the header
                cells = (sum(v is not None for k, v in r.items() if k is not None)
                         + len(r.get(None) or []))
                raise MaskwatchError(f"{path}: record {n} has {cells} cells for "
                                     f"{len(reader.fieldnames or [])} columns; is this a "
                                     "maskwatch output file?")
    for r in records:
        if not isinstance(r, dict) or not r.get("path"):
            raise MaskwatchError(f"{path}: a record without 'path'; is this a maskwatch "
                                 "output file?")
        frame = r.get("frame")
        try:
            frame = -1 if frame in (None, "") else int(frame)
        except (TypeError, ValueError):
            raise MaskwatchError(f"{path}: a record's frame is {frame!r}, not a frame number; "
                                 "is this a maskwatch output file?") from None
        key = same_file_key(r["path"] if fmt == "jsonl" else csv_uncell(r["path"]))
        done[key] = max(done.get(key, -1), frame)
    return done


class AppendWriter:
    """Appends records to a .jsonl or .csv file, flushing each input's record(s) in one
    write. Refuses an existing non-empty file unless ``resume`` (append) or ``overwrite``
    (start it again); on resume a half-written last line is cut off (only the bytes after
    the last newline) and the CSV header must match."""

    def __init__(self, path: str | Path, columns: list[str] | None = None,
                 resume: bool = False, overwrite: bool = False):
        self.path = Path(path)
        self.format = output_format(self.path)
        self.columns = columns
        exists = self.path.is_file() and self.path.stat().st_size > 0
        if exists and not resume:
            if not overwrite:
                raise MaskwatchError(f"{self.path}: already exists; pass --resume to continue "
                                     "it, --overwrite to replace it, or choose another file")
            self.path.unlink()
            exists = False
        if self.path.exists() and not self.path.is_file():
            raise MaskwatchError(f"{self.path}: not a file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if exists:
            self._cut_partial_line()
            if self.format == "csv" and columns:
                with open(self.path, newline="", **ENCODING) as f:
                    header = next(csv.reader(f), None)
                if header != columns:
                    have = set(header or [])
                    missing = [c for c in columns if c not in have]
                    extra = [c for c in header or [] if c not in set(columns)]
                    which = "; ".join(part for part in (
                        f"this run adds {', '.join(missing)}" if missing else "",
                        f"it has {', '.join(extra)}" if extra else "") if part)
                    raise MaskwatchError(
                        f"{self.path}: its CSV columns differ from this run's"
                        f"{' (' + which + ')' if which else ''}: written by another model, "
                        "command or maskwatch version? Resume into a new file")
        self._file = open(self.path, "a", newline="", **ENCODING)  # noqa: SIM115
        if self.format == "csv" and columns and self._file.tell() == 0:
            self._write_text(csv_text([columns]))

    def _cut_partial_line(self) -> None:
        with open(self.path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                f.truncate(keep)
                print(f"maskwatch: {self.path}: dropped a half-written last record",
                      file=sys.stderr)

    def _write_text(self, text: str) -> None:
        try:
            self._file.write(text)
            self._file.flush()
        except OSError as exc:  # a full disk: one line; --resume cuts the half record
            raise write_error(self.path, exc) from None

    def write(self, record: dict | None = None, rows: list[list] | None = None) -> None:
        """One input's results: a JSON record (.jsonl) or CSV rows (.csv)."""
        if self.format == "jsonl":
            self._write_text(json_line(record))
        elif rows:
            self._write_text(csv_text(rows))

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as exc:
            raise write_error(self.path, exc) from None


# ---------------------------------------------------------------------- process pool


def _watch_parent(parent: int) -> None:
    """Worker side: exit when the main process is gone (killed), instead of lingering."""
    def loop() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=loop, daemon=True).start()


def _worker_start(parent: int, init: Callable | None, initargs: tuple) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _watch_parent(parent)
    if init is not None:
        init(*initargs)


def ordered_map(fn: Callable[[Any], T], tasks: Iterable, workers: int = 1,
                initializer: Callable | None = None, initargs: tuple = (),
                max_in_flight: int | None = None, threads: bool = False,
                leftover: Callable[[T], None] | None = None) -> Iterator[T]:
    """``fn(task)`` for every task, results yielded in input order.

    ``workers <= 1``: in this process (``initializer`` runs here once). Otherwise that
    many spawned worker processes, each running ``initializer`` once (load its model
    there), or with ``threads`` that many threads of this process (``initializer`` runs
    here once; ``fn`` must be thread-safe, e.g. ONNX Runtime sessions, which release the
    GIL). At most ``max_in_flight`` (default 2 per worker) tasks are submitted ahead of
    the result being waited for, so memory stays bounded on any collection size.

    When the caller stops early (Ctrl+C, an error, ``close()``), tasks not started are
    dropped and those running are finished; ``leftover(result)`` then gets each finished
    result that was not yielded (so work already done, such as a written file, is not
    lost from the caller's records).
    """
    if workers <= 1 or threads:
        if initializer is not None:
            initializer(*initargs)
    if workers <= 1:
        for task in tasks:
            yield fn(task)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    limit = max_in_flight or 2 * workers
    if threads:
        pool = ThreadPoolExecutor(workers)
    else:
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                   initializer=_worker_start,
                                   initargs=(os.getpid(), initializer, initargs))
    pending: deque = deque()
    it = iter(tasks)
    try:
        for task in it:
            pending.append(pool.submit(fn, task))
            if len(pending) >= limit:
                break
        while pending:
            try:
                result = pending[0].result()  # left in pending until done: see leftover
            except BrokenProcessPool:
                raise MaskwatchError("a worker process died (out of memory, or its model "
                                     "could not be loaded)") from None
            pending.popleft()
            for task in it:
                pending.append(pool.submit(fn, task))
                break
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for future in pending if leftover is not None else ():
            if future.done() and not future.cancelled() and future.exception() is None:
                leftover(future.result())


def chunks(items: Sequence[T], size: int) -> list[list[T]]:
    size = max(1, size)
    return [list(items[i : i + size]) for i in range(0, len(items), size)]
