"""Run records: what command ran, with which configuration and versions, and how it ended.

A live run holds an exclusive lock on `.locks/run-<id>.lock`; the kernel drops it when the process
dies, however it dies. The next run to start takes every lock it can get: those runs' processes
are gone, so their rows still saying `running` are rewritten as `interrupted`, and temp files
(`.tmp-*`) they left are removed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import inspect
import os
import platform
import time
import uuid
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ParamSpec, TypeVar

from fbmem_data import __version__
from fbmem_data.ids import canonical_json, new_run_id, params_hash

if TYPE_CHECKING:
    from fbmem_data.workspace import Workspace

P = ParamSpec("P")
R = TypeVar("R")

_TRACKED_PACKAGES = ("duckdb", "polars", "pyarrow", "torch", "diffusers", "transformers", "numpy", "pillow")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "fbmem": __version__}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


class RunRecorder:
    """One row of the `runs` table, kept in its own part so the end state can replace the start."""

    def __init__(self, ws: Workspace, command: str, config: dict[str, Any]) -> None:
        self.ws = ws
        self.command = command
        self.config = config
        self.run_id = new_run_id()
        self.models: dict[str, str] = {}
        self.started_at = dt.datetime.now(dt.timezone.utc)

    def _row(self, status: str, error: str | None, ended: dt.datetime | None) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "command": self.command,
            "config": canonical_json(self.config),
            "config_hash": params_hash(self.config),
            "fbmem_version": __version__,
            "package_versions": canonical_json(package_versions()),
            "model_versions": canonical_json(self.models),
            "started_at": self.started_at,
            "ended_at": ended,
            "status": status,
            "error": error,
        }

    def start(self) -> None:
        self._lock = _take_run_lock(self.ws.root, self.run_id)
        recover_dead_runs(self.ws, own_run_id=self.run_id)
        self.ws.write(
            "runs", [self._row("running", None, None)], part_name=f"run-{self.run_id}", replace_part=True
        )

    def finish(self, status: str, error: str | None = None) -> None:
        row = self._row(status, error, dt.datetime.now(dt.timezone.utc))
        self.ws.write("runs", [row], part_name=f"run-{self.run_id}", replace_part=True)
        lock = getattr(self, "_lock", None)
        if lock is not None:
            with contextlib.suppress(OSError):
                (self.ws.root / LOCKS_DIR / f"run-{self.run_id}.lock").unlink()
            lock.close()  # closing the file releases the lock
            self._lock = None


def recorded(
    command: str, config: Callable[[Mapping[str, Any]], Mapping[str, Any]]
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Record each call of a library function as one run in the `runs` table.

    The decorated function takes the workspace as its first argument and has a `run_id` parameter
    that it writes into its rows. Called without `run_id` (a notebook, the CLI), the call is its own
    run: a `running` row first, then `ok`, `failed` (with the error) or `interrupted`, exactly as
    `Workspace.run` records the other stages. Called with `run_id`, the caller already holds a run
    around several calls, so nothing more is recorded.

    Args:
        command: the run's `command` (e.g. "nemo detect").
        config: builds the run's `config` from the call's arguments by name (defaults applied).

    Returns:
        The decorator.
    """

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(fn)
        if "run_id" not in signature.parameters:
            raise TypeError(f"{fn.__qualname__} needs a run_id parameter to be @recorded")

        @functools.wraps(fn)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = signature.bind(*args, **kwargs)
            if bound.arguments.get("run_id") is not None:
                return fn(*args, **kwargs)
            bound.apply_defaults()
            ws = next(iter(bound.arguments.values()))
            with ws.run(command, dict(config(bound.arguments))) as run:
                bound.arguments["run_id"] = run.run_id
                return fn(*bound.args, **bound.kwargs)

        return call

    return decorate


LOCKS_DIR = ".locks"
# Temp files younger than this may belong to a live writer of another process; older ones never do.
STALE_TEMP_S = 3600.0


def _flock(fh: IO[bytes], blocking: bool) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows: no flock; dead runs are then not detected
        return not blocking
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError:
        return False
    return True


def _take_run_lock(root: Path, run_id: str) -> IO[bytes] | None:
    """Lock `.locks/run-<id>.lock` for the life of this process (or until finish). The file is
    locked under a temp name and then renamed, so no other process ever sees it unlocked."""
    locks = root / LOCKS_DIR
    try:
        locks.mkdir(exist_ok=True)
        tmp = locks / f".tmp-{uuid.uuid4().hex}.lock"
        fh = open(tmp, "wb")  # noqa: SIM115 - held open (locked) until the run ends
    except OSError:  # a read-only workspace: nothing will be written anyway
        return None
    _flock(fh, blocking=True)
    os.replace(tmp, locks / f"run-{run_id}.lock")
    return fh


def recover_dead_runs(ws: Workspace, own_run_id: str | None = None) -> list[str]:
    """Mark the runs whose process died (their lock is free) `interrupted`; remove temp files of
    dead writers. Returns the run ids marked."""
    import pyarrow.parquet as pq

    locks = ws.root / LOCKS_DIR
    marked: list[str] = []
    others_alive = False
    for lock_path in sorted(locks.glob("run-*.lock")) if locks.is_dir() else []:
        run_id = lock_path.name[len("run-") : -len(".lock")]
        if run_id == own_run_id:
            continue
        try:
            fh = open(lock_path, "rb")  # noqa: SIM115
        except OSError:
            continue
        with fh:
            if not _flock(fh, blocking=False):
                others_alive = True
                continue
            part = ws.table_dir("runs") / f"part-run-{run_id}.parquet"
            try:
                rows = pq.read_table(part).to_pylist() if part.exists() else []
            except Exception:  # a damaged part: `fbmem check` reports it; leave it alone here
                rows = []
            if rows and rows[0]["status"] == "running":
                row = dict(rows[0])
                row.update(
                    status="interrupted",
                    ended_at=dt.datetime.now(dt.timezone.utc),
                    error="the process ended without finishing (killed, or the machine stopped)",
                )
                ws.write("runs", [row], part_name=f"run-{run_id}", replace_part=True)
                marked.append(run_id)
            with contextlib.suppress(OSError):
                lock_path.unlink()
    _remove_dead_temp_files(ws.root, min_age_s=STALE_TEMP_S if others_alive else 0.0)
    return marked


def _remove_dead_temp_files(root: Path, min_age_s: float) -> None:
    """`.tmp-*` files under tables/ and images/ (each atomic write's scratch file). With no other
    live run, every one is dead; otherwise only the old ones are certainly dead."""
    now = time.time()
    for pattern in ("tables/*/.tmp-*", "images/*/.tmp-*", ".tmp-*"):
        for path in root.glob(pattern):
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime >= min_age_s:
                    path.unlink()


def list_runs(ws: Workspace, command: str | None = None, status: str | None = None, last: int | None = None):
    """What ran, newest first: command, status, when, how long, and the settings that differ from a default."""
    where, params = ["TRUE"], {}
    if command:
        where.append("command = $command")
        params["command"] = command
    if status:
        where.append("status = $status")
        params["status"] = status
    limit = f"LIMIT {int(last)}" if last else ""
    return ws.sql(
        "SELECT run_id, command, status, started_at, "
        "round(epoch(ended_at) - epoch(started_at), 1) AS seconds, config "
        f"FROM runs WHERE {' AND '.join(where)} ORDER BY started_at DESC, run_id DESC {limit}",
        params,
    )


def show_run(ws: Workspace, run_id: str):
    """One run as (key, value) rows: its identity, status, every config setting and the versions it ran with.

    A unique prefix of the run id is enough."""
    import json

    import pyarrow as pa

    from fbmem_data.errors import InputError

    rows = ws.sql(
        "SELECT * FROM runs WHERE starts_with(run_id, $id) ORDER BY run_id", {"id": run_id}
    ).to_pylist()
    if len(rows) != 1:
        recent = list_runs(ws, last=5).column("run_id").to_pylist()
        what = "no run" if not rows else f"{len(rows)} runs"
        raise InputError(
            f"{what} with id {run_id!r}",
            hint=f"fbmem runs list shows them; most recent: {', '.join(recent) or 'none'}",
        )
    row = rows[0]
    out: list[tuple[str, str]] = []
    for key in (
        "run_id",
        "command",
        "status",
        "started_at",
        "ended_at",
        "error",
        "fbmem_version",
        "config_hash",
    ):
        if row.get(key) is not None:
            out.append((key, str(row[key])))
    for column in ("config", "model_versions", "package_versions"):
        value = row.get(column)
        data = json.loads(value) if isinstance(value, str) else (value or {})
        for name, setting in sorted(data.items()):
            text = setting if isinstance(setting, str) else json.dumps(setting, sort_keys=True)
            out.append((f"{column}.{name}", text))
    return pa.table({"key": [k for k, _ in out], "value": [v for _, v in out]})
