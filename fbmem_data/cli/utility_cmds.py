"""`fbmem utility ...`: score generations with a utility plug-in and show utility per mitigation.

Thin layer over fbmem_data.utility.runner (library: `score_utility`) and sql/55_utility.sql; torch
and the plug-ins are imported inside the commands only.
"""

from __future__ import annotations

from typing import Annotated

import pyarrow as pa
import typer

from fbmem_data.cli.common import (
    BatchSizeOption,
    DeviceOption,
    ThreadsOption,
    WorkspaceOption,
    open_workspace,
)
from fbmem_data.cli.output import output_options
from fbmem_data.keyvalues import parse_key_values

utility_app = typer.Typer(help="Utility of generations: how well each image still shows its prompt.", no_args_is_help=True)

MetricOption = Annotated[str, typer.Option("--metric", help="Utility plug-in: lab-colours (lab) or clip (OpenCLIP weights).")]
UtilityOptionOption = Annotated[
    list[str] | None,
    typer.Option(
        "--option", "-O", metavar="KEY=VALUE",
        help="Plug-in setting (repeatable), e.g. -O pretrained=clip-b32/open_clip_model.safetensors, "
        "-O model_name=ViT-B-32-quickgelu, -O object_share=0.2; JSON values ({...}, [...]) are parsed.",
    ),
]


def score(
    metric: MetricOption,
    workspace: WorkspaceOption = None,
    option: UtilityOptionOption = None,
    mitigation: Annotated[
        list[str] | None, typer.Option("--mitigation", help="Only generations of this mitigation (repeatable; default all).")
    ] = None,
    model_id: Annotated[str | None, typer.Option("--model-id", help="Only generations of this model.")] = None,
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
    batch_size: BatchSizeOption = 32,
) -> None:
    """Score every generation not yet scored under this plug-in configuration into utility_scores."""
    from fbmem_data.utility.runner import score_utility

    ws = open_workspace(workspace)
    summary = score_utility(
        ws, metric, options=parse_key_values(option, "--option", example="pretrained=PATH"), mitigations=mitigation or None, model_id=model_id,
        batch_size=batch_size, device=device, log=lambda msg: typer.echo(f"  {msg}", err=True),
    )
    typer.echo("  ".join(f"{k}={v}" for k, v in summary.items()))


@output_options
def show(
    workspace: WorkspaceOption = None,
    utility_id: Annotated[str | None, typer.Option("--utility-id", help="Configuration to show (default: most ok values).")] = None,
    metric: Annotated[
        str | None, typer.Option("--metric", help="Plug-in whose configuration with the most ok values is shown (lab-colours, clip).")
    ] = None,
) -> pa.Table:
    """Mean utility per mitigation (view mitigation_utility) and its change against no mitigation."""
    ws = open_workspace(workspace)
    params = {k: v for k, v in (("utility_id", utility_id), ("utility_plugin", metric)) if v is not None}
    return ws.sql("SELECT * FROM mitigation_utility", params)


def register(app: typer.Typer) -> None:
    utility_app.command("score")(score)
    utility_app.command("show")(show)
    app.add_typer(utility_app, name="utility")
