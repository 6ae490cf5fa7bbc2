"""`fbmem one-to-many`: the paper's one-to-many Gaussian fit. Thin layer over fbmem_data.fbmem.one_to_many."""

from __future__ import annotations

from typing import Annotated

import pyarrow as pa
import typer

from fbmem_data.cli.common import WorkspaceOption, open_workspace
from fbmem_data.cli.output import output_options


@output_options
def one_to_many(
    workspace: WorkspaceOption = None,
    mitigation: Annotated[
        str, typer.Option("--mitigation", help="Generations of this mitigation (the paper: none).")
    ] = "none",
    model_id: Annotated[
        str | None, typer.Option("--model-id", help="Only this model (default: one fit per model).")
    ] = None,
    prompts: Annotated[str | None, typer.Option("--prompts", help="Only this prompt set.")] = None,
    tau: Annotated[float, typer.Option("--tau", help="FB-Mem label threshold (reference 0.8).")] = 0.8,
    scoring_id: Annotated[
        str | None, typer.Option("--scoring-id", help="Which scoring configuration (default: the latest).")
    ] = None,
    curve: Annotated[
        bool,
        typer.Option(
            "--curve", help="Print the counts and the fitted curve per bin instead of the parameters."
        ),
    ] = False,
) -> pa.Table:
    """Fit the paper's Gaussian to memorized generations per number of distinct best-matching training images.

    Stores the fit in one_to_many_fits (views one_to_many_fit, one_to_many_fit_curve) and prints it.
    """
    from fbmem_data.fbmem.one_to_many import fit_one_to_many, fit_report

    ws = open_workspace(workspace)
    ids = fit_one_to_many(
        ws, mitigation=mitigation, model_id=model_id, prompt_set=prompts, tau=tau, scoring_id=scoring_id
    )
    if curve:
        return fit_report(ws, ids)
    return ws.sql(
        "SELECT fit_id, model_id, mitigation, status, amplitude, mean, sigma, mean_se, sigma_se, r2, moment_mean, moment_std, "
        "n_max, n_prompts, n_generations, n_memorized, error FROM one_to_many_fits WHERE list_contains($ids, fit_id) ORDER BY model_id",
        {"ids": ids},
    )


def register(app: typer.Typer) -> None:
    app.command("one-to-many")(one_to_many)
