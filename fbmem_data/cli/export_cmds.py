"""`fbmem export csv|hf|fiftyone`: the evidence view for tools outside fbmem."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fbmem_data.cli.common import WorkspaceOption, open_workspace

export_app = typer.Typer(
    help="Evidence (prompt, images, best match, scores, label) for CSV tools, HF datasets, FiftyOne.",
    no_args_is_help=True,
)

TauOption = Annotated[float, typer.Option("--tau", help="Label threshold in [0, 1] (reference 0.8).")]
ScoringOption = Annotated[
    str | None,
    typer.Option("--scoring-id", help="Which scoring configuration (default: as fbmem labels chooses)."),
]


def csv_cmd(
    workspace: WorkspaceOption = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="CSV file (default: stdout).")] = None,
    tau: TauOption = 0.8,
    scoring_id: ScoringOption = None,
) -> None:
    """The fbmem_evidence view as CSV: one row per labelled generation, image paths absolute."""
    from fbmem_data.cli.output import OutputFormat, emit
    from fbmem_data.export import evidence

    emit(evidence(open_workspace(workspace), tau, scoring_id), OutputFormat.csv, output)


def hf_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="A new directory for the Parquet dataset.")],
    workspace: WorkspaceOption = None,
    tau: TauOption = 0.8,
    scoring_id: ScoringOption = None,
) -> None:
    """An HF datasets Parquet (images inside): datasets.load_dataset("parquet", data_dir=OUT/data)."""
    from fbmem_data.export import export_hf

    done = export_hf(open_workspace(workspace), output, tau, scoring_id)
    typer.echo(f"{done['rows']} rows with images -> {done['file']}")


def fiftyone_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="A new directory for the FiftyOne dataset.")],
    workspace: WorkspaceOption = None,
    tau: TauOption = 0.8,
    scoring_id: ScoringOption = None,
) -> None:
    """FiftyOne's image-classification layout (data/, labels.json) plus best matches, masks and evidence.csv:
    fbmem_data.export.load_fiftyone(OUT) loads it all."""
    from fbmem_data.export import export_fiftyone

    done = export_fiftyone(open_workspace(workspace), output, tau, scoring_id)
    typer.echo(f"{done['images']} images ({done['rows']} generations, {done['masks']} masks) -> {done['dir']}")


def register(app: typer.Typer) -> None:
    export_app.command("csv")(csv_cmd)
    export_app.command("hf")(hf_cmd)
    export_app.command("fiftyone")(fiftyone_cmd)
    app.add_typer(export_app, name="export")
