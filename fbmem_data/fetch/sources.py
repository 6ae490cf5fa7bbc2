"""Where the URLs to fetch come from: the prompts table, a URL list file, or an img2dataset-style parquet."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fbmem_data.errors import InputError
from fbmem_data.ids import prompt_id as make_prompt_id

if TYPE_CHECKING:
    from fbmem_data.workspace import Workspace

URL_COLUMNS = ("url", "URL")
CAPTION_COLUMNS = ("caption", "TEXT", "text")
KEY_COLUMNS = ("key", "id")


@dataclass(frozen=True)
class FetchTarget:
    """One (url, prompt) pair to fetch; prompt_id is None for a bare URL list."""

    url: str
    prompt_id: str | None


def _clean_url(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def targets_from_prompts(ws: Workspace, prompt_set: str | None = None) -> list[FetchTarget]:
    """Every prompt with a url (of `prompt_set` when given).

    Raises:
        InputError: the set is unknown, or no prompt has a url.
    """
    params: dict[str, Any] = {}
    where = "url IS NOT NULL AND trim(url) <> ''"
    if prompt_set is not None:
        where += " AND prompt_set = $prompt_set"
        params["prompt_set"] = prompt_set
    rows = ws.sql(f"SELECT prompt_id, url FROM prompts WHERE {where} ORDER BY prompt_set, source_index, prompt_id", params)
    if rows.num_rows == 0:
        sets = ws.sql("SELECT DISTINCT prompt_set FROM prompts ORDER BY 1").column("prompt_set").to_pylist()
        what = f"prompt set {prompt_set!r}" if prompt_set is not None else "the prompts table"
        raise InputError(
            f"{what} has no prompt with a url to fetch",
            hint=f"prompt sets here: {sets or 'none'}; ingest prompts with a url column first, or pass --urls/--parquet",
        )
    return [FetchTarget(u.strip(), p) for p, u in zip(rows.column("prompt_id").to_pylist(), rows.column("url").to_pylist(), strict=True)]


def targets_from_url_file(path: Path) -> list[FetchTarget]:
    """One URL per line; blank lines and lines starting with '#' are skipped.

    Raises:
        InputError: the file is missing or holds no URL.
    """
    if not path.is_file():
        raise InputError(f"URL list {path} does not exist")
    targets = []
    for line in path.read_text(encoding="utf-8").splitlines():
        url = line.strip()
        if url and not url.startswith("#"):
            targets.append(FetchTarget(url, None))
    if not targets:
        raise InputError(f"URL list {path} holds no URL", hint="one URL per line")
    return targets


def _pick(names: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path: Path) -> str | None:
    if wanted is not None:
        if wanted not in names:
            raise InputError(f"{path} has no {what} column {wanted!r}", hint=f"columns: {names}")
        return wanted
    return next((c for c in candidates if c in names), None)


def targets_from_parquet(
    ws: Workspace,
    path: Path,
    *,
    prompt_set: str | None = None,
    url_column: str | None = None,
    caption_column: str | None = None,
) -> list[FetchTarget]:
    """Read an img2dataset-style parquet (url + caption). Captions become prompts of `prompt_set`
    (default: the file's stem) so each fetched image is linked to its caption; without a caption
    column the URLs are fetched unlinked.

    Raises:
        InputError: the file is missing, unreadable, or has no url column.
    """
    import pyarrow.parquet as pq

    if not path.is_file():
        raise InputError(f"parquet file {path} does not exist")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise InputError(f"cannot read {path} as parquet: {exc}") from exc
    names = table.column_names
    url_col = _pick(names, url_column, URL_COLUMNS, "url", path)
    if url_col is None:
        raise InputError(f"{path} has no url column", hint=f"columns: {names}; name one with --url-col")
    caption_col = _pick(names, caption_column, CAPTION_COLUMNS, "caption", path)
    key_col = next((c for c in KEY_COLUMNS if c in names), None)
    set_name = prompt_set or path.stem
    now = dt.datetime.now(dt.timezone.utc)
    targets: list[FetchTarget] = []
    prompt_rows: list[dict[str, Any]] = []
    for index, row in enumerate(table.to_pylist()):
        url = _clean_url(row.get(url_col))
        if url is None:
            continue
        caption = row.get(caption_col) if caption_col else None
        if caption is None:
            targets.append(FetchTarget(url, None))
            continue
        source_key = str(row[key_col]) if key_col and row.get(key_col) is not None else str(index)
        pid = make_prompt_id(set_name, source_key, str(caption))
        extra = {k: v for k, v in row.items() if k not in {url_col, caption_col, key_col}}
        prompt_rows.append(
            {
                "prompt_id": pid,
                "prompt_set": set_name,
                "text": str(caption),
                "source_key": source_key,
                "source_index": None,
                "url": url,
                "extra": json.dumps(extra, default=str) if extra else None,
                "source_file": str(path),
                "ingested_at": now,
            }
        )
        targets.append(FetchTarget(url, pid))
    if not targets:
        raise InputError(f"{path} holds no URL in column {url_col!r}")
    if prompt_rows:
        ws.write("prompts", prompt_rows, on_conflict="skip")
    return targets
