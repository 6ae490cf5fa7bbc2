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


def _sql_quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def coerce_param(value: Any) -> Any:
    """CLI parameters arrive as strings: turn '0.8' into 0.8 and '3' into 3, leave other text."""
    if not isinstance(value, str):
        return value
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            continue
    return value


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
        ws.refresh_catalog()
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
        """Give every schema's table a directory with an empty part, so its glob always matches."""
        for name, schema in all_schemas().items():
            tdir = self.table_dir(name)
            empty = tdir / EMPTY_PART
            if not empty.exists():
                tdir.mkdir(parents=True, exist_ok=True)
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

    def refresh_catalog(self) -> bool:
        """Rewrite the views in fbmem.duckdb. Returns False if another process holds the file."""
        import duckdb

        try:
            con = duckdb.connect(str(self.catalog_path))
        except duckdb.IOException:
            return False
        try:
            self._define_views(con)
        finally:
            con.close()
        return True

    def sql(
        self,
        query: str,
        params: Mapping[str, Any] | None = None,
        *,
        output: Literal["arrow", "polars"] = "arrow",
    ) -> Any:
        """Run a query against the workspace's views.

        Args:
            query: DuckDB SQL. `$name` placeholders take values from params.
            params: values for `$name` placeholders; every entry is also set as a DuckDB variable,
                which parameterised views read (e.g. `tau` for fbmem_labels).
            output: "arrow" (pyarrow.Table) or "polars" (polars.DataFrame).

        Raises:
            QueryError: DuckDB rejected the query.
        """
        import duckdb

        con = self.connection()
        params = {k: coerce_param(v) for k, v in (params or {}).items()}
        used = set(_PARAM_RE.findall(query))
        try:
            for name, value in params.items():
                con.execute(f"SET VARIABLE {name} = ?", [value])
            bound = {k: v for k, v in params.items() if k in used}
            missing = used - set(params)
            if missing:
                raise QueryError(f"query uses parameter(s) {sorted(missing)} with no value", hint="pass -p NAME VALUE")
            rel = con.sql(query, params=bound) if bound else con.sql(query)
            table = rel.to_arrow_table() if rel is not None else pa.table({})
        except duckdb.Error as exc:
            raise self.damaged_part_error(exc) or QueryError(f"query failed: {exc}") from exc
        finally:
            for name in params:
                with contextlib.suppress(duckdb.Error):
                    con.execute(f"RESET VARIABLE {name}")
        if output == "polars":
            import polars as pl

            return pl.from_arrow(table)
        return table

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
                recorder.finish("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", error=str(exc))
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
