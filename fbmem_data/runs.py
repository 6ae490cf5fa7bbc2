"""Run records: what command ran, with which configuration and versions, and how it ended."""

from __future__ import annotations

import datetime as dt
import platform
from importlib import metadata
from typing import TYPE_CHECKING, Any

from fbmem_data import __version__
from fbmem_data.ids import canonical_json, new_run_id, params_hash

if TYPE_CHECKING:
    from fbmem_data.workspace import Workspace

_TRACKED_PACKAGES = ("duckdb", "polars", "pyarrow", "torch", "diffusers", "transformers", "numpy", "pillow")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "fbmem": __version__}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


class RunRecorder:
    """One row of the `runs` table, kept in its own part so the end state can replace the start."""

    def __init__(self, ws: Workspace, command: str, config: dict[str, Any]) -> None:
        self.ws = ws
        self.command = command
        self.config = config
        self.run_id = new_run_id()
        self.models: dict[str, str] = {}
        self.started_at = dt.datetime.now(dt.timezone.utc)

    def _row(self, status: str, error: str | None, ended: dt.datetime | None) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "command": self.command,
            "config": canonical_json(self.config),
            "config_hash": params_hash(self.config),
            "fbmem_version": __version__,
            "package_versions": canonical_json(package_versions()),
            "model_versions": canonical_json(self.models),
            "started_at": self.started_at,
            "ended_at": ended,
            "status": status,
            "error": error,
        }

    def start(self) -> None:
        self.ws.write("runs", [self._row("running", None, None)], part_name=f"run-{self.run_id}", replace_part=True)

    def finish(self, status: str, error: str | None = None) -> None:
        row = self._row(status, error, dt.datetime.now(dt.timezone.utc))
        self.ws.write("runs", [row], part_name=f"run-{self.run_id}", replace_part=True)
