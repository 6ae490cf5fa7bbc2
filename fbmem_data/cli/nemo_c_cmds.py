"""`fbmem nemo-c import` (the paper's released clusters and union masks) and `fbmem nemo-c transfer`
(a cluster's mask on other clusters' prompts, against centroid distance). Thin layer over fbmem_data.nemo."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    del app  # the commands join the `nemo-c` group that nemo_cmds registers
