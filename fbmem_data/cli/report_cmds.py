"""`fbmem report`: the HTML report with evidence cards and PNG plots (library: fbmem_data.report)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fbmem_data.cli.common import WorkspaceOption, open_workspace


def report(
    workspace: WorkspaceOption = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="HTML file to write (default: WORKSPACE/report.html).")
    ] = None,
    tau: Annotated[float, typer.Option("--tau", min=0.0, max=1.0, help="Label threshold (reference 0.8).")] = 0.8,
    scoring_id: Annotated[
        str | None, typer.Option("--scoring-id", help="Scoring configuration to report (default: the latest).")
    ] = None,
    k: Annotated[int, typer.Option("--k", min=1, help="Top-k training matches shown per generation.")] = 5,
    images: Annotated[
        str,
        typer.Option("--images", help="auto (embed up to 800 generations), embed (one self-contained file) or folder."),
    ] = "auto",
    thumb_size: Annotated[int, typer.Option("--thumb-size", min=32, max=512, help="Thumbnail side in pixels.")] = 256,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Only the N worst generations as cards and table rows.")
    ] = None,
) -> None:
    """Write a self-contained HTML report: rates, one-to-many, mitigation comparison, evidence cards, table."""
    from fbmem_data.report import build_report_summary

    ws = open_workspace(workspace)
    out = output or ws.root / "report.html"
    summary = build_report_summary(
        ws, out, tau, scoring_id=scoring_id, k=k, images=images, thumb_size=thumb_size, limit=limit,
        progress=lambda msg: typer.echo(f"  {msg}", err=True),
    )
    from fbmem_data.fbmem.labelling import describe_scoring

    typer.echo(f"report: {summary.path}")
    typer.echo(f"  labels from {describe_scoring(ws, scoring_id)}; tau {tau:g}")
    typer.echo(
        f"  {summary.generations} generations, {summary.images} images ({summary.images_mode}), "
        f"{summary.html_bytes / 1e6:.2f} MB"
    )
    for name, path in summary.plots.items():
        typer.echo(f"  plot {name}: {path}")
    if summary.thumbnail_errors:
        typer.echo(f"  {len(summary.thumbnail_errors)} image(s) could not be shown (not stored or unreadable)", err=True)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
