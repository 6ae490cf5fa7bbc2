"""CLI habits: --version, completion, one meaning per short option, --format/--threads where they belong,
help text rendered as written, dependencies quiet unless -v."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import fbmem_data
from fbmem_data.cli.app import build_app

runner = CliRunner()


def _commands() -> dict[str, object]:
    """Every leaf command by its path ("nemo detect"), as click sees it."""
    out: dict[str, object] = {}

    def walk(cmd: object, path: list[str]) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
        else:
            out[" ".join(path)] = cmd

    walk(typer.main.get_command(build_app()), [])
    return out


def _options(cmd: object) -> list[object]:
    return [p for p in cmd.params if type(p).__name__.endswith("Option")]


def _longs(cmd: object) -> set[str]:
    return {o for p in _options(cmd) for o in [*p.opts, *p.secondary_opts] if o.startswith("--")}


COMMANDS = _commands()


def test_walk_finds_the_commands() -> None:
    assert {"generate", "doctor", "nemo detect", "nemo-c transfer", "utility score", "ingest prompts"} <= set(
        COMMANDS
    )


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_help_renders_every_bracket(path: str) -> None:
    result = runner.invoke(build_app(), [*path.split(), "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    rendered = " ".join(result.output.split())
    cmd = COMMANDS[path]
    texts = [cmd.help or "", *(getattr(p, "help", None) or "" for p in cmd.params)]
    for text in texts:
        for token in re.findall(r"\S*\[[^\]\s]+\]\S*", text):
            assert token.rstrip(".,;:)") in rendered or token in rendered, f"{path}: help lost {token!r}"


def test_one_meaning_per_short_option() -> None:
    meanings: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path, cmd in COMMANDS.items():
        for p in _options(cmd):
            longs = [o for o in p.opts if o.startswith("--")]
            for short in (o for o in p.opts if re.fullmatch(r"-\w", o)):
                meanings[short][longs[0] if longs else "?"].append(path)
    clashes = {s: dict(m) for s, m in meanings.items() if len(m) > 1}
    assert not clashes, f"short options with several meanings: {clashes}"
    assert set(meanings["-m"]) == {"--model"} and set(meanings["-f"]) == {"--format"}


def test_model_commands_take_threads_and_printing_commands_take_format() -> None:
    for path, cmd in COMMANDS.items():
        longs = _longs(cmd)
        if "--device" in longs:
            assert "--threads" in longs, f"{path} runs a model but has no --threads"
        # report writes HTML, export writes its own formats (the subcommand names them)
        if "--output" in longs and path != "report" and not path.startswith("export"):
            fmt = next((p for p in _options(cmd) if "--format" in p.opts), None)
            assert fmt is not None and "-f" in fmt.opts, f"{path} prints rows but has no --format/-f"
    doctor = COMMANDS["doctor"]
    assert {"--format", "--json"} <= _longs(doctor)
    # --format keeps one meaning: the output's; the input file's format is --input-format.
    assert "--input-format" in _longs(COMMANDS["ingest prompts"]) and "--format" not in _longs(
        COMMANDS["ingest prompts"]
    )


def test_threads_option_sets_torch_threads() -> None:
    torch = pytest.importorskip("torch")
    from fbmem_data.cli.common import _apply_threads

    before = torch.get_num_threads()
    try:
        assert _apply_threads(None) is None and torch.get_num_threads() == before
        _apply_threads(1 if before != 1 else 2)
        assert torch.get_num_threads() == (1 if before != 1 else 2)
    finally:
        torch.set_num_threads(before)


def test_version_and_completion() -> None:
    result = runner.invoke(build_app(), ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"fbmem {fbmem_data.__version__}"
    top = runner.invoke(build_app(), ["--help"]).output
    assert "--install-completion" in top and "--verbose" in top


def test_doctor_format_json_and_its_alias(tmp_path: Path) -> None:
    import json

    for args in (["-f", "json"], ["--json"]):
        out = runner.invoke(build_app(), ["doctor", "-m", "lab-model", "--no-hash", *args])
        assert json.loads(out.stdout)["models"][0]["model"] == "lab-model", out.output


NOISE = ("should be kept in float32", "Loading weights")


@pytest.mark.slow
def test_generate_is_quiet_unless_verbose(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for key in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        env.pop(key, None)

    def fbmem(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fbmem_data", *args], capture_output=True, text=True, env=env
        )

    ws = str(tmp_path / "ws")
    assert fbmem("init", ws).returncode == 0
    assert fbmem("lab", "dataset", "-w", ws).returncode == 0
    common = [
        "generate",
        "--model",
        "lab",
        "--prompts",
        "lab-memorized",
        "--n",
        "1",
        "--steps",
        "2",
        "--threads",
        "1",
    ]
    quiet = fbmem(*common, "--prompt-ids", _first_prompt(ws), "-w", ws)
    assert quiet.returncode == 0, quiet.stderr
    assert not [n for n in NOISE if n in quiet.stderr], quiet.stderr
    loud = fbmem("-v", *common, "--prompt-ids", _first_prompt(ws), "--seed-start", "1", "-w", ws)
    assert loud.returncode == 0, loud.stderr
    assert all(n in loud.stderr for n in NOISE), loud.stderr


def _first_prompt(ws: str) -> str:
    from fbmem_data.workspace import Workspace

    rows = Workspace.open(ws).sql(
        "select min(prompt_id) as p from prompts where prompt_set = 'lab-memorized'"
    )
    return rows.to_pylist()[0]["p"]
