"""`fbmem eval`: accuracy of a scoring configuration on built-in test beds with known truth.

`evaluate(ws, preset=..., beds=...)` returns an `EvalResult` (per-case results and one row per bed and
truth label, written to the `eval_results` table when a workspace is given); `format_table(result)`
prints it. Beds: see `fbmem_data.evaluate.beds`.
"""

from __future__ import annotations

from fbmem_data.evaluate.beds import bed_names, make_bed
from fbmem_data.evaluate.runner import EvalResult, evaluate, format_table

__all__ = ["EvalResult", "bed_names", "evaluate", "format_table", "make_bed"]
