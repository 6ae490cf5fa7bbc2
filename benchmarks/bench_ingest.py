"""Images ingested per second (`fbmem ingest images`) for N small images on this machine.

Usage: nice -n 10 .venv/bin/python benchmarks/bench_ingest.py [--n 10000] [--size 64] [--workers 1 2]

Measures, in one process and on the same files:
- baseline: read + sha256 of every file (the floor any ingest pays),
- ingest with each --workers value, each into a fresh workspace (decode, store, Parquet parts),
and prints images/s and the ratio to the baseline; writes benchmarks/results/ingest.json.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fbmem_data.ingest.images import ingest_images
from fbmem_data.workspace import Workspace

RESULTS = Path(__file__).resolve().parent / "results" / "ingest.json"


def make_images(folder: Path, n: int, size: int) -> int:
    """n distinct size x size images, half PNG and half JPEG; returns total bytes."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    total = 0
    for i in range(n):
        arr = base.copy()
        for block in range(4):  # i in base 22, one flat 8x8 block per digit: distinct even after JPEG
            arr[:8, 8 * block : 8 * block + 8] = (i // 22**block) % 22 * 11
        buf = io.BytesIO()
        fmt, ext = ("PNG", "png") if i % 2 else ("JPEG", "jpg")
        Image.fromarray(arr).save(buf, fmt)
        (folder / f"{i:06d}.{ext}").write_bytes(buf.getvalue())
        total += buf.tell()
    return total


def hash_only(folder: Path) -> float:
    start = time.perf_counter()
    for path in sorted(folder.iterdir()):
        hashlib.sha256(path.read_bytes()).hexdigest()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, min(4, os.cpu_count() or 1)])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fbmem-bench-ingest-") as tmp:
        src = Path(tmp) / "images"
        total_bytes = make_images(src, args.n, args.size)
        hash_only(src)  # warm the page cache so every measurement reads from memory
        baseline_s = hash_only(src)
        results = {
            "n_images": args.n,
            "image_size": args.size,
            "total_bytes": total_bytes,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "baseline_read_sha256_images_per_s": round(args.n / baseline_s, 1),
            "ingest": [],
        }
        for workers in args.workers:
            ws = Workspace.init(Path(tmp) / f"ws-{workers}")
            start = time.perf_counter()
            report = ingest_images(ws, src, "train", workers=workers, progress=False)
            elapsed = time.perf_counter() - start
            assert report.written.get("images") == args.n, report.summary()
            rate = args.n / elapsed
            results["ingest"].append(
                {"workers": workers, "seconds": round(elapsed, 2), "images_per_s": round(rate, 1),
                 "ratio_to_baseline": round(rate / (args.n / baseline_s), 4)}
            )
            print(f"workers={workers}: {args.n} images in {elapsed:.1f}s = {rate:.0f} images/s")
            ws.close()
    print(f"baseline (read + sha256 only): {results['baseline_read_sha256_images_per_s']:.0f} images/s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
