"""`fbmem doctor`: what this machine can run and whether each model's files are there and intact."""

from __future__ import annotations

import json
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fbmem_data.errors import InputError

if TYPE_CHECKING:
    from fbmem_data.doctor import DoctorReport


def _split_model_args(model: list[str] | None) -> tuple[list[str], dict[str, str]]:
    names: list[str] = []
    paths: dict[str, str] = {}
    for item in model or []:
        name, sep, path = item.partition("=")
        if not name:
            raise InputError(f"--model needs a name, got {item!r}", hint="--model sam or --model sam=/path/to/sam_vit_b_01ec64.pth")
        names.append(name)
        if sep:
            paths[name] = path
    return names, paths


def _folder_of(spec: Any) -> str:
    """A folder model's folder, for --list (a plug-in whose data is missing says so instead)."""
    from fbmem_data.errors import FbmemError

    try:
        return str(spec.folder()) if spec.folder is not None else "-"
    except FbmemError as exc:
        return f"(no folder: {exc.message})"


class DoctorFormat(str, Enum):
    table = "table"
    json = "json"


def _gib(value: Any) -> str:
    return "?" if value is None else f"{value:.1f} GiB"


def _system_lines(report: DoctorReport) -> list[str]:
    s = report.system
    t = s["torch"]
    lines = [
        "System",
        f"  python  {s['python']} ({s['python_executable']})",
        f"  machine {s['platform']}, {s['cpu_count']} CPU(s)",
        f"  fbmem   {s['fbmem']}",
    ]
    if not t.get("installed"):
        lines.append(f"  torch   not importable: {t.get('error')}")
    else:
        cuda = f"CUDA build {t['cuda_build']}" if t["cuda_build"] else "CPU-only build"
        lines.append(f"  torch   {t['version']} ({cuda}, {t['threads']} threads)")
        if t["cuda_available"]:
            for d in t["devices"]:
                lines.append(
                    f"  cuda:{d['index']}  {d['name']} (sm {d['capability']}), {_gib(d['total_gib'])} total, "
                    f"{_gib(d['free_gib'])} free"
                )
        else:
            lines.append("  cuda    no CUDA device visible: generation, NeMo and BiRefNet run on CPU (slowly)")
    providers = s.get("onnxruntime_providers")
    lines.append(f"  onnxruntime providers: {', '.join(providers) if providers else 'onnxruntime not installed'}")
    lines.append("Packages")
    width = max((len(n) for n in report.packages), default=0)
    lines += [f"  {n.ljust(width)}  {v or 'not installed'}" for n, v in report.packages.items()]
    return lines


def _model_lines(report: DoctorReport) -> list[str]:
    lines = ["Models"]
    width = max(len(m.name) for m in report.models)
    for m in report.models:
        size = f"{m.size_bytes / 1e6:,.1f} MB" if m.size_bytes is not None else ""
        lines.append(f"  {m.name.ljust(width)}  {m.status.ljust(10)}  {m.location or '-'}  {size}".rstrip())
        if m.detail:
            lines.append(f"  {''.ljust(width)}  {''.ljust(10)}  {m.detail}")
        if m.status in ("missing", "incomplete", "corrupt"):
            lines.append(f"  {''.ljust(width)}  {''.ljust(10)}  looked in: {', '.join(m.looked_in) or '-'}")
            lines.append(f"  {''.ljust(width)}  {''.ljust(10)}  get it: {m.how_to_get}")
    lines.append("Commands")
    for c in report.commands():
        lines.append(f"  {'ready  ' if c['ready'] else 'missing'}  {c['command']}  (needs {', '.join(c['needs'])})")
    return lines


def doctor(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Check only this model (repeatable); NAME=PATH checks a file, directory or hub id. Exit 1 if one is missing or corrupt.",
            metavar="NAME[=PATH]",
        ),
    ] = None,
    fmt: Annotated[
        DoctorFormat, typer.Option("--format", "-f", help="table (text for people) or json (one JSON object).")
    ] = DoctorFormat.table,
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    hash_files: Annotated[bool, typer.Option("--hash/--no-hash", help="Hash weight files against published sha256 (--no-hash: sizes only).")] = True,
    list_models: Annotated[bool, typer.Option("--list", help="List the models fbmem knows and exit.")] = False,
) -> None:
    """Report what this machine can run: Python, torch, CUDA, packages, and every model file fbmem needs."""
    from fbmem_data.doctor import all_models, diagnose

    if list_models:
        for spec in all_models().values():
            where = spec.env_var or spec.hub_id or spec.package or _folder_of(spec)
            typer.echo(f"{spec.name}\t{where}\t{spec.description}")
        return
    names, paths = _split_model_args(model)
    report = diagnose(names or None, paths, hash_files=hash_files)
    if as_json or fmt is DoctorFormat.json:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        typer.echo("\n".join([*_system_lines(report), *_model_lines(report)]))
        for m in report.failing:
            typer.echo(f"Error: model {m.name} is {m.status}: {m.detail}\n  get it: {m.how_to_get}", err=True)
    if not report.ok:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
