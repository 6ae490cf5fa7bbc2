"""`fbmem nemo-c import` (the paper's released clusters and union masks) and `fbmem nemo-c transfer`
(a cluster's mask on other clusters' prompts, against centroid distance). Thin layer over fbmem_data.nemo;
the commands join the `nemo-c` group of nemo_cmds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pyarrow as pa
import typer

from fbmem_data.cli.common import ThreadsOption, WorkspaceOption, open_workspace
from fbmem_data.cli.nemo_cmds import SD_V14, nemo_c_app
from fbmem_data.cli.output import output_options
from fbmem_data.errors import InputError


def _mask_files(specs: list[str]) -> dict[int, Path]:
    """'FILE' (cluster = the number ending its name) or 'CLUSTER=FILE' -> {cluster: path}."""
    from fbmem_data.nemo.import_clusters import mask_cluster

    out: dict[int, Path] = {}
    for spec in specs:
        head, sep, tail = spec.partition("=")
        if sep and head.strip().isdigit():
            cluster, path = int(head), Path(tail)
        else:
            path = Path(spec)
            cluster = mask_cluster(path)
        if cluster in out:
            raise InputError(f"two mask files for cluster {cluster}: {out[cluster].name} and {path.name}")
        out[cluster] = path
    return out


@output_options
def import_clusters(
    workspace: WorkspaceOption = None,
    clusters: Annotated[
        list[Path] | None,
        typer.Option(
            "--clusters", help="Released cluster CSV (Caption;cluster;URL;...); repeat for per-cluster files."
        ),
    ] = None,
    mask: Annotated[
        list[str] | None,
        typer.Option(
            "--mask", help="Released union mask neurons_cluster_N.npz, or CLUSTER=FILE; repeatable."
        ),
    ] = None,
    clustering: Annotated[
        str | None, typer.Option("--clustering", help="Attach the masks to this stored clustering instead.")
    ] = None,
    prompts: Annotated[
        str, typer.Option("--prompts", help="Prompt set the captions belong to.")
    ] = "memorized",
    model_id: Annotated[
        str, typer.Option("--model-id", help="Model the clusters and masks belong to.")
    ] = SD_V14,
) -> pa.Table:
    """Import the paper's released prompt clusters and union masks into prompt_clusters / cluster_masks."""
    from fbmem_data.nemo.import_clusters import import_cluster_files, import_cluster_masks
    from fbmem_data.nemo.layers import SD_V1_WIDTHS

    if not clusters and not mask:
        raise InputError("nothing to import", hint="pass --clusters FILE and/or --mask FILE")
    if clusters and clustering:
        raise InputError("give --clusters (a new clustering) or --clustering ID (a stored one), not both")
    files = _mask_files(list(mask or []))
    ws = open_workspace(workspace)
    mask_id = None
    if clusters:
        report = import_cluster_files(ws, clusters, model_id=model_id, prompt_set=prompts)
        clustering = report.clustering_id
        if report.unmatched:
            typer.echo(
                f"{len(report.unmatched)} caption(s) matched no prompt, e.g. {report.unmatched[:3]}",
                err=True,
            )
    if files:
        if clustering is None:
            raise InputError("masks need a clustering", hint="pass --clusters FILE or --clustering ID")
        widths = SD_V1_WIDTHS if model_id == SD_V14 else None
        masks = import_cluster_masks(ws, clustering, files, widths=widths)
        mask_id = masks.mask_id
        if masks.clusters_without_mask:
            typer.echo(
                f"cluster(s) {masks.clusters_without_mask} have no mask file: their prompts run unmitigated "
                "under nemo-c with this mask",
                err=True,
            )
    return ws.sql(
        "WITH sizes AS (SELECT cluster, count(*) AS mask_neurons FROM cluster_masks WHERE mask_id = $m GROUP BY 1) "
        "SELECT c.clustering_id, $m::VARCHAR AS mask_id, c.cluster, count(*) AS n_prompts, any_value(s.mask_neurons) AS mask_neurons "
        "FROM prompt_clusters c LEFT JOIN sizes s USING (cluster) WHERE c.clustering_id = $c GROUP BY ALL ORDER BY c.cluster",
        {"c": clustering, "m": mask_id},
    )


@output_options
def transfer(
    mask: Annotated[str, typer.Option("--mask", help="cluster_masks.mask_id the transfer generations used.")],
    workspace: WorkspaceOption = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="Compute the cluster centroids with this model's text encoder (once)."
        ),
    ] = None,
    model_id: Annotated[
        str | None, typer.Option("--model-id", help="Model id to record (default: from --model).")
    ] = None,
    fit: Annotated[
        bool, typer.Option("--fit", help="Print the line against centroid distance per source cluster.")
    ] = False,
    device: Annotated[str, typer.Option("--device", help="torch device: auto, cpu, cuda ...")] = "auto",
    threads: ThreadsOption = None,
) -> pa.Table:
    """A cluster's mask on other clusters' prompts: change per (source, target) cluster against centroid distance."""
    from fbmem_data.nemo.transfer import compute_centroids, mask_clustering, transfer_table

    ws = open_workspace(workspace)
    clustering = mask_clustering(ws, mask)
    if model is not None:
        from fbmem_data.cli.nemo_cmds import _load

        pipe, mid = _load(model, model_id, device)
        compute_centroids(ws, pipe, mid, clustering)
    elif (
        not ws.sql("SELECT count(*) AS n FROM cluster_centroids WHERE clustering_id = $c", {"c": clustering})
        .column("n")[0]
        .as_py()
    ):
        typer.echo(
            "no centroids stored for this clustering: centroid_distance is empty (pass --model to compute them)",
            err=True,
        )
    return transfer_table(ws, mask, fit=fit)


def register(app: typer.Typer) -> None:
    del app  # the commands join the `nemo-c` group that nemo_cmds registers
    nemo_c_app.command("import")(import_clusters)
    nemo_c_app.command("transfer")(transfer)
