"""Writing whole files safely: a hidden temporary beside the target, renamed when complete.

A failed write (a full disk) removes the temporary and raises one MaskwatchError line, so no
half-written file is ever left under the real name; temporaries left by a killed process
(``kill -9`` mid-save) are removed by a later process's write to the same name. A process
lists each folder it writes into once (not once per file, which made writing n files into
one folder cost n^2).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from maskwatch.errors import MaskwatchError


def temp_path(path: Path) -> Path:
    """``.<name>.<pid>.tmp`` beside ``path`` (hidden, and named after its writer)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


#: Per folder, the temporaries found there when this process first wrote into it, by the
#: name they stand for (``.<name>.<pid>.tmp``).
_TEMPS: dict[Path, dict[str, list[Path]]] = {}


def _temps_of(path: Path) -> list[Path]:
    """The temporaries of ``path`` that its folder held when this process first looked
    (the folder index's own list when there are any)."""
    folder = path.parent
    index = _TEMPS.get(folder)
    if index is None:
        index = {}
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    name = entry.name
                    if name.startswith(".") and name.endswith(".tmp"):
                        base, _, pid = name[1:-len(".tmp")].rpartition(".")
                        if base and pid.isdigit():
                            index.setdefault(base, []).append(folder / name)
        except OSError:  # the folder is new or unreadable: nothing to clean
            pass
        _TEMPS[folder] = index
    return index.get(path.name, [])


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete the temporaries of ``path`` whose writer process is gone; returns them."""
    path = Path(path)
    removed = []
    temps = _temps_of(path)
    for tmp in list(temps):
        pid = int(tmp.name[len(path.name) + 2:-len(".tmp")])
        if pid != os.getpid() and not _pid_alive(pid):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
            temps.remove(tmp)  # the folder's index, so it is not looked at again
    return removed


def write_atomic(path: str | Path, write: Callable[[Path], None], what: str = "file",
                 error: type[MaskwatchError] = MaskwatchError) -> Path:
    """Call ``write(tmp)`` to fill a temporary, then rename it to ``path``.

    On any failure the temporary is deleted; an OSError (or a library's I/O error) becomes
    ``error("<path>: cannot write the <what> (<reason>)")``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:  # a full disk, Ctrl-C: no partial file is left
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) or type(exc).__name__ == "SafetensorError":
            lines = str(exc).strip().splitlines()
            reason = getattr(exc, "strerror", None) or (lines[0][:160] if lines else "")
            raise error(f"{path}: cannot write the {what} ({reason or type(exc).__name__})"
                        ) from None
        raise
    return path


def remove_created(files: list[Path], root: Path) -> None:
    """Delete ``files`` (those a run created before it stopped early) and the folders under
    ``root`` that this leaves empty, so no partial set of outputs passes for a whole one."""
    for f in files:
        f.unlink(missing_ok=True)
    for folder in sorted({p for f in files for p in f.parents if root in p.parents},
                         key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:  # not empty (other files), or gone
            pass


def make_folder(folder: str | Path, what: str) -> None:
    """``mkdir -p folder``; when it cannot be made, one MaskwatchError line: ``what`` and
    why (a file in the way, or the system's reason)."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = ("a file is in the way" if isinstance(exc, (FileExistsError, NotADirectoryError))
               else exc.strerror or str(exc))
        raise MaskwatchError(f"{what} ({why})") from None
