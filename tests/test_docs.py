"""Docs a user can follow: no internal references, sources of reference files, commands that exist."""

from __future__ import annotations

import re
from importlib.metadata import distribution
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# What a user sees besides the docs: help and error strings, SQL view comments, schema descriptions.
SOURCES = [
    *sorted((ROOT / "fbmem_data").rglob("*.py")),
    *sorted((ROOT / "sql").glob("*.sql")),
    *sorted((ROOT / "schemas").glob("*.json")),
]
# References to files or tickets only the project's authors have.
INTERNAL = re.compile(r"method\.md|§|\bissue \d+|\bissue's\b|\.\./shared|lab-facts|huggingface-cli")

REFERENCE_FILES = (
    "memorized_laion_prompts.csv",
    "unmemorized_laion_prompts.csv",
    "coco2014_val_10000.csv",
    "statistics_additional_laion_prompts_v1_4.pt",
    "additional_laion_prompts_500.csv",
    "sdv1_500_memorized.jsonl",
    "nemo_refined_neurons_prompts_0_250.csv",
)


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", DOCS + SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_internal_references(path: Path) -> None:
    hits = [
        f"{i}: {line.strip()}" for i, line in enumerate(_text(path).splitlines(), 1) if INTERNAL.search(line)
    ]
    assert not hits, "internal references a user cannot follow:\n" + "\n".join(hits)


def test_every_reference_file_says_where_it_comes_from() -> None:
    rows = {
        name: line
        for line in _text(ROOT / "docs" / "real-models.md").splitlines()
        if line.startswith("| `")
        for name in REFERENCE_FILES
        if line.startswith(f"| `{name}`")
    }
    assert set(rows) == set(REFERENCE_FILES), f"no source row for {sorted(set(REFERENCE_FILES) - set(rows))}"
    for name, row in rows.items():
        source = row.rsplit("|", 2)[-2]
        assert "github.com" in source or "same repository" in source or "not in" in source, (name, source)
    # Every doc that uses a reference file by name points to where it comes from.
    for doc in DOCS:
        text = _text(doc)
        if doc.name != "real-models.md" and any(name in text for name in REFERENCE_FILES):
            assert "real-models.md#reference-files" in text, (
                f"{doc.name} names a reference file but not its source"
            )


def test_tour_duration_is_the_same_everywhere() -> None:
    readme = re.findall(r"report: about (\d+) minutes", _text(ROOT / "README.md"))
    lab = [
        m
        for line in _text(ROOT / "docs" / "lab.md").splitlines()
        if line.startswith("fbmem demo -w")
        for m in re.findall(r"(\d+)[- ]minute", line)
    ]
    assert readme and lab, "the tour's duration is not stated in README.md and docs/lab.md"
    assert set(readme) == set(lab), f"README.md says {readme} minutes, docs/lab.md {lab}"


def test_duckdb_shell_is_explained_where_recommended() -> None:
    for doc in DOCS:
        text = _text(doc)
        if re.search(r"`duckdb [\"'$A-Za-z]", text):
            assert "duckdb.org/docs/installation" in text, (
                f"{doc.name} recommends a duckdb shell pip does not install"
            )


def test_hub_download_commands_exist_in_installed_huggingface_hub() -> None:
    scripts = {e.name for e in distribution("huggingface_hub").entry_points if e.group == "console_scripts"}
    from fbmem_data.doctor.registry import all_models

    texts = [_text(p) for p in DOCS] + [spec.how_to_get for spec in all_models().values()]
    commands = {
        m for t in texts for m in re.findall(r"(?:^|[`(])([\w-]+) (?:download|auth login|login)\b", t)
    }
    assert commands, "no download command found in the docs"
    assert commands <= scripts, f"commands huggingface_hub does not install: {sorted(commands - scripts)}"
