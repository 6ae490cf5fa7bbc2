"""What one ingest did: rows read and written, images by status, and anything worth a note."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class IngestReport:
    """Accounts for every input: each file or row is either written, already stored, or counted
    under a named reason (duplicate bytes, side file, metadata file) — never silently dropped."""

    source: str
    kind: str  # "prompts" or "images"
    inputs: int = 0
    written: dict[str, int] = field(default_factory=dict)
    by_status: Counter[str] = field(default_factory=Counter)
    already_stored: int = 0
    duplicates: int = 0
    side_files: int = 0
    metadata_files: int = 0
    notes: list[str] = field(default_factory=list)
    run_id: str | None = None
    prompt_set: str | None = None

    def add_written(self, table: str, n: int) -> None:
        self.written[table] = self.written.get(table, 0) + n

    def note(self, text: str, limit: int = 50) -> None:
        # Keep the report small on huge inputs; the count of suppressed notes is kept.
        if len(self.notes) < limit:
            self.notes.append(text)
        elif len(self.notes) == limit:
            self.notes.append("... further notes suppressed")

    def summary(self) -> str:
        """A few human lines: inputs, rows written per table, images by status."""
        what = "rows" if self.kind == "prompts" else "files"
        lines = [f"ingested {self.inputs} {what} from {self.source}"]
        if self.prompt_set:
            lines[0] += f" into set '{self.prompt_set}'"
        if self.by_status:
            lines.append("  by status: " + ", ".join(f"{k} {v}" for k, v in sorted(self.by_status.items())))
        written = ", ".join(f"{t} {n}" for t, n in sorted(self.written.items())) or "nothing new"
        lines.append(f"  written: {written}")
        extras = {
            "already stored": self.already_stored,
            "duplicate bytes": self.duplicates,
            "side files (captions/metadata)": self.side_files,
            "dataset metadata files": self.metadata_files,
        }
        shown = [f"{k} {v}" for k, v in extras.items() if v]
        if shown:
            lines.append("  " + ", ".join(shown))
        lines += [f"  note: {n}" for n in self.notes[:10]]
        if len(self.notes) > 10:
            lines.append(f"  ... {len(self.notes) - 10} more note(s)")
        return "\n".join(lines)
