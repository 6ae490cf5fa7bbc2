"""Builds the `fbmem` Typer app from the command-group modules and maps errors to exit codes."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Annotated

import typer

from fbmem_data.errors import FbmemError

# Each module defines register(app). Order = order in `fbmem --help`.
_COMMAND_MODULES = (
    "fbmem_data.cli.workspace_cmds",
    "fbmem_data.cli.ingest_cmds",
    "fbmem_data.cli.fbmem_cmds",
    "fbmem_data.cli.pairing_cmds",
    "fbmem_data.lab.cli",  # the lab's own commands (lab dataset|train|eval, demo)
    "fbmem_data.cli.generate_cmds",
    "fbmem_data.cli.nemo_cmds",
    "fbmem_data.cli.nemo_c_cmds",
    "fbmem_data.cli.analysis_cmds",
    "fbmem_data.cli.utility_cmds",
    "fbmem_data.cli.report_cmds",
    "fbmem_data.cli.fetch_cmds",
    "fbmem_data.cli.doctor_cmds",
    "fbmem_data.cli.check_cmds",
    "fbmem_data.cli.runs_cmds",
    "fbmem_data.cli.export_cmds",
)


# What diffusers, transformers and huggingface_hub print by default: "modules ... should be kept in
# float32", weight-loading bars, advisory notes. Environment variables so that worker processes inherit them;
# a user's own setting wins.
QUIET_ENV = {
    "DIFFUSERS_VERBOSITY": "error",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}
_NOISY_MODULES = r"(diffusers|transformers|huggingface_hub|torch|torchvision|timm|open_clip|onnxruntime)(\.|$)"


def quiet_dependencies(verbose: bool) -> None:
    """Silence the dependencies' warnings and progress bars unless verbose (fbmem's own output stays)."""
    if verbose:
        return
    import warnings

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", module=_NOISY_MODULES)
    # Already imported (in-process callers): their loggers read the environment only once.
    if "diffusers" in sys.modules:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
    if "transformers" in sys.modules:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()


def _print_version(value: bool) -> None:
    if value:
        from fbmem_data import __version__

        typer.echo(f"fbmem {__version__}")
        raise typer.Exit()


def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print fbmem's version and exit.")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Show the warnings and progress bars of diffusers, transformers and torch (fbmem -v CMD)."
        ),
    ] = False,
) -> None:
    quiet_dependencies(verbose)


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="fbmem",
        help="Measure and mitigate foreground/background memorization in text-to-image diffusion models.",
        no_args_is_help=True,
        add_completion=True,
        rich_markup_mode=None,
        pretty_exceptions_enable=False,
    )
    app.callback()(_root)
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
