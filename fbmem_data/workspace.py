"""A workspace: Parquet tables, a content-addressed image store and a DuckDB catalog.

Layout::

    WORKSPACE/
      fbmem.json                  marker: format version
      fbmem.duckdb                catalog: views over the Parquet parts + the sql/ views
      tables/<name>/part-*.parquet
      images/ab/abcdef….png|jpg    original bytes, named by sha256

Writes are append-only Parquet parts, each written to a temporary file and renamed into place,
so a killed process never leaves a half-written part behind (readers glob only `part-*.parquet`).
Queries run in an in-memory DuckDB connection that defines the same views, so fbmem never holds
a lock on the catalog file that a user's `duckdb WORKSPACE/fbmem.duckdb` shell may have open.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from fbmem_data.errors import QueryError, SchemaError, WorkspaceError
from fbmem_data.ids import image_id_from_bytes
from fbmem_data.resources import sql_dir
from fbmem_data.schemas import TableSchema, all_schemas, get_schema

if TYPE_CHECKING:
    import duckdb
    import polars as pl

    from fbmem_data.runs import RunRecorder

WORKSPACE_FORMAT = 1
MARKER = "fbmem.json"
CATALOG = "fbmem.duckdb"
ENV_VAR = "FBMEM_WORKSPACE"
EMPTY_PART = "part-00000000000000000000-empty.parquet"
_PARAM_RE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

OnConflict = Literal["skip", "error", "append"]
# What a workspace folder holds besides the marker: enough of it means a damaged workspace, not a stranger's folder.
_WORKSPACE_ENTRIES = ("tables", "images", CATALOG)


def _marker_problem(root: Path) -> str | None:
    """Why `root/fbmem.json` is not a valid marker (None if it is valid or absent)."""
    marker = root / MARKER
    if not marker.exists():
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        return f"{marker} is damaged ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    if not isinstance(data, dict) or "format" not in data:
        return f"{marker} is damaged (expected an object with a format field, got {json.dumps(data)[:60]})"
    return None


def _looks_like_workspace(root: Path) -> bool:
    return any((root / name).exists() for name in _WORKSPACE_ENTRIES)


def _repair_hint(root: Path) -> str:
    return f"run `fbmem init --repair {root}` (rewrites {MARKER}; tables and images are kept)"


def _atomic_write_bytes(path: Path, data: bytes, fsync: bool = True) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def _table_lock(tdir: Path) -> Iterator[None]:
    """An exclusive advisory lock on a table directory (POSIX flock; a no-op where there is none).

    It orders writers on one machine; on network file systems without flock support it does not.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock
        yield
        return
    with open(tdir / ".write.lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _schema_version(part: Path) -> str | None:
    try:
        meta = pq.read_schema(part).metadata or {}
    except (OSError, pa.ArrowException):
        return None
    value = meta.get(b"fbmem.schema_version")
    return value.decode() if value else None


def _older_schema(stored: str | None, current: int) -> bool:
    """True when a part's schema version is below `current` (never downgrade a newer fbmem's part)."""
    try:
        return stored is None or int(stored) < current
    except ValueError:
        return True


def _mark_json(table: pa.Table, types: list[Any]) -> pa.Table:
    """Arrow has no JSON type: mark DuckDB JSON columns in the field metadata (output writes them as objects)."""
    flags = [str(t) == "JSON" for t in types]
    if not any(flags) or len(flags) != table.num_columns:
        return table
    fields = [f.with_metadata({**(f.metadata or {}), b"fbmem.json": b"1"}) if flag else f
              for f, flag in zip(table.schema, flags, strict=True)]
    return table.cast(pa.schema(fields, metadata=table.schema.metadata))


def _sql_quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _number(name: str, value: Any, kind: type) -> float:
    """A view variable's value as a number, or a QueryError naming it."""
    if isinstance(value, bool):
        raise QueryError(f"parameter {name} must be a number, got {value!r}")
    try:
        number = kind(value) if kind is float else _whole(value)
    except (TypeError, ValueError):
        raise QueryError(f"parameter {name} must be a number, got {value!r}", hint=f"-p {name} {_EXAMPLES[name]}") from None
    if number != number:  # NaN
        raise QueryError(f"parameter {name} must be a number, got {value!r}", hint=f"-p {name} {_EXAMPLES[name]}")
    return number


def _whole(value: Any) -> int:
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(value)
        return int(value)
    return int(str(value).strip())


_EXAMPLES = {"tau": "0.8", "k": "5"}


def check_view_params(params: Mapping[str, Any]) -> None:
    """Check the values of the variables that the shipped views read (the views cannot say why a value
    is unusable; a wrong tau would otherwise give a silently different table).

    Raises:
        QueryError: a name that is not an identifier, tau outside [0, 1] or not a number, k not a
            positive whole number.
    """
    for name in params:
        if not isinstance(name, str) or not _IDENT_RE.fullmatch(name):
            raise QueryError(f"parameter name {name!r} is not an identifier", hint="use letters, digits and _, e.g. tau")
    if params.get("tau") is not None:
        tau = _number("tau", params["tau"], float)
        if not 0.0 <= tau <= 1.0:
            raise QueryError(f"tau must lie in [0, 1], got {params['tau']!r}", hint="-p tau 0.8")
    if params.get("k") is not None and _number("k", params["k"], int) < 1:
        raise QueryError(f"k must be at least 1, got {params['k']!r}", hint="-p k 5")


class CatalogWarning(UserWarning):
    """The DuckDB catalog file names another workspace's files and could not be rewritten."""


def _is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C or SIGTERM, also when DuckDB caught it inside a query and raised its own error."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    import duckdb

    return isinstance(exc, getattr(duckdb, "InterruptException", ())) or (
        isinstance(exc, RuntimeError) and str(exc).strip() == "Query interrupted"
    )


class Workspace:
    """A directory of Parquet tables that DuckDB and Polars read directly."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._con: duckdb.DuckDBPyConnection | None = None

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def init(cls, path: str | os.PathLike[str], *, repair: bool = False) -> Workspace:
        """Create (or repair) a workspace at `path` and return it.

        Args:
            path: the folder.
            repair: rewrite a missing or damaged fbmem.json in a folder that holds a workspace's
                tables/images/catalog (the damaged marker is kept as fbmem.json.damaged-<time>).

        Raises:
            WorkspaceError: `path` exists and is a non-empty directory that is not a workspace, or
                its fbmem.json is missing/damaged and repair is off.
        """
        root = Path(path)
        if root.exists() and not root.is_dir():
            raise WorkspaceError(f"cannot create a workspace at {root}: it is a file")
        if root.is_dir():
            cls._repair_marker(root, repair)
        if root.is_dir() and not (root / MARKER).exists() and any(root.iterdir()):
            raise WorkspaceError(
                f"{root} is a non-empty directory that is not an fbmem workspace",
                hint="choose an empty or new directory",
            )
        root.mkdir(parents=True, exist_ok=True)
        marker = root / MARKER
        if not marker.exists():
            _atomic_write_bytes(marker, json.dumps({"format": WORKSPACE_FORMAT}).encode())
        ws = cls(root)
        ws.ensure_tables()
        ws.refresh_catalog(strict=True)
        return ws

    @staticmethod
    def _repair_marker(root: Path, repair: bool) -> None:
        """Handle a missing or damaged marker in an existing folder before init."""
        problem = _marker_problem(root)
        missing = not (root / MARKER).exists() and _looks_like_workspace(root)
        if problem is None and not missing:
            return
        if not repair:
            what = problem or f"{root} holds a workspace's tables but no {MARKER}"
            raise WorkspaceError(what, hint=_repair_hint(root))
        if problem is not None:
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            os.replace(root / MARKER, root / f"{MARKER}.damaged-{stamp}")
        _atomic_write_bytes(root / MARKER, json.dumps({"format": WORKSPACE_FORMAT}).encode())

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None) -> Workspace:
        """Open an existing workspace; `path` defaults to $FBMEM_WORKSPACE.

        Raises:
            WorkspaceError: no path given, or the directory is not an initialised workspace.
        """
        if path is None:
            path = os.environ.get(ENV_VAR)
        if not path:
            raise WorkspaceError(
                "no workspace given", hint=f"pass -w/--workspace DIR or set {ENV_VAR}; create one with `fbmem init DIR`"
            )
        root = Path(path)
        marker = root / MARKER
        if not marker.exists():
            if root.is_dir() and _looks_like_workspace(root):
                raise WorkspaceError(f"{root} has no {MARKER} (removed?) but holds a workspace", hint=_repair_hint(root))
            raise WorkspaceError(f"{root} is not an fbmem workspace (no {MARKER})", hint=f"run `fbmem init {root}`")
        problem = _marker_problem(root)
        if problem is not None:
            raise WorkspaceError(problem, hint=_repair_hint(root))
        fmt = json.loads(marker.read_text(encoding="utf-8")).get("format")
        if fmt != WORKSPACE_FORMAT:
            raise WorkspaceError(f"{root} has workspace format {fmt}; this fbmem reads format {WORKSPACE_FORMAT}")
        ws = cls(root)
        ws.ensure_tables()
        ws._check_catalog_root()
        return ws

    @classmethod
    def open_or_init(cls, path: str | os.PathLike[str]) -> Workspace:
        return cls.open(path) if (Path(path) / MARKER).exists() else cls.init(path)

    # -- layout --------------------------------------------------------------------------------
    @property
    def tables_dir(self) -> Path:
        return self.root / "tables"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def catalog_path(self) -> Path:
        return self.root / CATALOG

    def table_dir(self, table: str) -> Path:
        return self.tables_dir / table

    def table_glob(self, table: str) -> str:
        return str(self.table_dir(table) / "part-*.parquet")

    def parts(self, table: str) -> list[Path]:
        return sorted(self.table_dir(table).glob("part-*.parquet"))

    def ensure_tables(self) -> None:
        """Give every schema's table a directory with an empty part, so its glob always matches.

        The empty part carries the current schema: when a schema gained columns (a newer fbmem on an
        older workspace), it is rewritten, so the views see the new columns (NULL in the older parts).
        """
        for name, schema in all_schemas().items():
            tdir = self.table_dir(name)
            empty = tdir / EMPTY_PART
            if not empty.exists():
                tdir.mkdir(parents=True, exist_ok=True)
                self._write_part(tdir, EMPTY_PART, schema.empty())
            elif _older_schema(_schema_version(empty), schema.version):
                self._write_part(tdir, EMPTY_PART, schema.empty())

    # -- writing -------------------------------------------------------------------------------
    def write(
        self,
        table: str,
        rows: Any,
        *,
        on_conflict: OnConflict = "skip",
        part_name: str | None = None,
        replace_part: bool = False,
    ) -> int:
        """Append rows to a table as one new Parquet part, after checking them against its schema.

        Args:
            table: table name (a file in schemas/).
            rows: pyarrow Table, polars DataFrame or list of dicts.
            on_conflict: "skip" drops rows whose primary key is already stored; "error" raises on
                them; "append" writes without looking (the caller guarantees new keys).
            part_name: a deterministic part name (e.g. a shard id) instead of a fresh unique one.
            replace_part: with part_name, atomically replace that part if it exists (used for the
                runs table, whose row is rewritten when the run ends).

        Returns:
            The number of rows written.

        Raises:
            SchemaError: the rows do not match the schema, or conflict under on_conflict="error".
        """
        schema = get_schema(table)
        data = schema.conform(rows)
        if data.num_rows == 0:
            return 0
        tdir = self.table_dir(table)
        tdir.mkdir(parents=True, exist_ok=True)
        checks_keys = on_conflict != "append" and bool(schema.primary_key) and not replace_part
        # The key check and the part write are one step under a per-table lock, so two processes
        # writing the same keys (two pairing runs on one workspace) cannot both store them.
        with _table_lock(tdir) if checks_keys else contextlib.nullcontext():
            if checks_keys:
                data = self._drop_stored_keys(schema, data, on_conflict)
                if data.num_rows == 0:
                    return 0
            return self._write_new_part(tdir, table, part_name, replace_part, data)

    def _write_new_part(self, tdir: Path, table: str, part_name: str | None, replace_part: bool, data: pa.Table) -> int:
        if part_name is None:
            part_name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        else:
            if not part_name.startswith("part-"):
                part_name = f"part-{part_name}"
            if not part_name.endswith(".parquet"):
                part_name += ".parquet"
            if (tdir / part_name).exists() and not replace_part:
                raise WorkspaceError(f"part {part_name} of table '{table}' already exists")
        self._write_part(tdir, part_name, data)
        return data.num_rows

    def _write_part(self, tdir: Path, part_name: str, data: pa.Table) -> None:
        tmp = tdir / f".tmp-{uuid.uuid4().hex}.parquet"
        try:
            pq.write_table(data, tmp, compression="zstd")
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, tdir / part_name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _drop_stored_keys(self, schema: TableSchema, data: pa.Table, on_conflict: OnConflict) -> pa.Table:
        import duckdb

        keys = list(schema.primary_key)
        con = duckdb.connect()
        try:
            return self._drop_stored_keys_with(con, schema, data, on_conflict, keys)
        except duckdb.Error as exc:
            raise self.damaged_part_error(exc) or QueryError(f"cannot read table '{schema.table}': {exc}") from exc
        finally:
            con.close()

    def _drop_stored_keys_with(
        self, con: duckdb.DuckDBPyConnection, schema: TableSchema, data: pa.Table, on_conflict: OnConflict, keys: list[str]
    ) -> pa.Table:
        con.register("new_rows", data)
        key_sql = ", ".join(f'"{k}"' for k in keys)
        glob = _sql_quote(self.table_glob(schema.table))
        stored = f"(SELECT DISTINCT {key_sql} FROM read_parquet({glob}, union_by_name=true))"
        rel = con.sql(f"SELECT n.* FROM new_rows n SEMI JOIN {stored} s USING ({key_sql})")
        dup_count = rel.aggregate("count(*)").fetchall()[0][0]
        if dup_count == 0:
            return data
        if on_conflict == "error":
            raise SchemaError(f"table '{schema.table}': {dup_count} row(s) repeat a stored primary key {keys}")
        kept = con.sql(f"SELECT n.* FROM new_rows n ANTI JOIN {stored} s USING ({key_sql})").to_arrow_table()
        return schema.conform(kept)

    # -- images --------------------------------------------------------------------------------
    def store_image(self, data: bytes, ext: str, *, fsync: bool = True) -> tuple[str, Path]:
        """Store image bytes content-addressed; returns (image_id, path). Idempotent.

        fsync=False skips the per-file fsync (the write is still atomic): for bulk writers that
        flush once per batch (os.sync) before committing the batch's rows.
        """
        image_id = image_id_from_bytes(data)
        ext = ext.lower().lstrip(".") or "bin"
        path = self.images_dir / image_id[:2] / f"{image_id}.{ext}"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write_bytes(path, data, fsync=fsync)
        return image_id, path

    def image_path(self, image_id: str) -> Path:
        """Path of a stored image.

        Raises:
            WorkspaceError: no stored file has that id.
        """
        matches = sorted((self.images_dir / image_id[:2]).glob(f"{image_id}.*"))
        if not matches:
            raise WorkspaceError(f"image {image_id} is not in the image store of {self.root}")
        return matches[0]

    # -- querying ------------------------------------------------------------------------------
    def view_statements(self) -> list[tuple[str, str]]:
        """(origin, SQL) for every view: one per table, then each sql/*.sql file in name order."""
        stmts: list[tuple[str, str]] = []
        for name in all_schemas():
            glob = _sql_quote(self.table_glob(name))
            stmts.append(
                (f"table {name}", f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet({glob}, union_by_name=true)")
            )
        # The workspace's absolute root, for views that give image paths a tool outside fbmem can open
        # (images.store_path is relative); rewritten with the catalog when the workspace moves.
        stmts.append(
            ("workspace root", f"CREATE OR REPLACE MACRO fbmem_workspace_root() AS {_sql_quote(str(self.root))}")
        )
        for path in sorted(sql_dir().glob("*.sql")):
            stmts.append((f"sql/{path.name}", path.read_text(encoding="utf-8")))
        return stmts

    def _define_views(self, con: duckdb.DuckDBPyConnection) -> None:
        import duckdb

        self._check_part_owners(con)
        for origin, stmt in self.view_statements():
            try:
                con.execute(stmt)
            except duckdb.Error as exc:
                raise self.damaged_part_error(exc) or QueryError(f"{origin} does not compile: {exc}") from exc

    def damaged_part_error(self, exc: BaseException) -> WorkspaceError | None:
        """A WorkspaceError naming the part a DuckDB/Arrow error is about, if it names one."""
        text = str(exc)
        match = re.search(re.escape(str(self.tables_dir)) + r"""/[^'"\s]+?\.parquet""", text)
        if match is None:
            return None
        rel = Path(match.group(0)).relative_to(self.root).as_posix()
        first = next((line for line in text.strip().splitlines() if line.strip()), text)
        return WorkspaceError(
            f"damaged table part {rel}: {first.strip()}",
            hint=f"run `fbmem check -w {self.root}` to list the bad parts, and `--repair` to move them aside",
        )

    def _check_part_owners(self, con: duckdb.DuckDBPyConnection) -> None:
        """Refuse a part that fbmem wrote for another table (a misplaced copy): its rows would be
        counted in the wrong table. One pass over the footers, in DuckDB."""
        import duckdb

        # The file list is taken first and passed as is: a part renamed into place meanwhile by
        # another process is simply not looked at, rather than seen without its metadata.
        paths = [p for name in all_schemas() for p in self.parts(name)]
        if not paths:
            return
        files = "[" + ", ".join(_sql_quote(str(p)) for p in paths) + "]"
        try:
            rows = con.execute(
                f"SELECT file_name, decode(value) FROM parquet_kv_metadata({files}) WHERE decode(key) = 'fbmem.table'"
            ).fetchall()
        except duckdb.Error as exc:
            raise self.damaged_part_error(exc) or QueryError(f"cannot read the table parts: {exc}") from exc
        hint = f"run `fbmem check -w {self.root}` to list the bad parts, and `--repair` to move them aside"
        owners = {Path(file_name): owner for file_name, owner in rows}
        for path in paths:
            owner = owners.get(path)
            rel = path.relative_to(self.root).as_posix()
            if owner is None:
                raise WorkspaceError(f"table part {rel} was not written by fbmem (no fbmem.table metadata)", hint=hint)
            if path.parent.name != owner:
                raise WorkspaceError(f"table part {rel} holds rows of table '{owner}'", hint=hint)

    def connection(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with every view of this workspace defined."""
        if self._con is None:
            import duckdb

            con = duckdb.connect()
            self._define_views(con)
            self._con = con
        return self._con

    def refresh_catalog(self, strict: bool = False) -> bool:
        """Rewrite the views in fbmem.duckdb with this workspace's paths; record them in fbmem.json.

        Returns False (strict=False) when the file could not be rewritten: another process holds it
        (a DuckDB shell) or it is not a DuckDB database.

        Raises:
            WorkspaceError: strict=True and the catalog could not be rewritten (the message says why).
        """
        import duckdb

        try:
            con = duckdb.connect(str(self.catalog_path))
        except duckdb.Error as exc:
            if strict:
                raise self._catalog_error(exc) from exc
            return False
        try:
            self._define_views(con)
        finally:
            con.close()
        self._write_marker(catalog_root=str(self.root))
        return True

    def _catalog_error(self, exc: Exception) -> WorkspaceError:
        text = str(exc).strip("'\"")
        if "lock" in text.lower():
            return WorkspaceError(
                f"cannot rewrite the catalog {self.catalog_path}: another process has it open ({text.splitlines()[0]})",
                hint="close the DuckDB shell (or program) that has it open, then run `fbmem init` again",
            )
        return WorkspaceError(
            f"cannot rewrite the catalog {self.catalog_path}: {text.splitlines()[0] if text else exc!r}",
            hint=f"delete or rename {self.catalog_path} (it only holds views; fbmem rebuilds it), then run `fbmem init {self.root}`",
        )

    def _read_marker(self) -> dict[str, Any]:
        try:
            data = json.loads((self.root / MARKER).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_marker(self, **fields: Any) -> None:
        data = {**self._read_marker(), **fields}
        data.setdefault("format", WORKSPACE_FORMAT)
        with contextlib.suppress(OSError):  # a read-only workspace: the check runs again next time
            _atomic_write_bytes(self.root / MARKER, json.dumps(data).encode())

    def _check_catalog_root(self) -> None:
        """A copied or moved workspace's catalog still names the original's Parquet files: rewrite it,
        or warn when that is not possible (a DuckDB shell holds it), so it never silently reads another
        workspace. fbmem's own queries never read the catalog file; only the DuckDB shell does."""
        recorded = self._read_marker().get("catalog_root")
        if recorded == str(self.root):
            return
        if self.refresh_catalog():
            return
        if recorded is None:
            return  # a workspace from before the root was recorded, its catalog busy: nothing known to be wrong
        import warnings

        warnings.warn(
            f"the catalog {self.catalog_path} was written for the workspace at {recorded} and could not be "
            f"rewritten (in use, or damaged): `duckdb {self.catalog_path}` reads that workspace's files. "
            f"Close the DuckDB shell and run `fbmem init {self.root}`.",
            CatalogWarning,
            stacklevel=3,
        )

    def sql(
        self,
        query: str,
        params: Mapping[str, Any] | None = None,
        *,
        output: Literal["arrow", "polars", "pandas"] = "arrow",
    ) -> Any:
        """Run a query against the workspace's views.

        Args:
            query: DuckDB SQL. `$name` placeholders take values from params.
            params: values for `$name` placeholders; every entry is also set as a DuckDB variable,
                which parameterised views read (e.g. `tau` for fbmem_labels). Values keep their
                type (the string '0012' stays a string); the views cast the variables they need
                as numbers. Names must be identifiers; tau must lie in [0, 1], k be a positive
                whole number, scoring_id / utility_id name a stored configuration.
            output: "arrow" (pyarrow.Table), "polars" (polars.DataFrame) or "pandas" (pandas.DataFrame).

        Raises:
            QueryError: DuckDB rejected the query, or a parameter is unusable (see params).
        """
        import duckdb

        if output not in ("arrow", "polars", "pandas"):
            raise QueryError(f"output must be arrow, polars or pandas, not {output!r}")
        con = self.connection()
        params = dict(params or {})
        check_view_params(params)
        used = set(_PARAM_RE.findall(query))
        try:
            self._check_configuration_ids(con, params)
            for name, value in params.items():
                con.execute(f"SET VARIABLE {name} = ?", [value])
            bound = {k: v for k, v in params.items() if k in used}
            missing = used - set(params)
            if missing:
                raise QueryError(f"query uses parameter(s) {sorted(missing)} with no value", hint="pass -p NAME VALUE")
            rel = con.sql(query, params=bound) if bound else con.sql(query)
            table = _mark_json(rel.to_arrow_table(), rel.types) if rel is not None else pa.table({})
        except duckdb.Error as exc:
            raise self.damaged_part_error(exc) or QueryError(f"query failed: {exc}") from exc
        finally:
            for name in params:
                with contextlib.suppress(duckdb.Error):
                    con.execute(f"RESET VARIABLE {name}")
        if output == "polars":
            import polars as pl

            return pl.from_arrow(table)
        if output == "pandas":
            return table.to_pandas()
        return table

    def _check_configuration_ids(self, con: duckdb.DuckDBPyConnection, params: Mapping[str, Any]) -> None:
        """An unknown scoring_id / utility_id would give empty tables that look like "nothing found"."""
        for name, table in (("scoring_id", "region_scores"), ("utility_id", "utility_scores")):
            value = params.get(name)
            if value is None:
                continue
            # The usual case (a stored id) stops at its first row; only a miss lists them all.
            if con.execute(f"SELECT 1 FROM {table} WHERE {name} = ? LIMIT 1", [str(value)]).fetchall():
                continue
            known = [r[0] for r in con.execute(f"SELECT DISTINCT {name} FROM {table} ORDER BY 1").fetchall()]
            if str(value) not in known:
                listed = ", ".join(known[:20]) + (f" ... ({len(known)} in all)" if len(known) > 20 else "")
                raise QueryError(
                    f"unknown {name} {value!r}",
                    hint=f"known: {listed}" if known else f"the workspace has no {table} yet",
                )

    def table(self, name: str) -> pl.LazyFrame:
        """A Polars LazyFrame over the table's Parquet parts."""
        import polars as pl

        get_schema(name)
        return pl.scan_parquet(self.table_glob(name), missing_columns="insert", extra_columns="ignore")

    def count(self, table: str) -> int:
        get_schema(table)
        return int(self.sql(f"SELECT count(*) AS n FROM {table}").column("n")[0].as_py())

    # -- runs ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def run(self, command: str, config: Mapping[str, Any] | None = None) -> Iterator[RunRecorder]:
        """Record a run in the `runs` table: a row at start (running) replaced at the end.

        Starting a run also marks runs of dead processes interrupted and removes their temp files;
        while it runs, SIGTERM (in the main thread) is handled like Ctrl-C."""
        from fbmem_data.procs import sigterm_as_interrupt
        from fbmem_data.runs import RunRecorder

        recorder = RunRecorder(self, command, dict(config or {}))
        with sigterm_as_interrupt():
            recorder.start()
            try:
                yield recorder
            except BaseException as exc:
                if _is_interrupt(exc):
                    recorder.finish("interrupted", error=str(exc))
                    if not isinstance(exc, KeyboardInterrupt):
                        # DuckDB turns a Ctrl-C/SIGTERM that lands inside a query into its own error
                        raise KeyboardInterrupt(str(exc)) from exc
                    raise
                recorder.finish("failed", error=str(exc))
                raise
            else:
                recorder.finish("ok")

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"
