"""`fetch(ws, ...)`: download every target URL in parallel, validate, store, and record one row each.

Work is pipelined: a thread pool keeps at most 2 x concurrency URLs in flight; finished results are
written every `batch_size` URLs as new Parquet parts (images, then train_links, then fetches), so
a killed run loses at most one unwritten batch. The fetches row is written last: it is the marker
that makes a re-run skip the URL, so an image stored without its row is simply fetched again
(content-addressed store and skip-on-conflict writes keep that free of duplicates).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fbmem_data.errors import InputError
from fbmem_data.fetch.client import Download, FetchSettings, download, make_client
from fbmem_data.fetch.guard import Guard
from fbmem_data.fetch.sources import (
    FetchTarget,
    targets_from_parquet,
    targets_from_prompts,
    targets_from_url_file,
)
from fbmem_data.fetch.statuses import CANCELLED, OK
from fbmem_data.fetch.validate import DEFAULT_MAX_PIXELS, ImageCheck, check_image_bytes

if TYPE_CHECKING:
    import httpx
    import pyarrow as pa

    from fbmem_data.workspace import Workspace

DEFAULT_MAX_BYTES = 20 * 1024 * 1024


@dataclass
class FetchSummary:
    """What a fetch run did: how many URLs it tried and how each ended."""

    run_id: str
    n_targets: int
    n_skipped: int
    n_urls: int
    counts: Counter[str] = field(default_factory=Counter)

    def to_table(self) -> pa.Table:
        import pyarrow as pa

        rows = [{"status": s, "rows": n} for s, n in sorted(self.counts.items())]
        return pa.Table.from_pylist(rows, schema=pa.schema([("status", pa.string()), ("rows", pa.int64())]))


@dataclass
class _Outcome:
    """A finished URL: the download, the verdict on its bytes, and where it was stored."""

    download: Download
    check: ImageCheck | None = None
    image_id: str | None = None
    store_path: str | None = None


def resolve_targets(
    ws: Workspace,
    *,
    prompt_set: str | None = None,
    urls_file: Path | None = None,
    parquet: Path | None = None,
    url_column: str | None = None,
    caption_column: str | None = None,
) -> list[FetchTarget]:
    """The distinct (url, prompt_id) pairs of the chosen source.

    Raises:
        InputError: more than one of urls_file / parquet, or a source problem (see sources.py).
    """
    if urls_file is not None and parquet is not None:
        raise InputError("give either a URL list or a parquet file, not both")
    if urls_file is not None:
        targets = targets_from_url_file(Path(urls_file))
    elif parquet is not None:
        targets = targets_from_parquet(
            ws, Path(parquet), prompt_set=prompt_set, url_column=url_column, caption_column=caption_column
        )
    else:
        targets = targets_from_prompts(ws, prompt_set)
    return list(dict.fromkeys(targets))  # drop repeats, keep order


def finished_targets(ws: Workspace, retry_failed: bool = False) -> set[tuple[str, str | None]]:
    """(url, prompt_id) pairs whose latest fetch row is final: ok, or a permanent failure unless
    retry_failed (then only ok counts as done)."""
    rows = ws.sql(
        "SELECT url, prompt_id FROM fetch_latest WHERE status = 'ok' OR (NOT retryable AND NOT $retry_failed)",
        {"retry_failed": bool(retry_failed)},
    )
    return set(zip(rows.column("url").to_pylist(), rows.column("prompt_id").to_pylist(), strict=True))


def _fetch_one(
    ws: Workspace, client: httpx.Client, url: str, settings: FetchSettings, max_pixels: int, guard: Guard
) -> _Outcome:
    result = download(client, url, settings, guard.cancelled)
    outcome = _Outcome(result)
    if result.status != OK or result.body is None:
        return outcome
    outcome.check = check_image_bytes(result.body, max_pixels=max_pixels)
    if outcome.check.status == OK:
        # Stored from the worker thread: the store is content-addressed and writes atomically, so a
        # file stored by a run killed before its batch was recorded is reused, never duplicated.
        image_id, path = ws.store_image(result.body, outcome.check.extension)
        outcome.image_id, outcome.store_path = image_id, str(path.relative_to(ws.root))
    else:
        result.status, result.retryable, result.error = outcome.check.status, False, outcome.check.error
    result.body = None  # stored (or refused): keep only the digest while the batch waits to be written
    return outcome


def _rows_for(
    outcome: _Outcome, prompt_ids: list[str | None], run_id: str, now: dt.datetime
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    d, check = outcome.download, outcome.check
    fetch_rows = [
        {
            "url": d.url,
            "prompt_id": pid,
            "status": d.status,
            "retryable": bool(d.retryable),
            "http_status": d.http_status,
            "content_type": d.content_type,
            "final_url": d.final_url,
            "n_bytes": d.n_bytes,
            "sha256": d.sha256,
            "width": check.width if check else None,
            "height": check.height if check else None,
            "error": d.error,
            "attempts": d.attempts,
            "elapsed_s": round(d.elapsed_s, 4),
            "fetched_at": now,
            "run_id": run_id,
        }
        for pid in prompt_ids
    ]
    if outcome.image_id is None or check is None:
        return fetch_rows, [], []
    image_rows = [
        {
            "image_id": outcome.image_id,
            "role": "train",
            "source_uri": d.url,
            "store_path": outcome.store_path,
            "width": check.width,
            "height": check.height,
            "mode": check.mode,
            "format": check.format,
            "n_bytes": d.n_bytes,
            "status": "ok",
            "error": None,
            "ingested_at": now,
            "run_id": run_id,
        }
    ]
    link_rows = [
        {"image_id": outcome.image_id, "prompt_id": pid, "relation": "url", "run_id": run_id}
        for pid in prompt_ids
        if pid is not None
    ]
    return fetch_rows, image_rows, link_rows


def _dedupe(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        seen.setdefault(tuple(row[k] for k in keys), row)
    return list(seen.values())


def _write_batch(
    ws: Workspace, batch: list[tuple[_Outcome, list[str | None]]], run_id: str, counts: Counter[str]
) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    fetch_rows: list[dict[str, Any]] = []
    image_rows: list[dict[str, Any]] = []
    link_rows: list[dict[str, Any]] = []
    for outcome, prompt_ids in batch:
        f, i, link = _rows_for(outcome, prompt_ids, run_id, now)
        fetch_rows += f
        image_rows += i
        link_rows += link
    # Order matters: the fetches rows go last because they mark the URLs done.
    ws.write("images", _dedupe(image_rows, ("image_id", "role")), on_conflict="skip")
    ws.write("train_links", _dedupe(link_rows, ("image_id", "prompt_id")), on_conflict="skip")
    ws.write("fetches", fetch_rows, on_conflict="error")
    counts.update(row["status"] for row in fetch_rows)


def fetch(
    ws: Workspace,
    *,
    prompt_set: str | None = None,
    urls_file: str | Path | None = None,
    parquet: str | Path | None = None,
    concurrency: int = 16,
    timeout: float = 10.0,
    retries: int = 3,
    max_bytes: int = DEFAULT_MAX_BYTES,
    retry_failed: bool = False,
    batch_size: int = 64,
    backoff_s: float = 0.5,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    url_column: str | None = None,
    caption_column: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    allow_private: bool = False,
    allow_networks: tuple[str, ...] | list[str] = (),
) -> FetchSummary:
    """Download the training images behind prompt URLs (or a URL list / parquet) into the workspace.

    Args:
        ws: the workspace.
        prompt_set: with the prompts source, only this set; with a parquet, the set its captions
            become (default: the file's stem).
        urls_file: a text file with one URL per line (images are not linked to prompts).
        parquet: an img2dataset-style parquet with url and caption columns.
        concurrency: parallel downloads (and the connection-pool size).
        timeout: seconds to connect and between reads; a whole request (connect, headers, body,
            redirects) must complete within 4x this.
        retries: further attempts after a timeout, connection error, 5xx, 408 or 429.
        max_bytes: size cap; larger bodies are aborted and recorded too_large.
        retry_failed: also retry URLs whose latest row is a permanent failure.
        batch_size: URLs per written batch (what a kill can lose).
        backoff_s: base of the exponential back-off between retries.
        max_pixels: width x height above which an image is recorded too_large.
        url_column, caption_column: parquet column names (default: url/URL, caption/TEXT/text).
        progress: called with (done, total) after each written batch.
        allow_private: also fetch from loopback, private, link-local, multicast and other
            non-public addresses (refused by default on every hop, after DNS resolution).
        allow_networks: allow only these networks (CIDR, e.g. "10.1.0.0/16") among those.

    A SIGTERM (in the main thread) is handled like Ctrl-C: open requests stop at once, finished
    URLs are written, the run is recorded interrupted and KeyboardInterrupt propagates; the
    next run fetches the rest.

    Returns:
        FetchSummary: run id, counts of targets, skipped (already final) and rows by status.

    Raises:
        InputError: a bad source or argument.
    """
    import ipaddress

    for net in allow_networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            raise InputError(
                f"not a network: {net!r}", hint="give a CIDR such as 10.0.0.0/8 or 127.0.0.1/32"
            ) from exc
    if concurrency < 1 or retries < 0 or max_bytes < 1 or batch_size < 1 or timeout <= 0:
        raise InputError("concurrency, max_bytes, batch_size and timeout must be positive and retries >= 0")
    settings = FetchSettings(
        concurrency=concurrency,
        timeout=timeout,
        retries=retries,
        max_bytes=max_bytes,
        backoff_s=backoff_s,
        allow_private=allow_private,
        allow_networks=tuple(allow_networks),
    )
    config = {
        "source": "urls" if urls_file else "parquet" if parquet else "prompts",
        "prompt_set": prompt_set,
        "urls_file": str(urls_file) if urls_file else None,
        "parquet": str(parquet) if parquet else None,
        "concurrency": concurrency,
        "timeout": timeout,
        "retries": retries,
        "max_bytes": max_bytes,
        "retry_failed": retry_failed,
        "batch_size": batch_size,
        "allow_private": allow_private,
        "allow_networks": list(allow_networks),
    }
    with ws.run("fetch", config) as run:  # ws.run turns SIGTERM into KeyboardInterrupt
        targets = resolve_targets(
            ws,
            prompt_set=prompt_set,
            urls_file=Path(urls_file) if urls_file else None,
            parquet=Path(parquet) if parquet else None,
            url_column=url_column,
            caption_column=caption_column,
        )
        done = finished_targets(ws, retry_failed)
        todo = [t for t in targets if (t.url, t.prompt_id) not in done]
        by_url: dict[str, list[str | None]] = {}
        for t in todo:
            by_url.setdefault(t.url, []).append(t.prompt_id)
        summary = FetchSummary(run.run_id, len(targets), len(targets) - len(todo), len(by_url))
        if by_url:
            _run_pool(ws, by_url, settings, max_pixels, batch_size, run.run_id, summary, progress)
    return summary


def _run_pool(
    ws: Workspace,
    by_url: dict[str, list[str | None]],
    settings: FetchSettings,
    max_pixels: int,
    batch_size: int,
    run_id: str,
    summary: FetchSummary,
    progress: Callable[[int, int], None] | None,
) -> None:
    pending_urls: Iterable[str] = iter(by_url)
    max_in_flight = 2 * settings.concurrency
    buffer: list[tuple[_Outcome, list[str | None]]] = []
    written = 0
    guard = Guard(settings.allow_private, settings.allow_networks)
    with contextlib.closing(guard), make_client(settings, guard) as client:
        pool = cf.ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="fbmem-fetch")
        in_flight: dict[cf.Future[_Outcome], str] = {}
        try:
            while True:
                for url in pending_urls:
                    in_flight[pool.submit(_fetch_one, ws, client, url, settings, max_pixels, guard)] = url
                    if len(in_flight) >= max_in_flight:
                        break
                if not in_flight:
                    break
                finished, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
                for future in finished:
                    url = in_flight.pop(future)
                    outcome = future.result()
                    if outcome.download.status != CANCELLED:
                        buffer.append((outcome, by_url[url]))
                if len(buffer) >= batch_size:
                    # Taken out of the buffer first: a batch interrupted mid-write is not written
                    # twice by the cleanup below (its URLs without a fetches row are fetched again).
                    batch, buffer = buffer, []
                    _write_batch(ws, batch, run_id, summary.counts)
                    written += len(batch)
                    if progress:
                        progress(written, len(by_url))
        except BaseException:
            # Keep what already finished (Ctrl-C, SIGTERM, or an error writing); in-flight downloads
            # are stopped now (their sockets shut down) and not recorded, so the next run retries them.
            guard.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            if buffer:
                _write_batch(ws, buffer, run_id, summary.counts)
            raise
        pool.shutdown(wait=True)
    if buffer:
        _write_batch(ws, buffer, run_id, summary.counts)
        written += len(buffer)
        if progress:
            progress(written, len(by_url))
