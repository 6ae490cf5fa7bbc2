"""Builds the `fbmem` Typer app from the command-group modules and maps errors to exit codes."""

from __future__ import annotations

import importlib
import sys

import typer

from fbmem_data.errors import FbmemError

# Each module defines register(app). Order = order in `fbmem --help`.
_COMMAND_MODULES = (
    "fbmem_data.cli.workspace_cmds",
    "fbmem_data.cli.ingest_cmds",
    "fbmem_data.cli.fbmem_cmds",
    "fbmem_data.cli.pairing_cmds",
    "fbmem_data.cli.lab_cmds",
    "fbmem_data.cli.generate_cmds",
    "fbmem_data.cli.nemo_cmds",
    "fbmem_data.cli.nemo_c_cmds",
    "fbmem_data.cli.analysis_cmds",
    "fbmem_data.cli.utility_cmds",
    "fbmem_data.cli.report_cmds",
    "fbmem_data.cli.fetch_cmds",
    "fbmem_data.cli.doctor_cmds",
    "fbmem_data.cli.check_cmds",
)


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="fbmem",
        help="Measure and mitigate foreground/background memorization in text-to-image diffusion models.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).register(app)
    return app


PARAM_FLAGS = ("-p", "--param")


def join_param_pairs(argv: list[str]) -> list[str]:
    """Rewrite `-p NAME VALUE` as `-p NAME=VALUE` (typer options take one value per flag)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in PARAM_FLAGS and i + 2 < len(argv) and "=" not in argv[i + 1]:
            out += [arg, f"{argv[i + 1]}={argv[i + 2]}"]
            i += 3
            continue
        out.append(arg)
        i += 1
    return out


def _show_warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
    typer.echo(f"Warning: {message}", err=True)


def main(argv: list[str] | None = None) -> None:
    import warnings

    from fbmem_data.workspace import CatalogWarning

    argv = join_param_pairs(list(sys.argv[1:] if argv is None else argv))
    previous = warnings.showwarning
    # fbmem's own warnings as one line, like its errors (no file:line of the library).
    warnings.showwarning = lambda m, c, *a, **k: (_show_warning if issubclass(c, CatalogWarning) else previous)(m, c, *a, **k)
    app = build_app()
    try:
        # standalone mode: click handles usage errors and --help itself; our errors arrive here.
        app(args=argv)
    except FbmemError as exc:
        typer.echo(f"Error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
