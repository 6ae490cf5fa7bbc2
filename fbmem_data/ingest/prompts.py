"""Read prompt files into the `prompts` table.

Formats:
- nemo-csv: NeMo's `;`-separated CSV written by pandas (an unnamed or "Unnamed: 0" index column, a
  Caption column, optional URL, type (VM/TM), Index (LAION index) and any other columns). Captions
  use CSV double-quote escaping (a quote inside a field is doubled), which the csv module reads exactly.
  COCO's `coco2014_val_10000.csv` has the same layout.
- wen-jsonl: one JSON object per line, e.g. Wen et al.'s `{"caption", "index", "url"}`.
- csv: a CSV with any of `, ; TAB |` as delimiter (sniffed from the header line).
- parquet: a Parquet file.

Column roles are found by name (case-insensitive): text = caption | text | prompt (or --text-column);
row id = "" | "Unnamed: 0" | idx | id (or --id-column; else the 0-based row index); source_index =
index | source_index | laion_index; url; memorization_type = type | memorization_type when every
value is VM or TM. Every other column goes to `extra` as JSON.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fbmem_data.errors import InputError
from fbmem_data.ids import prompt_id
from fbmem_data.ingest.report import IngestReport

if TYPE_CHECKING:
    from fbmem_data.workspace import Workspace

FORMATS = ("auto", "nemo-csv", "wen-jsonl", "csv", "parquet")
TEXT_COLUMNS = ("caption", "text", "prompt")
ID_COLUMNS = ("", "unnamed: 0", "idx", "id")
INDEX_COLUMNS = ("index", "source_index", "laion_index")
TYPE_COLUMNS = ("memorization_type", "type")
MEMORIZATION_TYPES = ("VM", "TM")
_CSV_SUFFIXES = (".csv", ".tsv", ".txt")
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_DELIMITERS = (";", ",", "\t", "|")

# The shared reference files and the set names the README and the lab use for them.
REFERENCE_PROMPT_FILES = {
    "memorized": "memorized_laion_prompts.csv",
    "unmemorized": "unmemorized_laion_prompts.csv",
    "additional": "additional_laion_prompts_500.csv",
    "coco": "coco2014_val_10000.csv",
}


@dataclass(frozen=True)
class RawRows:
    """A prompt file parsed into named columns: `rows[i]` came from location `locations[i]`."""

    fmt: str
    columns: list[str]
    rows: list[dict[str, Any]]
    locations: list[str]  # "line 12" (text files) or "row 12" (parquet), for error messages


def _fail(path: Path, where: str | None, what: str, hint: str | None = None) -> InputError:
    place = f"{path}" if where is None else f"{path}, {where}"
    return InputError(f"{place}: {what}", hint=hint)


def _read_text(path: Path) -> str:
    if not path.exists():
        raise InputError(f"prompt file {path} does not exist")
    if not path.is_file():
        raise InputError(f"{path} is not a file")
    data = path.read_bytes()
    if not data.strip():
        raise _fail(path, None, "the file is empty")
    if b"\x00" in data[:8192]:
        raise _fail(path, None, "binary data (NUL bytes), not a text prompt file",
                    hint="prompt files are CSV, JSONL or Parquet; pass --format if the extension misleads")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise _fail(path, f"line {line}", f"not UTF-8 text (byte {exc.start}: {exc.reason})",
                    hint="save the file as UTF-8") from exc


def detect_format(path: Path) -> str:
    """The format `auto` resolves to, from the extension (and the header line for CSV)."""
    suffix = path.suffix.lower()
    if suffix in _PARQUET_SUFFIXES:
        return "parquet"
    if suffix in _JSONL_SUFFIXES:
        return "wen-jsonl"
    if suffix in _CSV_SUFFIXES:
        return "nemo-csv" if _sniff_delimiter(_read_text(path)) == ";" else "csv"
    if path.is_file():
        with open(path, "rb") as fh:
            if fh.read(4) == b"PAR1":
                return "parquet"
    raise InputError(
        f"cannot tell the format of {path} from its extension {suffix or '(none)'}",
        hint=f"pass --format, one of {', '.join(FORMATS[1:])}",
    )


def _sniff_delimiter(text: str) -> str:
    header = text.split("\n", 1)[0]
    counts = {d: header.count(d) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _read_csv(path: Path, delimiter: str | None) -> RawRows:
    text = _read_text(path)
    delimiter = delimiter or _sniff_delimiter(text)
    # strict: a quote that never closes (or stray text after a closing quote) is an error, where
    # the lenient reader would swallow the following lines into one field and merge the rows.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    start = 1  # the line the record being read starts on (a quoted field may span lines)
    try:
        header = next(reader)
        rows: list[dict[str, Any]] = []
        locations: list[str] = []
        start = reader.line_num + 1
        for record in reader:
            if not record:  # a blank line between records
                start = reader.line_num + 1
                continue
            if len(record) != len(header):
                raise _fail(
                    path, f"line {reader.line_num}",
                    f"{len(record)} field(s) but the header has {len(header)} ({header})",
                    hint=f"is the delimiter {delimiter!r} right, and are quotes balanced?",
                )
            rows.append(dict(zip(header, record, strict=True)))
            locations.append(f"line {reader.line_num}")
            start = reader.line_num + 1
    except csv.Error as exc:
        raise _fail(
            path, f"line {start}", f"malformed CSV: {exc} (a quote opened here is not closed properly)",
            hint='a quote inside a quoted field is written twice (""); check the quotes on that line',
        ) from exc
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise _fail(path, "line 1", f"the header repeats column name(s) {dup}")
    fmt = "nemo-csv" if delimiter == ";" else "csv"
    return RawRows(fmt, header, rows, locations)


def _read_jsonl(path: Path) -> RawRows:
    text = _read_text(path)
    columns: dict[str, None] = {}
    rows: list[dict[str, Any]] = []
    locations: list[str] = []
    if text.lstrip().startswith("["):  # a .json file holding one array of objects
        try:
            items = json.loads(text)
        except ValueError as exc:
            raise _fail(path, f"line {getattr(exc, 'lineno', '?')}", f"invalid JSON: {exc}") from exc
        numbered = [(f"item {i}", item) for i, item in enumerate(items)]
    else:
        numbered = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((f"line {lineno}", json.loads(line)))
            except ValueError as exc:
                raise _fail(path, f"line {lineno}", f"invalid JSON ({exc}): {line[:80]!r}") from exc
    for where, obj in numbered:
        if not isinstance(obj, dict):
            raise _fail(path, where, f"expected a JSON object, got {type(obj).__name__}")
        columns.update(dict.fromkeys(obj))
        rows.append(obj)
        locations.append(where)
    return RawRows("wen-jsonl", list(columns), rows, locations)


def _read_parquet(path: Path) -> RawRows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.exists():
        raise InputError(f"prompt file {path} does not exist")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise _fail(path, None, f"not a readable Parquet file: {exc}") from exc
    rows = table.to_pylist()
    return RawRows("parquet", table.column_names, rows, [f"row {i}" for i in range(len(rows))])


def read_prompt_file(path: str | os.PathLike[str], fmt: str = "auto") -> RawRows:
    """Parse a prompt file into rows of named columns, without interpreting them.

    Raises:
        InputError: the file is missing, empty, binary, not UTF-8, malformed, or fmt is unknown.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise InputError(f"unknown prompt file format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
    if not path.exists():
        raise InputError(f"prompt file {path} does not exist")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "parquet":
        return _read_parquet(path)
    if fmt == "wen-jsonl":
        return _read_jsonl(path)
    return _read_csv(path, ";" if fmt == "nemo-csv" else None)


def _find_column(columns: Sequence[str], names: Sequence[str]) -> str | None:
    lowered = {c.strip().lower(): c for c in reversed(columns)}  # first column wins on clashes
    for name in names:
        if name in lowered:
            return lowered[name]
    return None


def _chosen_column(path: Path, columns: Sequence[str], given: str, flag: str) -> str:
    if given in columns:
        return given
    found = _find_column(columns, [given.lower()])
    if found is None:
        raise _fail(path, None, f"no column {given!r} ({flag}); the file has columns {list(columns)}")
    return found


def _as_int(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ValueError("a boolean is not an index")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{value} is not an integer")
        return int(value)
    return int(str(value).strip())


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if text.strip() else None


def prompt_rows(
    raw: RawRows,
    path: Path,
    prompt_set: str,
    text_column: str | None = None,
    id_column: str | None = None,
) -> list[dict[str, Any]]:
    """Turn parsed rows into `prompts` rows (see the module docstring for the column roles).

    Raises:
        InputError: no caption column, an empty caption, a repeated or empty id, a non-integer
            LAION index, a memorization_type other than VM/TM, or no rows at all.
    """
    cols = raw.columns
    text_col = (
        _chosen_column(path, cols, text_column, "--text-column") if text_column else _find_column(cols, TEXT_COLUMNS)
    )
    if text_col is None:
        raise _fail(
            path, None, f"no caption column: the file has columns {list(cols)}",
            hint=f"name it one of {', '.join(TEXT_COLUMNS)} or pass --text-column",
        )
    id_col = _chosen_column(path, cols, id_column, "--id-column") if id_column else _find_column(cols, ID_COLUMNS)
    index_col = _find_column([c for c in cols if c != id_col], INDEX_COLUMNS)
    url_col = _find_column(cols, ("url",))
    type_col = _find_column(cols, TYPE_COLUMNS)
    if type_col is not None:
        values = {str(r.get(type_col) or "").strip().upper() for r in raw.rows} - {""}
        if not values <= set(MEMORIZATION_TYPES):
            if type_col.strip().lower() == "memorization_type":
                bad = next(i for i, r in enumerate(raw.rows)
                           if str(r.get(type_col) or "").strip().upper() not in ("", *MEMORIZATION_TYPES))
                raise _fail(path, raw.locations[bad],
                            f"memorization_type {raw.rows[bad][type_col]!r} is not one of {MEMORIZATION_TYPES}")
            type_col = None  # a generic "type" column: keep it in extra
    if not raw.rows:
        raise _fail(path, None, "no prompt rows (only a header)" if cols else "no prompt rows")

    special = {c for c in (text_col, id_col, index_col, url_col, type_col) if c is not None}
    if id_col is not None:
        _check_ids(raw, path, id_col)
    now = dt.datetime.now(dt.timezone.utc)
    out: list[dict[str, Any]] = []
    for i, (row, where) in enumerate(zip(raw.rows, raw.locations, strict=True)):
        text = row.get(text_col)
        if not isinstance(text, str):
            if text is None:
                raise _fail(path, where, f"empty caption (column {text_col!r} is missing or null)")
            raise _fail(path, where, f"caption in column {text_col!r} is a {type(text).__name__}, not text")
        if not text.strip():
            raise _fail(path, where, f"empty caption in column {text_col!r}")
        source_key = str(row[id_col]).strip() if id_col is not None else str(i)
        try:
            source_index = _as_int(row.get(index_col)) if index_col else None
        except ValueError as exc:
            raise _fail(path, where, f"LAION index {row.get(index_col)!r} in column {index_col!r} is not an integer") from exc
        mem_type = (str(row.get(type_col) or "").strip().upper() or None) if type_col else None
        extra = {k: v for k, v in row.items() if k not in special}
        out.append(
            {
                "prompt_id": prompt_id(prompt_set, source_key, text),
                "prompt_set": prompt_set,
                "text": text,
                "source_key": source_key,
                "source_index": source_index,
                "url": _as_text(row.get(url_col)) if url_col else None,
                "memorization_type": mem_type,
                "extra": json.dumps(extra, ensure_ascii=False, default=str) if extra else None,
                "source_file": str(path.resolve()),
                "ingested_at": now,
            }
        )
    return out


def _check_ids(raw: RawRows, path: Path, id_col: str) -> None:
    seen: dict[str, str] = {}
    repeats: dict[str, list[str]] = {}
    for row, where in zip(raw.rows, raw.locations, strict=True):
        value = row.get(id_col)
        key = "" if value is None else str(value).strip()
        if not key:
            raise _fail(path, where, f"empty id in column {id_col!r}", hint="every row needs an id, or pass --id-column")
        if key in seen:
            repeats.setdefault(key, [seen[key]]).append(where)
        else:
            seen[key] = where
    if repeats:
        shown = "; ".join(f"{k!r} at {', '.join(v)}" for k, v in list(repeats.items())[:5])
        more = f" (and {len(repeats) - 5} more)" if len(repeats) > 5 else ""
        raise _fail(
            path, None, f"{len(repeats)} duplicated id(s) in column {id_col!r}: {shown}{more}",
            hint="ids must be unique within a file; pass --id-column for another column",
        )


def ingest_prompts(
    ws: Workspace,
    path: str | os.PathLike[str],
    prompt_set: str | None = None,
    fmt: str = "auto",
    text_column: str | None = None,
    id_column: str | None = None,
) -> IngestReport:
    """Add the prompts of one file to the `prompts` table (one part; re-ingesting adds nothing).

    Args:
        ws: the workspace.
        path: a NeMo/COCO `;`-CSV, a Wen JSONL, a plain CSV or a Parquet file.
        prompt_set: the set name; defaults to the file name without extension.
        fmt: auto | nemo-csv | wen-jsonl | csv | parquet.
        text_column: the caption column, if not caption/text/prompt.
        id_column: the row id column, if not ""/Unnamed: 0/idx/id (else the 0-based row index).

    Returns:
        An IngestReport (inputs = rows in the file; written["prompts"] = new rows).

    Raises:
        InputError: the file is missing or malformed (the message names the file, line and problem).
    """
    path = Path(path)
    raw = read_prompt_file(path, fmt)
    prompt_set = prompt_set or path.stem
    if not prompt_set.strip():
        raise InputError("the prompt set name is empty", hint="pass --set NAME")
    rows = prompt_rows(raw, path, prompt_set, text_column=text_column, id_column=id_column)
    report = IngestReport(source=str(path), kind="prompts", inputs=len(rows), prompt_set=prompt_set)
    config = {"path": str(path.resolve()), "prompt_set": prompt_set, "format": raw.fmt,
              "text_column": text_column, "id_column": id_column}
    with ws.run("ingest prompts", config) as run:
        report.run_id = run.run_id
        written = ws.write("prompts", rows)
    report.add_written("prompts", written)
    report.already_stored = len(rows) - written
    types: dict[str, int] = {}
    for row in rows:
        if row["memorization_type"]:
            types[row["memorization_type"]] = types.get(row["memorization_type"], 0) + 1
    if types:
        report.note("memorization types: " + ", ".join(f"{k} {v}" for k, v in sorted(types.items())))
    report.note(f"format {raw.fmt}")
    return report


def ingest_reference_prompts(ws: Workspace, reference_dir: str | os.PathLike[str]) -> list[IngestReport]:
    """Ingest the four shared reference prompt files as sets memorized, unmemorized, additional, coco.

    Raises:
        InputError: reference_dir lacks one of the files.
    """
    ref = Path(reference_dir)
    missing = [name for name in REFERENCE_PROMPT_FILES.values() if not (ref / name).is_file()]
    if missing:
        raise InputError(f"{ref} lacks reference prompt file(s) {missing}",
                         hint="point at the shared data/reference directory")
    return [ingest_prompts(ws, ref / name, prompt_set=set_name) for set_name, name in REFERENCE_PROMPT_FILES.items()]
