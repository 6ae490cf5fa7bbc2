"""Killing `fbmem ingest images --workers 2` (case 5 of docs/reliability.md): the decoding workers
die with it, its run is marked interrupted, and its temp files are cleaned on the next start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fbmem_data.ingest.images import ingest_images
from fbmem_data.workspace import EMPTY_PART, Workspace

from .conftest import png_bytes, wait_for

N = 500  # images; written two per part, so the ingest is still running when it is killed


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has exited; only its parent has to reap it


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_ingest_leaves_no_workers_no_running_run_no_temp_files(
    tmp_path: Path, sig: signal.Signals
) -> None:
    ws = Workspace.init(tmp_path / "ws")
    src = tmp_path / "pngs"
    src.mkdir()
    for i in range(N):
        (src / f"{i:04d}.png").write_bytes(png_bytes((i % 256, i // 256, 5), (16, 16)))
    cmd = [
        sys.executable,
        "-m",
        "fbmem_data",
        "ingest",
        "images",
        str(src),
        "--role",
        "train",
        "-w",
        str(ws.root),
        "--workers",
        "2",
        "--batch-size",
        "2",
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        assert wait_for(lambda: len(_children(proc.pid)) >= 2 or proc.poll() is not None)
        workers = _children(proc.pid)
        assert wait_for(lambda: len(ws.parts("images")) >= 3 or proc.poll() is not None)
        assert proc.poll() is None, "ingest finished before it could be killed"
        proc.send_signal(sig)  # the parent only: its workers must follow by themselves
        proc.wait(timeout=30)
        assert wait_for(lambda: not any(_alive(w) for w in workers), timeout=15), "orphaned decoding workers"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
    assert len(workers) >= 2

    runs = ws.sql("SELECT status FROM runs").column("status").to_pylist()
    assert runs == (["running"] if sig == signal.SIGKILL else ["interrupted"])
    # What a write killed mid-way leaves behind (0-byte scratch files in the store and a table).
    (ws.images_dir / "ab").mkdir(exist_ok=True)
    (ws.images_dir / "ab" / ".tmp-0123-dead.png").write_bytes(b"")
    (ws.table_dir("images") / ".tmp-0456.parquet").write_bytes(b"")
    written = len([p for p in ws.parts("images") if p.name != EMPTY_PART])
    assert written >= 2

    report = ingest_images(ws, src, "train", workers=1, progress=False)
    assert report.already_stored + report.by_status["ok"] == N
    assert sorted(ws.sql("SELECT status FROM runs").column("status").to_pylist()) == ["interrupted", "ok"]
    assert not list(ws.root.glob("images/*/.tmp-*")) and not list(ws.root.glob("tables/*/.tmp-*"))
    assert ws.count("images") == N


def test_sigterm_inside_a_duckdb_query_records_the_run_interrupted(tmp_path: Path) -> None:
    """DuckDB catches a signal that lands inside a query and raises its own 'Query interrupted'
    error; the run must still read `interrupted` (not `failed`) and surface as an interrupt."""
    import threading

    ws = Workspace.init(tmp_path / "ws")
    con = ws.connection()
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    with pytest.raises(KeyboardInterrupt), ws.run("test", {}):
        timer.start()
        try:
            con.sql("SELECT count(*) FROM range(100000000000) a").fetchall()
        finally:
            timer.cancel()
    assert ws.sql("SELECT status FROM runs").column("status").to_pylist() == ["interrupted"]
