"""`fbmem fetch`: download training images behind prompt URLs (thin layer over fbmem_data.fetch)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import pyarrow as pa
import typer

from fbmem_data.cli.common import WorkspaceOption, open_workspace
from fbmem_data.cli.output import output_options
from fbmem_data.errors import FbmemError, InputError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1024, "mi": 1024**2, "gi": 1024**3}


def parse_size(text: str) -> int:
    """'20MB' -> 20_000_000, '20MiB' -> 20_971_520, '512k' -> 512_000, '1000' -> 1000 bytes.

    Raises:
        InputError: not a size.
    """
    match = _SIZE_RE.match(text)
    if not match:
        raise InputError(f"not a size: {text!r}", hint="e.g. 20MB, 512kB, 20MiB or a byte count")
    unit = (match.group(2) or "").lower().rstrip("b")
    return int(float(match.group(1)) * _UNITS[unit])


@output_options
def fetch(
    workspace: WorkspaceOption = None,
    prompts: Annotated[
        str | None,
        typer.Option("--prompts", help="Prompt set to fetch (default: every prompt with a url); with --parquet, the set its captions become."),
    ] = None,
    urls: Annotated[Path | None, typer.Option("--urls", help="Text file with one URL per line (not linked to prompts).")] = None,
    parquet: Annotated[Path | None, typer.Option("--parquet", help="img2dataset-style parquet with url and caption columns.")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Parallel downloads (connections).")] = 16,
    timeout: Annotated[float, typer.Option("--timeout", min=0.01, help="Seconds to connect and between reads; a whole request (connect, headers, body, redirects) must finish within 4x this.")] = 10.0,
    retries: Annotated[int, typer.Option("--retries", min=0, help="Retries after a timeout, connection error, 5xx, 408 or 429 (exponential back-off).")] = 3,
    max_bytes: Annotated[str, typer.Option("--max-bytes", help="Size cap per image (20MB, 20MiB, bytes).")] = "20MB",
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Also retry URLs that failed permanently (4xx, not an image, ...).")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="URLs per written batch (what a kill can lose).")] = 64,
    url_col: Annotated[str | None, typer.Option("--url-col", help="Parquet url column (default url or URL).")] = None,
    caption_col: Annotated[str | None, typer.Option("--caption-col", help="Parquet caption column (default caption, TEXT or text).")] = None,
    allow_private: Annotated[bool, typer.Option("--allow-private", help="Also fetch from loopback, private, link-local and other non-public addresses (refused by default, on every redirect hop).")] = False,
    allow_net: Annotated[list[str] | None, typer.Option("--allow-net", help="Allow only this non-public network (CIDR, repeatable), e.g. a lab mirror on 10.1.2.0/24.")] = None,
) -> pa.Table:
    """Download the image behind every prompt URL; one `fetches` row per URL, images ingested as role=train."""
    from fbmem_data.fetch import fetch as run_fetch

    ws = open_workspace(workspace)

    def progress(done: int, total: int) -> None:
        typer.echo(f"fetched {done}/{total}", err=True)

    try:
        summary = run_fetch(
            ws,
            prompt_set=prompts,
            urls_file=urls,
            parquet=parquet,
            concurrency=concurrency,
            timeout=timeout,
            retries=retries,
            max_bytes=parse_size(max_bytes),
            retry_failed=retry_failed,
            batch_size=batch_size,
            url_column=url_col,
            caption_column=caption_col,
            progress=progress,
            allow_private=allow_private,
            allow_networks=allow_net or [],
        )
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the library has written what finished
        raise FbmemError(
            "fetch interrupted: URLs finished before the interrupt are recorded, the others are not",
            hint="run the same command again: recorded URLs are skipped, the rest are fetched",
        ) from exc
    typer.echo(
        f"run {summary.run_id}: {summary.n_targets} target(s), {summary.n_skipped} already fetched, "
        f"{summary.n_urls} URL(s) tried",
        err=True,
    )
    return summary.to_table()


def register(app: typer.Typer) -> None:
    app.command("fetch")(fetch)
