"""`fbmem check`: verify a workspace's Parquet parts, and move the bad ones aside.

What a part must be: a readable Parquet file named `part-*.parquet` in `tables/<table>/`, whose
metadata names that table (`fbmem.table`), and whose columns are columns of the table's schema with
the schema's types (a part written by an older fbmem may lack nullable columns; readers fill
them with nulls). Anything else is reported:

- unreadable: the footer or, with deep=True, the data does not decode (a truncated copy, a
  killed `cp`, a disk error). Every query over the table fails on it.
- misplaced: a valid fbmem part of another table (its rows would be counted in the wrong table).
- schema: no fbmem metadata (not written by fbmem), a column of the wrong type, an unknown
  column, or a required column missing.
- stray: a file the tables' globs do not read (`foo.parquet`, `part-1.parquet.bak`) or a temp
  file (`.tmp-*`) left by a killed writer. Harmless to queries; reported so nothing hides there.
- stray_table: a folder under tables/ that no schema names.
- dangling (once the parts are sound): links, generations and ok fetches naming images that have
  no images row, and images rows whose stored file is gone: the trace of a deleted part or file.
  Not repairable here: run the command that wrote them again.

repair=True moves every reported file to `quarantine/<time>/tables/<table>/` (nothing is deleted)
so the remaining parts are consistent again; the rows in a quarantined part are gone from the
tables until the file is fixed and moved back.
"""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from fbmem_data.workspace import Workspace

QUARANTINE = "quarantine"


@dataclass
class PartProblem:
    table: str
    path: str  # relative to the workspace
    problem: str  # unreadable | misplaced | schema | stray | stray_table
    detail: str
    rows: int | None = None
    moved_to: str | None = None


@dataclass
class CheckReport:
    """Per table: good parts and their rows; every problem found (and where it was moved)."""

    root: str
    parts: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    problems: list[PartProblem] = field(default_factory=list)
    quarantine: str | None = None

    @property
    def ok(self) -> bool:
        """True when nothing is wrong any more (every bad file moved, nothing dangling)."""
        return all(p.moved_to is not None for p in self.problems)

    def to_table(self) -> pa.Table:
        import pyarrow as pa

        rows: list[dict[str, Any]] = []
        for table in sorted(self.parts):
            bad = [p for p in self.problems if p.table == table]
            rows.append(
                {
                    "table": table,
                    "parts": self.parts[table],
                    "rows": self.rows[table],
                    "problem": None,
                    "path": None,
                    "detail": None,
                    "moved_to": None,
                }
            )
            rows += [
                {
                    "table": table,
                    "parts": None,
                    "rows": p.rows,
                    "problem": p.problem,
                    "path": p.path,
                    "detail": p.detail,
                    "moved_to": p.moved_to,
                }
                for p in bad
            ]
        for p in self.problems:
            if p.table not in self.parts:
                rows.append(
                    {
                        "table": p.table,
                        "parts": None,
                        "rows": None,
                        "problem": p.problem,
                        "path": p.path,
                        "detail": p.detail,
                        "moved_to": p.moved_to,
                    }
                )
        schema = pa.schema(
            [
                ("table", pa.string()),
                ("parts", pa.int64()),
                ("rows", pa.int64()),
                ("problem", pa.string()),
                ("path", pa.string()),
                ("detail", pa.string()),
                ("moved_to", pa.string()),
            ]
        )
        return pa.Table.from_pylist(rows, schema=schema)


def open_for_check(path: str | Path | None) -> Workspace:
    """The workspace at `path` (or $FBMEM_WORKSPACE) with only its fbmem.json checked: unlike
    Workspace.open, nothing reads the table parts, which may be the damaged thing.

    Raises:
        WorkspaceError: no path, or no valid fbmem.json (the hint says how to repair it).
    """
    import os

    from fbmem_data.errors import WorkspaceError
    from fbmem_data.workspace import ENV_VAR, MARKER, Workspace, _marker_problem, _repair_hint

    path = path or os.environ.get(ENV_VAR)
    if not path:
        raise WorkspaceError("no workspace given", hint=f"pass -w/--workspace DIR or set {ENV_VAR}")
    root = Path(path)
    if not (root / MARKER).exists():
        raise WorkspaceError(f"{root} has no {MARKER}", hint=_repair_hint(root))
    problem = _marker_problem(root)
    if problem is not None:
        raise WorkspaceError(problem, hint=_repair_hint(root))
    return Workspace(root)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_part(path: Path, table: str, *, deep: bool = False) -> tuple[str | None, str, int | None]:
    """(problem or None, detail, rows) for one `part-*.parquet` file of `table`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fbmem_data.schemas import all_schemas

    try:
        meta = pq.read_metadata(path)
        arrow_schema = meta.schema.to_arrow_schema()
    except Exception as exc:  # pyarrow raises several types for a damaged file
        size = path.stat().st_size if path.exists() else 0
        return "unreadable", f"{_first_line(exc)} ({size} bytes)", None
    rows = meta.num_rows
    names = arrow_schema.metadata or {}
    owner = names.get(b"fbmem.table", b"").decode() or None
    if owner is None:
        return "schema", "not written by fbmem (no fbmem.table metadata); queries refuse it", rows
    if owner != table:
        where = f"tables/{owner}/" if owner in all_schemas() else "no table of this fbmem"
        return "misplaced", f"a part of table '{owner}' (belongs in {where})", rows
    expected = {c.name: c for c in all_schemas()[table].columns}
    unknown = [f.name for f in arrow_schema if f.name not in expected]
    wrong = [
        f"{f.name}: {f.type} (schema: {expected[f.name].type})"
        for f in arrow_schema
        if f.name in expected and not f.type.equals(expected[f.name].arrow_type)
    ]
    missing = [c.name for c in expected.values() if not c.nullable and c.name not in arrow_schema.names]
    issues = []
    if unknown:
        issues.append(f"unknown column(s) {unknown}")
    if wrong:
        issues.append("wrong type(s) " + "; ".join(wrong))
    if missing:
        issues.append(f"required column(s) {missing} missing")
    if issues:
        return "schema", ", ".join(issues), rows
    if deep:
        try:
            pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            return "unreadable", f"data does not decode: {_first_line(exc)}", rows
    return None, "", rows


def check_workspace(ws: Workspace, *, repair: bool = False, deep: bool = False) -> CheckReport:
    """Verify every file under `tables/`; with repair, move the bad ones to a quarantine folder.

    Args:
        ws: the workspace (opening it needs only a valid fbmem.json).
        repair: move unreadable, misplaced, schema-mismatched and stray files to
            `quarantine/<UTC time>/tables/<table>/`.
        deep: also decode every part's data (slow on big tables), not only its footer.

    Returns:
        A CheckReport: parts and rows per table, and each problem.
    """
    from fbmem_data.schemas import all_schemas

    report = CheckReport(root=str(ws.root))
    schemas = all_schemas()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    qroot = ws.root / QUARANTINE / stamp
    tables_dir = ws.tables_dir
    if tables_dir.is_dir():
        for tdir in sorted(p for p in tables_dir.iterdir() if p.is_dir() and p.name not in schemas):
            report.problems.append(
                PartProblem(
                    tdir.name,
                    tdir.relative_to(ws.root).as_posix(),
                    "stray_table",
                    "no schema names this table",
                )
            )
    for table in schemas:
        report.parts[table] = 0
        report.rows[table] = 0
        tdir = ws.table_dir(table)
        if not tdir.is_dir():
            continue
        for path in sorted(tdir.iterdir()):
            if path.name == ".write.lock" or path.is_dir():
                continue
            rel = path.relative_to(ws.root).as_posix()
            if path.name.startswith(".tmp-"):
                found: tuple[str | None, str, int | None] = (
                    "stray",
                    "temp file of an interrupted write",
                    None,
                )
            elif not (path.name.startswith("part-") and path.name.endswith(".parquet")):
                found = ("stray", "not read by queries (only part-*.parquet are)", None)
            else:
                found = check_part(path, table, deep=deep)
            problem, detail, rows = found
            if problem is None:
                report.parts[table] += 1
                report.rows[table] += rows or 0
                continue
            item = PartProblem(table, rel, problem, detail, rows)
            if repair:
                target = qroot / "tables" / table / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(path), target)
                item.moved_to = target.relative_to(ws.root).as_posix()
                report.quarantine = (qroot.relative_to(ws.root)).as_posix()
            report.problems.append(item)
    if repair:
        ws.ensure_tables()  # a quarantined empty part is written again
        ws.close()
    if all(p.moved_to is not None or p.problem in ("stray", "stray_table") for p in report.problems):
        _check_references(ws, report)
    return report


# Rows that must find their image: a deleted or quarantined images part leaves them dangling.
_REFERENCES = (
    ("train_links", "SELECT count(*) FROM train_links t ANTI JOIN images i USING (image_id)"),
    ("generations", "SELECT count(*) FROM generations t ANTI JOIN images i USING (image_id)"),
    (
        "fetches",
        "SELECT count(*) FROM fetch_latest f WHERE status = 'ok' "
        "AND sha256 NOT IN (SELECT image_id FROM images WHERE role = 'train')",
    ),
)


def _check_references(ws: Workspace, report: CheckReport) -> None:
    """Rows naming images that have no images row, and images rows whose stored file is gone:
    what a deleted part or a deleted store file leaves behind (fbmem keeps no list of parts)."""
    for table, query in _REFERENCES:
        n = int(ws.sql(query).column(0)[0].as_py())
        if n:
            detail = f"{n} row(s) name images with no images row (a deleted or quarantined images part?)"
            report.problems.append(PartProblem(table, "", "dangling", detail, n))
    paths = (
        ws.sql("SELECT DISTINCT store_path FROM images WHERE store_path IS NOT NULL").column(0).to_pylist()
    )
    gone = [p for p in paths if not (ws.root / p).is_file()]
    if gone:
        detail = f"{len(gone)} stored image file(s) are missing, e.g. {gone[0]}"
        report.problems.append(PartProblem("images", "images/", "dangling", detail, len(gone)))
