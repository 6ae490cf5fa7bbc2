"""SIGKILL an image ingest mid-way, run it again, and check that exactly the right rows exist."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from fbmem_data.workspace import EMPTY_PART, Workspace

N_IMAGES = 3000


def make_pngs(folder: Path, n: int) -> None:
    folder.mkdir()
    for i in range(n):
        # Distinct 8x8 images: the index is spread over the pixels.
        img = Image.new("RGB", (8, 8), (i % 256, (i // 256) % 256, 7))
        buf = io.BytesIO()
        img.save(buf, "PNG", compress_level=1)
        (folder / f"{i:05d}.png").write_bytes(buf.getvalue())


def image_parts(ws: Workspace) -> list[Path]:
    return [p for p in ws.parts("images") if p.name != EMPTY_PART]


def ingest_cmd(src: Path, ws: Workspace) -> list[str]:
    return [sys.executable, "-m", "fbmem_data", "ingest", "images", str(src), "--role", "train",
            "--workers", "2", "--batch-size", "100", "--no-progress", "-w", str(ws.root)]


def test_kill_and_resume_gives_exact_rows(workspace: Workspace, tmp_path: Path) -> None:
    src = tmp_path / "pngs"
    make_pngs(src, N_IMAGES)
    # A stray temporary part, as a crash in the middle of a write leaves: it must never be read.
    (workspace.table_dir("images") / ".tmp-deadbeef.parquet").write_bytes(b"half a parquet file")

    proc = subprocess.Popen(ingest_cmd(src, workspace), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while len(image_parts(workspace)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"ingest ended before it could be killed: {proc.stderr.read()!r}"  # type: ignore[union-attr]
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its worker processes, as `kill -9` on a job does
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_rows = workspace.count("images")
    assert 300 <= killed_rows < N_IMAGES

    done = subprocess.run(ingest_cmd(src, workspace), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"already stored {killed_rows}" in done.stdout
    assert f"written: images {N_IMAGES - killed_rows}" in done.stdout

    stats = workspace.sql(
        "SELECT count(*) AS n, count(DISTINCT (image_id, role)) AS keys, count(DISTINCT source_uri) AS uris, "
        "count(*) FILTER (WHERE status = 'ok') AS ok FROM images"
    ).to_pylist()[0]
    assert stats == {"n": N_IMAGES, "keys": N_IMAGES, "uris": N_IMAGES, "ok": N_IMAGES}
    for part in workspace.parts("images"):
        assert pq.read_table(part).schema.names[0] == "image_id"  # every part is whole and readable
    stored = [p for p in workspace.images_dir.rglob("*") if p.is_file()]
    assert len(stored) == N_IMAGES  # the killed run's temp files were removed when the re-run started
    assert not list(workspace.table_dir("images").glob(".tmp-*"))
    # The killed run's record is marked interrupted when the re-run starts; the re-run's is 'ok'.
    runs = workspace.sql("SELECT status, count(*) AS n FROM runs GROUP BY 1 ORDER BY 1").to_pylist()
    assert runs == [{"status": "interrupted", "n": 1}, {"status": "ok", "n": 1}]
