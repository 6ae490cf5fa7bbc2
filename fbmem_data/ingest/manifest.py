"""Image manifests: a CSV (or JSONL/Parquet) saying which prompt and settings produced each file.

Columns (names are case-insensitive):
- file (or path, image, file_name, filename): a path relative to the ingested PATH (or to the
  manifest's folder, or absolute), or just a file name.
- prompt_id, or prompt (or text, caption) with an optional prompt_set (or set).
- for role=generated: model_id (or model, required), seed, steps, guidance (or guidance_scale, cfg),
  height, width, mitigation (default "none"), mitigation_params (JSON).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fbmem_data.errors import InputError
from fbmem_data.ingest.prompts import read_prompt_file

_ALIASES: dict[str, tuple[str, ...]] = {
    "file": ("file", "path", "image", "file_name", "filename"),
    "prompt_id": ("prompt_id",),
    "prompt": ("prompt", "text", "caption"),
    "prompt_set": ("prompt_set", "set"),
    "model_id": ("model_id", "model"),
    "seed": ("seed",),
    "steps": ("steps", "num_inference_steps"),
    "guidance": ("guidance", "guidance_scale", "cfg"),
    "height": ("height",),
    "width": ("width",),
    "mitigation": ("mitigation",),
    "mitigation_params": ("mitigation_params",),
}
_INT_FIELDS = ("seed", "steps", "height", "width")


@dataclass(frozen=True)
class ManifestEntry:
    where: str  # "line 3"
    file: str
    prompt_id: str | None = None
    prompt: str | None = None
    prompt_set: str | None = None
    model_id: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    mitigation: str = "none"
    # {} when absent: what `fbmem generate` records for the `none` mitigation, so the ids agree.
    mitigation_params: Any = field(default_factory=dict)

    def settings(self, prompt_id: str) -> dict[str, Any]:
        """The generation settings whose params_hash is the generation_id."""
        return {
            "prompt_id": prompt_id,
            "model_id": self.model_id,
            "seed": self.seed,
            "steps": self.steps,
            "guidance": self.guidance,
            "height": self.height,
            "width": self.width,
            "mitigation": self.mitigation,
            "mitigation_params": self.mitigation_params,
        }


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _columns(columns: Sequence[str]) -> dict[str, str]:
    lowered = {c.strip().lower(): c for c in reversed(columns)}
    found = {}
    for field_name, aliases in _ALIASES.items():
        for alias in aliases:
            if alias in lowered:
                found[field_name] = lowered[alias]
                break
    return found


def read_manifest(path: str | os.PathLike[str], role: str) -> list[ManifestEntry]:
    """Parse and check a manifest.

    Raises:
        InputError: the file is malformed, lacks a file column, a row has no file or no prompt,
            a number does not parse, model_id is missing for role=generated, mitigation_params is
            not JSON, or a file or a generation's settings repeat.
    """
    path = Path(path)
    raw = read_prompt_file(path)
    cols = _columns(raw.columns)
    if "file" not in cols:
        raise InputError(f"manifest {path}: no file column; it has columns {raw.columns}",
                         hint="name the column holding image paths 'file'")
    if "prompt_id" not in cols and "prompt" not in cols:
        raise InputError(f"manifest {path}: no prompt_id or prompt column; it has columns {raw.columns}")
    entries: list[ManifestEntry] = []
    first_line: dict[str, str] = {}
    for row, where in zip(raw.rows, raw.locations, strict=True):
        values: dict[str, Any] = {f: row.get(c) for f, c in cols.items()}
        place = f"manifest {path}, {where}"
        if _blank(values.get("file")):
            raise InputError(f"{place}: empty file name")
        file = str(values["file"]).strip()
        if file in first_line:
            raise InputError(f"{place}: file {file!r} is listed again (first at {first_line[file]})")
        first_line[file] = where
        if _blank(values.get("prompt_id")) and _blank(values.get("prompt")):
            raise InputError(f"{place}: no prompt_id and no prompt text for {file!r}")
        parsed: dict[str, Any] = {}
        for name in _INT_FIELDS:
            if not _blank(values.get(name)):
                try:
                    parsed[name] = int(str(values[name]).strip())
                except ValueError as exc:
                    raise InputError(f"{place}: {name} {values[name]!r} is not an integer") from exc
        if not _blank(values.get("guidance")):
            try:
                parsed["guidance"] = float(str(values["guidance"]).strip())
            except ValueError as exc:
                raise InputError(f"{place}: guidance {values['guidance']!r} is not a number") from exc
        if not _blank(values.get("mitigation_params")):
            mp = values["mitigation_params"]
            try:
                parsed["mitigation_params"] = json.loads(mp) if isinstance(mp, str) else mp
            except ValueError as exc:
                raise InputError(f"{place}: mitigation_params is not JSON: {mp!r}") from exc
        model_id = None if _blank(values.get("model_id")) else str(values["model_id"]).strip()
        if role == "generated" and model_id is None:
            raise InputError(f"{place}: model_id is required for role=generated", hint="add a model_id column")
        entries.append(
            ManifestEntry(
                where=where,
                file=file,
                prompt_id=None if _blank(values.get("prompt_id")) else str(values["prompt_id"]).strip(),
                prompt=None if _blank(values.get("prompt")) else str(values["prompt"]),
                prompt_set=None if _blank(values.get("prompt_set")) else str(values["prompt_set"]).strip(),
                model_id=model_id,
                mitigation="none" if _blank(values.get("mitigation")) else str(values["mitigation"]).strip(),
                **parsed,
            )
        )
    if not entries:
        raise InputError(f"manifest {path} has no rows")
    return entries
