# %% [markdown]
# # Analysing an fbmem workspace
#
# A worked example in cells (`# %%`: VS Code, Jupyter via jupytext, or plain `python examples/analysis.py`).
# It reads the workspace that `fbmem demo -w demo-ws` writes (or any workspace: set FBMEM_WORKSPACE) and
# needs nothing from fbmem but the workspace's Parquet tables and DuckDB catalog; fbmem's own Python API
# is used beside plain DuckDB and Polars to show both.

# %%
import os
from pathlib import Path

import duckdb
import polars as pl

from fbmem_data import Workspace

WS = Path(os.environ.get("FBMEM_WORKSPACE", "demo-ws"))
TAU = 0.8
ws = Workspace.open(WS)

# %% [markdown]
# ## VM / BM / FM / NM rates on matched generations
# `fbmem_rates` compares like with like: within a prompt set, only the prompts, seeds and sampler
# settings every model and mitigation generated count in `n`.

# %%
rates = ws.sql("SELECT * FROM fbmem_rates", {"tau": TAU}, output="polars")
print(
    rates.select("prompt_set", "model_id", "mitigation", "n", "vm_share", "bm_share", "fm_share", "nm_share")
)

# %% [markdown]
# ## The same from plain DuckDB (no fbmem import): the catalog holds every view

# %%
con = duckdb.connect(str(WS / "fbmem.duckdb"), read_only=True)
con.execute(f"SET VARIABLE tau = {TAU}")
plain = con.sql("SELECT label, count(*) AS n FROM fbmem_labels GROUP BY label ORDER BY label").pl()
print(plain)
assert plain["n"].sum() == ws.sql("SELECT count(*) AS n FROM fbmem_labels").column("n")[0].as_py()

# %% [markdown]
# ## One-to-many: how many distinct training images one prompt's generations match

# %%
hist = ws.sql("SELECT * FROM one_to_many_histogram WHERE mitigation = 'none'", {"tau": TAU}, output="polars")
print(hist.select("model_id", "n_distinct_best", "prompts", "generations", "vm", "bm", "fm"))

# %% [markdown]
# ## Evidence: the strongest verbatim copies, with the files to look at

# %%
evidence = ws.sql("SELECT * FROM fbmem_evidence", {"tau": TAU}, output="polars")
top = (
    evidence.filter(pl.col("label") == "VM")
    .sort("pair_score", descending=True)
    .select("prompt_text", "mitigation", "seed", "fg_score", "bg_score", "generated_path", "matched_path")
    .head(5)
)
print(top)
assert all(Path(p).is_file() for p in top["generated_path"])

# %% [markdown]
# ## Per mitigation: the VM share over every labelled generation (unmatched; fbmem_rates matches them)

# %%
per_method = (
    evidence.group_by("mitigation")
    .agg(pl.len().alias("n"), (pl.col("label") == "VM").mean().alias("vm_share"))
    .sort("mitigation")
)
print(per_method)
