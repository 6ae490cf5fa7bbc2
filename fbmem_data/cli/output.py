"""Output options shared by every command that prints rows (one decorator, as sqlite-utils does)."""

from __future__ import annotations

import functools
import inspect
import json
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import pyarrow as pa
import typer

from fbmem_data.errors import InputError

F = TypeVar("F", bound=Callable[..., Any])


class OutputFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    jsonl = "jsonl"
    parquet = "parquet"


#: -o FILE without -f: the format from the file's extension.
EXTENSIONS = {".csv": OutputFormat.csv, ".json": OutputFormat.json, ".jsonl": OutputFormat.jsonl,
              ".ndjson": OutputFormat.jsonl, ".parquet": OutputFormat.parquet, ".pq": OutputFormat.parquet}
#: Field metadata that marks a column holding JSON text (set by Workspace.sql for DuckDB JSON columns).
JSON_FIELD_META = b"fbmem.json"


def _json_columns(table: pa.Table) -> set[str]:
    """String columns holding JSON text: DuckDB JSON columns, and the schemas' json columns by name
    (mitigation_params, config, ...), which the views pass on as text."""
    from fbmem_data.schemas import all_schemas

    named = {c.name for schema in all_schemas().values() for c in schema.columns if c.type == "json"}
    out = set()
    for f in table.schema:
        if not (pa.types.is_string(f.type) or pa.types.is_large_string(f.type)):
            continue
        if f.name in named or (f.metadata or {}).get(JSON_FIELD_META):
            out.add(f.name)
    return out


def _parse_json(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text  # not JSON after all: keep the text


def _jsonable(value: Any) -> Any:
    """A Python value from Arrow as JSON: timestamps ISO 8601, blobs base64, containers recursively."""
    import base64
    import datetime as dt
    import decimal

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (dt.date, dt.time, dt.datetime)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, float) and value != value:
        return None  # JSON has no NaN
    return value


def json_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: JSON text columns as objects (not strings of JSON), blobs base64."""
    json_cols = _json_columns(table)
    rows = table.to_pylist()
    return [{k: (_parse_json(v) if k in json_cols else _jsonable(v)) for k, v in r.items()} for r in rows]


def csv_table(table: pa.Table) -> pa.Table:
    """A table CSV can hold: lists, structs and maps as JSON text, blobs as base64 text."""
    import base64

    columns = []
    for col in table.columns:
        t = col.type
        if pa.types.is_nested(t):
            values = [None if v is None else json.dumps(_jsonable(v), separators=(",", ":")) for v in col.to_pylist()]
            col = pa.array(values, pa.string())
        elif pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
            col = pa.array([None if v is None else base64.b64encode(v).decode("ascii") for v in col.to_pylist()], pa.string())
        columns.append(col)
    return pa.table(columns, names=table.column_names)


def format_from_path(path: Path | None) -> OutputFormat:
    """The format for -o PATH given without -f: by extension, else the plain table."""
    if path is None:
        return OutputFormat.table
    return EXTENSIONS.get(path.suffix.lower(), OutputFormat.table)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"  # 0.26041666666666663 -> 0.260417; csv/json keep every digit
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return str(value)


def render_table(table: pa.Table, max_rows: int = 200) -> str:
    """Plain fixed-width text table (no rich: fast, stable, easy to assert in tests)."""
    cols = table.column_names
    rows = table.slice(0, max_rows).to_pylist()
    cells = [[_cell(r[c]) for c in cols] for r in rows]
    widths = [max([len(c)] + [min(len(row[i]), 80) for row in cells]) for i, c in enumerate(cols)]
    def fmt(values: list[str]) -> str:
        return "  ".join(v[:80].ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()
    lines = [fmt(cols), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells]
    if table.num_rows > max_rows:
        lines.append(f"... {table.num_rows - max_rows} more row(s); use --format csv/json or -o FILE for all")
    return "\n".join(lines)


def emit(table: pa.Table, fmt: OutputFormat | None = None, output: Path | None = None) -> None:
    """Write rows in the chosen format to `output` or stdout (fmt None: from output's extension).

    Raises:
        InputError: parquet was asked for without an output file.
    """
    fmt = format_from_path(output) if fmt is None else OutputFormat(fmt)
    if fmt is OutputFormat.parquet:
        if output is None:
            raise InputError("--format parquet needs -o/--output FILE")
        import pyarrow.parquet as pq

        pq.write_table(table, output)
        return
    if fmt is OutputFormat.table:
        text = render_table(table) + "\n"
    elif fmt is OutputFormat.csv:
        import io

        import pyarrow.csv as pacsv

        buf = io.BytesIO()
        pacsv.write_csv(csv_table(table), buf)
        text = buf.getvalue().decode("utf-8")
    elif fmt is OutputFormat.json:
        text = json.dumps(json_rows(table), indent=2, default=str) + "\n"
    else:
        text = "".join(json.dumps(r, default=str) + "\n" for r in json_rows(table))
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")


def output_options(func: F) -> F:
    """Add --format/-f and --output/-o to a command whose function returns a pyarrow Table."""
    sig = inspect.signature(func, eval_str=True)
    extra = [
        inspect.Parameter(
            "output_format",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                OutputFormat | None,
                typer.Option("--format", "-f", help="How to print the rows (default: from -o's extension, else table)."),
            ],
        ),
        inspect.Parameter(
            "output_path",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[Path | None, typer.Option("--output", "-o", help="Write the rows to this file instead of stdout.")],
        ),
    ]

    @functools.wraps(func)
    def wrapper(*args: Any, output_format: OutputFormat | None = None, output_path: Path | None = None, **kwargs: Any) -> None:
        result = func(*args, **kwargs)
        if result is not None:
            emit(result, output_format, output_path)

    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), *extra])  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
