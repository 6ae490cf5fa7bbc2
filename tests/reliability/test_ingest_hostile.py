"""`fbmem ingest images` on crafted folders: symlinks and manifest paths out of the folder, files
over the size cap, bytes that are no image (cases 3 and 4 of docs/reliability.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fbmem_data.ingest.images import ingest_images
from fbmem_data.workspace import Workspace

from .conftest import png_bytes


def _stored_files(ws: Workspace) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes() for p in ws.images_dir.rglob("*") if p.is_file() and not p.name.startswith(".")
    }


def _rows(ws: Workspace) -> dict[str, dict]:
    return {Path(r["source_uri"]).name: r for r in ws.sql("SELECT * FROM images").to_pylist()}


def test_symlinks_and_manifest_paths_out_of_the_folder_are_not_read(
    workspace: Workspace, tmp_path: Path
) -> None:
    """Case 3: a symlink to a secret and `../secret` in a manifest were read, stored and linked."""
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0:secret\n")
    secret_png = tmp_path / "private.png"  # an image, even: still outside
    secret_png.write_bytes(png_bytes((9, 9, 9)))
    folder = tmp_path / "train"
    folder.mkdir()
    (folder / "good.png").write_bytes(png_bytes())
    (folder / "passwd.png").symlink_to(secret)
    (folder / "linked.png").symlink_to(secret_png)
    (folder / "sub").mkdir()
    (folder / "sub" / "inner.png").symlink_to(folder / "good.png")  # inside: fine (same bytes)
    manifest = folder / "manifest.csv"
    manifest.write_text(
        "file,prompt\n"
        "good.png,a red square\n"
        f"../{secret_png.name},a stolen image\n"
        f"{secret},an absolute path\n"
    )
    report = ingest_images(workspace, folder, "train", manifest=manifest, workers=1, progress=False)
    rows = _rows(workspace)
    for name in ("passwd.png", "linked.png", "private.png", "secret.txt"):
        assert rows[name]["status"] == "outside", rows[name]
        assert rows[name]["store_path"] is None and "outside the ingested folder" in rows[name]["error"]
    stored = _stored_files(workspace)
    assert all(b"secret" not in data for data in stored.values())
    assert png_bytes((9, 9, 9)) not in stored.values() and len(stored) == 1
    links = (
        workspace.sql("SELECT p.text FROM train_links JOIN prompts p USING (prompt_id)")
        .column("text")
        .to_pylist()
    )
    assert links == ["a red square"]
    assert report.by_status["outside"] == 4

    # --allow-outside: the user vouches for the links.
    other = Workspace.init(tmp_path / "ws2")
    ingest_images(other, folder, "train", manifest=manifest, workers=1, progress=False, allow_outside=True)
    assert _rows(other)["private.png"]["status"] == "ok"  # linked.png resolves to it: one row


def test_size_cap_is_checked_before_reading_and_non_images_are_not_stored(tmp_path: Path) -> None:
    """Case 4: a 300 MB file was read whole and copied into the store; a text file was stored."""
    ws = Workspace.init(tmp_path / "ws")
    folder = tmp_path / "in"
    folder.mkdir()
    big = folder / "huge.png"
    with open(big, "wb") as fh:  # sparse: 300 MB on paper, nothing on disk
        fh.truncate(300 * 1024 * 1024)
    (folder / "notes.md").write_bytes(b"# not an image\n" * 10)
    (folder / "ok.png").write_bytes(png_bytes())
    cmd = [
        sys.executable,
        "-m",
        "fbmem_data",
        "ingest",
        "images",
        str(folder),
        "--role",
        "train",
        "-w",
        str(ws.root),
        "--workers",
        "1",
        "--no-progress",
        "--max-bytes",
        "1MiB",
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert out.returncode == 0, out.stderr
    rows = _rows(ws)
    assert rows["huge.png"]["status"] == "too_large" and rows["huge.png"]["n_bytes"] == 300 * 1024 * 1024
    assert "not read" in rows["huge.png"]["error"] and rows["huge.png"]["store_path"] is None
    assert rows["notes.md"]["status"] == "unsupported" and rows["notes.md"]["store_path"] is None
    assert rows["ok.png"]["status"] == "ok"
    assert list(_stored_files(ws).values()) == [png_bytes()]
