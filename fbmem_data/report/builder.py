"""`build_report`: workspace in, one HTML file (plus a folder of PNG plots beside it) out."""

from __future__ import annotations

import base64
import datetime as dt
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from fbmem_data.errors import InputError

if TYPE_CHECKING:
    from fbmem_data.workspace import Workspace

ImagesMode = Literal["auto", "embed", "folder"]
#: Thumbnail side in px: SD images are 512 px; 256 keeps the evidence legible in a card.
THUMB_SIZE = 256
#: With images="auto", thumbnails are embedded in the HTML up to this many generations, and written to
#: the folder beside it above (a 10,000-generation page with embedded thumbnails weighs tens of MB).
EMBED_MAX_GENERATIONS = 800
PLOT_DPI = 200  # the PNG files for papers
EMBED_DPI = 80  # the copies inside the page


@dataclass
class ReportSummary:
    """What build_report wrote (returned by build_report_summary; build_report returns only the path)."""

    path: Path
    files_dir: Path
    plots: dict[str, Path]
    generations: int
    images: int
    images_mode: str
    html_bytes: int
    thumbnail_errors: dict[str, str] = field(default_factory=dict)


def files_dir_for(out_path: Path) -> Path:
    """The folder beside the report that holds its PNG plots (and thumbnails in folder mode)."""
    return out_path.with_name(f"{out_path.stem}_files")


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def build_report_summary(
    ws: Workspace,
    out_path: str | os.PathLike[str],
    tau: float = 0.8,
    *,
    scoring_id: str | None = None,
    k: int = 5,
    images: ImagesMode = "auto",
    thumb_size: int = THUMB_SIZE,
    limit: int | None = None,
    title: str | None = None,
    workers: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> ReportSummary:
    """Build the report and say what was written. See build_report for the arguments."""
    from fbmem_data import __version__
    from fbmem_data.report import plots as plotting
    from fbmem_data.report.gather import gather
    from fbmem_data.report.render import (
        PlotImage,
        data_blob,
        mitigation_table_html,
        needed_images,
        plots_html,
        provenance_html,
        rates_table_html,
        render_html,
    )
    from fbmem_data.report.thumbnails import make_thumbnails

    if images not in ("auto", "embed", "folder"):
        raise InputError(f"images must be auto, embed or folder, not {images!r}")
    if not 0.0 <= tau <= 1.0:
        raise InputError(f"tau must lie in [0, 1], got {tau}")
    say = progress or (lambda _msg: None)
    out = Path(out_path)
    if out.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"the report is an HTML file: {out} should end in .html")
    out.parent.mkdir(parents=True, exist_ok=True)
    files_dir = files_dir_for(out)
    (files_dir / "plots").mkdir(parents=True, exist_ok=True)

    say("reading the workspace views")
    data = gather(ws, tau=tau, scoring_id=scoring_id, k=k, limit=limit)
    mode = images if images != "auto" else ("embed" if data.n_generations <= EMBED_MAX_GENERATIONS else "folder")

    say("plotting")
    figures = [
        ("rates", "FB-Mem labels per model, prompt set and mitigation", plotting.rates_figure(data.rates.to_pylist())),
        ("one_to_many", "One prompt to many training images", plotting.one_to_many_figure(data.histogram.to_pylist())),
        ("mitigation", "Mitigation comparison", plotting.mitigation_figure(data.mitigation, data.utility_metric)),
    ]
    plot_images: list[PlotImage] = []
    for name, plot_title, fig in figures:
        if fig is None:
            continue
        path = plotting.write_figure(fig, files_dir / "plots" / f"{name}.png", dpi=PLOT_DPI)
        plot_images.append(PlotImage(name, plot_title, path, plotting.figure_png(fig, EMBED_DPI)))

    image_ids = needed_images(data)
    say(f"thumbnails of {len(image_ids)} images")
    files = {i: ws.root / p for i, p in data.image_files.items()}
    thumbs, thumb_errors = make_thumbnails(image_ids, files, data.masks, size=thumb_size, workers=workers)
    if mode == "embed":
        image_src = {i: _data_uri(b, "image/jpeg") for i, b in thumbs.items()}
    else:
        thumb_dir = files_dir / "thumbs"
        thumb_dir.mkdir(exist_ok=True)
        image_src = {}
        for image_id, jpeg in thumbs.items():
            name = f"{image_id[:24]}.jpg"
            target = thumb_dir / name
            if not target.exists() or target.read_bytes() != jpeg:
                _write_atomic(target, jpeg)
            image_src[image_id] = f"{quote(files_dir.name)}/thumbs/{name}"

    say("writing the page")
    created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    extra = {
        "n_generations": data.n_generations,
        "limit": limit,
        "workspace": str(ws.root),
        "created_at": created,
        "fbmem_version": __version__,
        "images_mode": mode,
        "files_dir": files_dir.name,
    }
    prov = {k: (str(v) if isinstance(v, dt.datetime) else v) for k, v in data.provenance.items()}
    meta = {**prov, **extra, "tau": float(tau), "thumb_size": thumb_size}
    # Full-size originals, linked from each card (file:// URIs: the page is opened where the workspace is).
    blob = data_blob(data, image_src, meta, {i: f.resolve().as_uri() for i, f in files.items()})
    page = render_html(
        title or f"fbmem report — {ws.root.name}",
        provenance_html(data, extra),
        plots_html(plot_images, _data_uri),
        rates_table_html(data) + mitigation_table_html(data),
        blob,
    )
    encoded = page.encode("utf-8")
    _write_atomic(out, encoded)
    return ReportSummary(
        path=out,
        files_dir=files_dir,
        plots={p.name: p.path for p in plot_images},
        generations=data.n_generations,
        images=len(thumbs),
        images_mode=mode,
        html_bytes=len(encoded),
        thumbnail_errors=thumb_errors,
    )


def build_report(
    ws: Workspace,
    out_path: str | os.PathLike[str],
    tau: float = 0.8,
    **options: Any,
) -> Path:
    """Write the FB-Mem report of a workspace: one HTML file, PNG plots in `<name>_files/plots/` beside it.

    Args:
        ws: the workspace (its region_scores, masks, generations, prompts and images are read through
            the SQL views).
        out_path: the HTML file to write (its folder is created).
        tau: the label threshold.
        **options: scoring_id (default the latest scoring), k (top-k matches shown, default 5),
            images ("auto": embedded up to 800 generations, else thumbnails in the folder beside;
            "embed"; "folder"), thumb_size (px, default 256), limit (only the N worst generations as
            cards and rows), title, workers (thumbnail threads), progress (a callable given status lines).

    Returns:
        The path of the HTML file.

    Raises:
        InputError: nothing is scored yet, or a bad option.
    """
    return build_report_summary(ws, out_path, tau, **options).path
