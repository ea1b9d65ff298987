"""Batch inference on a Ray cluster (``classify``/``detect`` with ``--ray``).

``ray_map`` is the cluster twin of the local worker pool: the same per-file functions run
in a pool of Ray Data actors (``map_batches`` with an actor pool), each actor loading its
model once, and the results come back to this process in input order, where they are
written exactly like a local run's.

- Tasks are small JSON values (a chunk of paths, or a path and an output name). The list
  is built here and handed to Ray as an in-memory table; every actor reads its own files,
  so the inputs must be paths that every node can read (a shared filesystem), or
  object-store URIs (``s3://``, ``gs://``), which ``imaging.load_rgb`` reads through
  pyarrow.
- A local model file travels to the workers through Ray's object store (``ShippedFile``):
  only the inputs need shared storage. The bundled model is in every node's install.
- Ray restarts an actor that dies and runs its batch again. Each result carries its task's
  index and this process keeps one bit per task, so a batch that Ray ran twice is written
  once, and a run that ends with a task missing fails loudly instead of leaving a hole.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskwatch.errors import MaskwatchError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
LOCAL = "local"  # --ray without an address: start Ray here (Ray's own word for it)


def ray_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


# ---------------------------------------------------------------------- connecting


def connect(address: str = LOCAL) -> dict:
    """Join the Ray cluster at ``address`` (``HOST:PORT`` or ``auto``), or start Ray in this
    process for ``local`` (on 127.0.0.1 only, without dashboard). Returns the cluster's
    resources."""
    if not ray_available():
        raise MaskwatchError("--ray needs Ray: pip install 'maskwatch[ray]'")
    local = address == LOCAL
    host = "127.0.0.1" if local else address.rsplit(":", 1)[0]
    if host in LOOPBACK_HOSTS:
        # Otherwise Ray swaps 127.0.0.1 for this machine's network address.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if local:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    elif address != "auto":
        _check_reachable(address)
    import ray

    if not ray.is_initialized():
        runtime_env = {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}
        try:
            if local:
                ray.init(include_dashboard=False, _node_ip_address="127.0.0.1",
                         logging_level=logging.WARNING, log_to_driver=False,
                         runtime_env=runtime_env)
            else:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                         runtime_env=runtime_env)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise MaskwatchError(f"cannot join the Ray cluster at {address} ({first[:200]})"
                                 ) from None
    return ray.cluster_resources()


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in one line when nothing answers at HOST:PORT (Ray itself retries for minutes)."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise MaskwatchError(f"--ray {address}: expected HOST:PORT (e.g. 10.0.0.5:6379) or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise MaskwatchError(f"cannot join the Ray cluster at {address}: nothing answers there "
                             f"({exc.strerror or exc}); is `ray start --head` running?") from None


def default_actors(resources: dict, cpus_per_actor: float) -> int:
    """Actors for a cluster: one per ``cpus_per_actor`` of its CPUs. All of them: the
    pipeline has no read stage (the task list is an in-memory table and each actor reads
    its own files), so no Ray task waits for a CPU that the actors hold."""
    return max(1, int(float(resources.get("CPU", 1)) // cpus_per_actor))


# ------------------------------------------------------------------- model shipping


@dataclass
class ShippedFile:
    """A local model file (with its ``.json`` beside it, for ONNX) sent to every actor
    through Ray's object store, and written to a temporary folder there."""

    name: str
    parts: dict[str, bytes]

    @classmethod
    def of(cls, path: str | Path) -> ShippedFile:
        path = Path(path)
        parts = {path.suffix: path.read_bytes()}
        meta = path.with_suffix(".json")
        if path.suffix.lower() == ".onnx" and meta.is_file():
            parts[".json"] = meta.read_bytes()
        return cls(path.stem, parts)

    def materialise(self) -> str:
        folder = Path(tempfile.mkdtemp(prefix="maskwatch-model-"))
        main = ""
        for suffix, data in self.parts.items():
            (folder / f"{self.name}{suffix}").write_bytes(data)
            if suffix != ".json" or len(self.parts) == 1:
                main = str(folder / f"{self.name}{suffix}")
        return main


def ship(model: str | Path | None) -> ShippedFile | str | Path | None:
    """``model`` as a ShippedFile when it is a local file, else unchanged (None: the
    bundled model; a missing path fails on the actors as it would here)."""
    if model is not None and Path(model).is_file():
        return ShippedFile.of(model)
    return model


def _unship(value: Any, folders: list[Path]) -> Any:
    """``value`` with every ShippedFile written out (its folder added to ``folders``)."""
    if isinstance(value, ShippedFile):
        main = value.materialise()
        folders.append(Path(main).parent)
        return main
    if isinstance(value, dict):
        return {k: _unship(v, folders) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_unship(v, folders) for v in value)
    return value


# ---------------------------------------------------------------------------- mapping


class _Worker:
    """One Ray actor: runs ``initializer`` once (loads the model), then maps batches."""

    def __init__(self, fn: Callable, initializer: Callable | None, initargs: tuple):
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if initializer is not None:
            folders: list[Path] = []
            try:
                initializer(*_unship(initargs, folders))
            finally:  # the model is loaded (or failed to): its files are not needed again
                for folder in folders:
                    shutil.rmtree(folder, ignore_errors=True)
        self.fn = fn

    def __call__(self, batch: dict) -> dict:
        import json

        import numpy as np

        out = np.empty(len(batch["task"]), dtype=object)
        for k, task in enumerate(batch["task"]):  # one object each (numpy splits tuples)
            out[k] = self.fn(json.loads(task))
        return {"index": np.asarray(batch["index"]), "result": out}


def ray_map(fn: Callable, tasks: Iterable, workers: int | None = None,
            initializer: Callable | None = None, initargs: tuple = (), *,
            address: str = LOCAL, cpus_per_actor: float = 1, batch_size: int = 1) -> Iterator:
    """``fn(task)`` for every task (a JSON value) on a Ray cluster, results yielded in input
    order, each exactly once: :func:`maskwatch.batching.ordered_map` with Ray actors for
    worker processes.

    ``address``: see ``connect``. ``workers`` actors (default: ``default_actors``) each
    reserve ``cpus_per_actor`` CPUs, run ``initializer(*initargs)`` once (ShippedFile
    values become local paths) and get ``batch_size`` tasks per call.
    """
    import json

    import pyarrow as pa

    texts = [json.dumps(t) for t in tasks]
    n = len(texts)
    if n == 0:
        return
    resources = connect(address)
    import ray.data

    actors = workers or default_actors(resources, cpus_per_actor)
    actors = max(1, min(actors, math.ceil(n / batch_size)))
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # results in input order, like --workers
    ctx.enable_progress_bars = False  # the caller draws its own bar on stderr
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    # blocks of one call each, up to 4096 blocks: results stream back steadily, and a
    # lost actor costs little work
    size = max(batch_size, math.ceil(n / 4096))
    ds = ray.data.from_arrow([
        pa.table({"index": pa.array(range(s, min(s + size, n)), pa.int64()),
                  "task": pa.array(texts[s : s + size])})
        for s in range(0, n, size)
    ])
    ds = ds.map_batches(
        _Worker, fn_constructor_args=(fn, initializer, tuple(initargs)),
        batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor,
    )
    seen = bytearray(n)
    count = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for i, result in zip(batch["index"], batch["result"]):
            if seen[i]:  # the same batch run twice (an actor died after finishing it)
                continue
            seen[i] = 1
            count += 1
            yield result
    if count != n:
        raise MaskwatchError(f"Ray returned {count} of {n} results; run again with --resume "
                             "to finish the rest")
