"""`fbmem ingest prompts|images`: thin commands over fbmem_data.ingest (no torch at import)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from fbmem_data.cli.common import WorkspaceOption, open_workspace


class PromptFormat(str, Enum):
    auto = "auto"
    nemo_csv = "nemo-csv"
    wen_jsonl = "wen-jsonl"
    csv = "csv"
    parquet = "parquet"


class Role(str, Enum):
    train = "train"
    generated = "generated"
    reference = "reference"


def ingest_prompts_cmd(
    file: Annotated[Path, typer.Argument(help="NeMo/COCO ';'-CSV, Wen JSONL, plain CSV or Parquet prompt file.")],
    prompt_set: Annotated[str | None, typer.Option("--set", help="Prompt set name (default: the file name without extension).")] = None,
    fmt: Annotated[PromptFormat, typer.Option("--input-format", help="The prompt file's format; auto decides from the extension and header.")] = PromptFormat.auto,
    text_column: Annotated[str | None, typer.Option("--text-column", help="Caption column, if not caption/text/prompt.")] = None,
    id_column: Annotated[str | None, typer.Option("--id-column", help="Row id column, if not ''/Unnamed: 0/idx/id.")] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Add the prompts of a file to the prompts table (re-running adds nothing)."""
    from fbmem_data.ingest.prompts import ingest_prompts

    ws = open_workspace(workspace)
    report = ingest_prompts(ws, file, prompt_set=prompt_set, fmt=fmt.value, text_column=text_column, id_column=id_column)
    typer.echo(report.summary())


def ingest_images_cmd(
    path: Annotated[Path, typer.Argument(help="Image file, folder (recursive), webdataset/img2dataset tar, or img2dataset output folder.")],
    role: Annotated[Role, typer.Option("--role", help="What the images are.")],
    manifest: Annotated[Path | None, typer.Option("--manifest", help="CSV: file -> prompt (+ model_id, seed, steps, guidance for generated).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Decoding processes (default min(4, cpus)).")] = None,
    max_pixels: Annotated[int | None, typer.Option("--max-pixels", min=1, help="Larger images (by header) are recorded as too_large.")] = None,
    prompt_set: Annotated[str | None, typer.Option("--set", help="Prompt set for .txt captions / manifest prompt text.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Images per written part.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")] = True,
    max_bytes: Annotated[str, typer.Option("--max-bytes", help="Larger files (by size, before reading) are recorded as too_large and not read (64MiB, 20MB, bytes).")] = "64MiB",
    allow_outside: Annotated[bool, typer.Option("--allow-outside", help="Follow symlinks and manifest paths that lead out of PATH (recorded as outside and not read otherwise).")] = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Hash, check and store images; every file gets an images row with its status."""
    from fbmem_data.cli.fetch_cmds import parse_size
    from fbmem_data.ingest.images import DEFAULT_BATCH_SIZE, DEFAULT_MAX_PIXELS, ingest_images

    cap = parse_size(max_bytes)
    ws = open_workspace(workspace)
    report = ingest_images(
        ws, path, role.value, manifest=manifest, workers=workers,
        max_pixels=max_pixels or DEFAULT_MAX_PIXELS, prompt_set=prompt_set,
        batch_size=batch_size or DEFAULT_BATCH_SIZE, progress=progress, max_bytes=cap, allow_outside=allow_outside,
    )
    typer.echo(report.summary())


def register(app: typer.Typer) -> None:
    ingest = typer.Typer(name="ingest", help="Bring prompts and images into the workspace.", no_args_is_help=True)
    ingest.command("prompts")(ingest_prompts_cmd)
    ingest.command("images")(ingest_images_cmd)
    app.add_typer(ingest, name="ingest")
