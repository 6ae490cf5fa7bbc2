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


def _jsonable(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return value


def render_table(table: pa.Table, max_rows: int = 200) -> str:
    """Plain fixed-width text table (no rich: fast, stable, easy to assert in tests)."""
    cols = table.column_names
    rows = table.slice(0, max_rows).to_pylist()
    cells = [[("" if r[c] is None else str(r[c])) for c in cols] for r in rows]
    widths = [max([len(c)] + [min(len(row[i]), 80) for row in cells]) for i, c in enumerate(cols)]
    def fmt(values: list[str]) -> str:
        return "  ".join(v[:80].ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()
    lines = [fmt(cols), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells]
    if table.num_rows > max_rows:
        lines.append(f"... {table.num_rows - max_rows} more row(s); use --format csv/json or -o FILE for all")
    return "\n".join(lines)


def emit(table: pa.Table, fmt: OutputFormat = OutputFormat.table, output: Path | None = None) -> None:
    """Write rows in the chosen format to `output` or stdout.

    Raises:
        InputError: parquet was asked for without an output file.
    """
    fmt = OutputFormat(fmt)
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
        pacsv.write_csv(table, buf)
        text = buf.getvalue().decode("utf-8")
    elif fmt is OutputFormat.json:
        rows = [{k: _jsonable(v) for k, v in r.items()} for r in table.to_pylist()]
        text = json.dumps(rows, indent=2, default=str) + "\n"
    else:
        text = "".join(json.dumps({k: _jsonable(v) for k, v in r.items()}, default=str) + "\n" for r in table.to_pylist())
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
            default=OutputFormat.table,
            annotation=Annotated[OutputFormat, typer.Option("--format", "-f", help="How to print the rows.")],
        ),
        inspect.Parameter(
            "output_path",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[Path | None, typer.Option("--output", "-o", help="Write the rows to this file instead of stdout.")],
        ),
    ]

    @functools.wraps(func)
    def wrapper(*args: Any, output_format: OutputFormat = OutputFormat.table, output_path: Path | None = None, **kwargs: Any) -> None:
        result = func(*args, **kwargs)
        if result is not None:
            emit(result, output_format, output_path)

    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), *extra])  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
