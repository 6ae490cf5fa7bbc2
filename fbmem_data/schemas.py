"""Table schemas from schemas/*.json, and the check every write goes through.

A schema file looks like::

    {"table": "prompts", "version": 1, "description": "...",
     "primary_key": ["prompt_id"],
     "columns": [{"name": "prompt_id", "type": "string", "nullable": false,
                  "enum": null, "description": "..."}, ...]}

Column types: string, json (a string holding JSON), binary, bool, int8, int16, int32, int64,
float32, float64, timestamp (UTC, microseconds), list<T> for any scalar T above.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from fbmem_data.errors import SchemaError
from fbmem_data.resources import schemas_dir

_SCALAR_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "json": pa.string(),
    "binary": pa.binary(),
    "bool": pa.bool_(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


def arrow_type(type_name: str) -> pa.DataType:
    if type_name in _SCALAR_TYPES:
        return _SCALAR_TYPES[type_name]
    if type_name.startswith("list<") and type_name.endswith(">"):
        return pa.list_(arrow_type(type_name[5:-1]))
    raise SchemaError(f"unknown column type {type_name!r} in a schema file")


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool = True
    enum: tuple[str, ...] | None = None
    description: str = ""

    @property
    def arrow_type(self) -> pa.DataType:
        return arrow_type(self.type)


@dataclass(frozen=True)
class TableSchema:
    table: str
    version: int
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    description: str = ""
    path: Path | None = field(default=None, compare=False)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def arrow_schema(self) -> pa.Schema:
        fields = [pa.field(c.name, c.arrow_type, nullable=c.nullable) for c in self.columns]
        meta = {b"fbmem.table": self.table.encode(), b"fbmem.schema_version": str(self.version).encode()}
        return pa.schema(fields, metadata=meta)

    def empty(self) -> pa.Table:
        return self.arrow_schema().empty_table()

    def conform(self, data: Any) -> pa.Table:
        """Check rows against this schema and return them as an Arrow table in schema order.

        Args:
            data: a pyarrow Table, a polars DataFrame, or a list of row dicts.

        Returns:
            A pyarrow Table with exactly the schema's columns, types and metadata.

        Raises:
            SchemaError: a column is missing or unknown, a value cannot be cast to the column type,
                a non-nullable column holds nulls, a value is outside its enum, a JSON column holds
                invalid JSON, or the primary key repeats within the rows.
        """
        table = _to_arrow(data, self)
        names = set(table.column_names)
        missing = [c.name for c in self.columns if c.name not in names and not c.nullable]
        unknown = sorted(names - set(self.column_names))
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing required column(s) {missing}")
            if unknown:
                parts.append(f"unknown column(s) {unknown}")
            raise SchemaError(
                f"rows for table '{self.table}' do not match schemas/{self.table}.json (v{self.version}): "
                + "; ".join(parts),
                hint=f"expected columns: {self.column_names}",
            )
        arrays = []
        for col in self.columns:
            if col.name in names:
                arr = table.column(col.name)
                try:
                    arr = arr.cast(col.arrow_type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                    raise SchemaError(
                        f"table '{self.table}', column '{col.name}': cannot store {arr.type} as {col.type}: {exc}"
                    ) from exc
            else:
                arr = pa.nulls(table.num_rows, type=col.arrow_type)
            _check_column(self.table, col, arr)
            arrays.append(arr)
        out = pa.Table.from_arrays(arrays, schema=self.arrow_schema())
        self._check_primary_key(out)
        return out

    def _check_primary_key(self, table: pa.Table) -> None:
        if not self.primary_key or table.num_rows < 2:
            return
        keys = table.select(list(self.primary_key))
        distinct = keys.group_by(list(self.primary_key)).aggregate([]).num_rows
        if distinct != table.num_rows:
            raise SchemaError(
                f"table '{self.table}': {table.num_rows - distinct} row(s) repeat the primary key "
                f"{list(self.primary_key)} within one write"
            )


def _to_arrow(data: Any, schema: TableSchema) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, list):
        if not data:
            return schema.empty()
        present = {k for row in data for k in row}
        extra = sorted(present - set(schema.column_names))
        if extra:
            raise SchemaError(f"rows for table '{schema.table}' have unknown column(s) {extra}")
        try:
            return pa.table(
                {
                    c.name: pa.array([row.get(c.name) for row in data], type=c.arrow_type)
                    for c in schema.columns
                    if c.name in present
                }
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise SchemaError(f"rows for table '{schema.table}' cannot be converted: {exc}") from exc
    to_arrow = getattr(data, "to_arrow", None)  # polars DataFrame
    if callable(to_arrow):
        return to_arrow()
    raise SchemaError(f"cannot write {type(data).__name__} to table '{schema.table}'")


def _check_column(table: str, col: Column, arr: pa.ChunkedArray | pa.Array) -> None:
    nulls = arr.null_count
    if nulls and not col.nullable:
        raise SchemaError(f"table '{table}', column '{col.name}': {nulls} null value(s) in a required column")
    if col.enum is not None and len(arr) - nulls:
        valid = pc.is_in(arr, value_set=pa.array(list(col.enum), type=col.arrow_type))
        # is_in says false (not null) for a null, so nulls are excluded explicitly: they are checked above
        bad = pc.filter(arr, pc.and_(pc.is_valid(arr), pc.invert(valid)))
        if len(bad):
            shown = sorted({str(v) for v in bad.to_pylist()})[:5]
            raise SchemaError(
                f"table '{table}', column '{col.name}': value(s) {shown} not in {list(col.enum)}"
            )
    if col.type == "json":
        for value in arr.to_pylist():
            if value is None:
                continue
            try:
                json.loads(value)
            except ValueError as exc:
                raise SchemaError(
                    f"table '{table}', column '{col.name}': not valid JSON: {value[:80]!r}"
                ) from exc


def _parse(path: Path) -> TableSchema:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        columns = tuple(
            Column(
                name=c["name"],
                type=c["type"],
                nullable=bool(c.get("nullable", True)),
                enum=tuple(c["enum"]) if c.get("enum") else None,
                description=c.get("description", ""),
            )
            for c in raw["columns"]
        )
        schema = TableSchema(
            table=raw["table"],
            version=int(raw["version"]),
            columns=columns,
            primary_key=tuple(raw.get("primary_key", [])),
            description=raw.get("description", ""),
            path=path,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SchemaError(f"schema file {path} is malformed: {exc}") from exc
    if schema.table != path.stem:
        raise SchemaError(f"schema file {path} names table '{schema.table}', expected '{path.stem}'")
    for col in schema.columns:
        arrow_type(col.type)
    unknown_pk = [k for k in schema.primary_key if k not in schema.column_names]
    if unknown_pk:
        raise SchemaError(f"schema file {path}: primary key column(s) {unknown_pk} are not columns")
    return schema


@cache
def all_schemas() -> dict[str, TableSchema]:
    return {p.stem: _parse(p) for p in sorted(schemas_dir().glob("*.json"))}


def get_schema(table: str) -> TableSchema:
    schemas = all_schemas()
    if table not in schemas:
        raise SchemaError(f"no schema for table '{table}'", hint=f"known tables: {sorted(schemas)}")
    return schemas[table]
