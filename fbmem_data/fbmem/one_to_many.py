"""The paper's one-to-many Gaussian fit (its released `see_res.py`).

For one model and mitigation (the paper: the unmodified model, 20 generations per prompt), every prompt's
generations are binned by x = how many distinct training images they best-match (`one_to_many`), and
the memorized generations (VM + BM + FM) per bin x = 1..n_max are fitted by least squares with
a * exp(-(x - mean)^2 / (2 sigma^2)) (scipy's curve_fit, as the reference). Empty bins count as 0, as
they do in the reference's fixed-length count arrays.

Where the reference's code and its intent part, fbmem follows the intent. The reference adds its three
count lists with `+` (Python list concatenation: 60 values against 20 bins, which curve_fit rejects); fbmem sums
them per bin. fbmem starts curve_fit from the moments, from every local peak of the counts and from
curve_fit's default (1, 1, 1), and keeps the converged fit with the least squared error (on the paper's
own bimodal counts only the start at the second peak converges). And fbmem counts the last prompt,
which the reference's grouping loop never flushes.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING, Any

from fbmem_data.errors import InputError
from fbmem_data.fbmem.labelling import DEFAULT_TAU
from fbmem_data.ids import params_hash
from fbmem_data.runs import recorded

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pyarrow as pa

    from fbmem_data.workspace import Workspace


def gaussian(x: Any, amplitude: float, mean: float, sigma: float) -> Any:
    """a * exp(-(x - mean)^2 / (2 sigma^2)), elementwise over an array x."""
    import numpy as np

    return amplitude * np.exp(-((np.asarray(x, dtype=float) - mean) ** 2) / (2 * sigma**2))


def fit_gaussian(counts: Sequence[float]) -> dict[str, Any]:
    """Fit the Gaussian to counts at x = 1..len(counts); returns the fit's columns of one_to_many_fits.

    A fit that cannot be made (fewer than 3 bins, no counts, no convergence) has status 'failed' and
    an error; the moments are given whenever there is a count.
    """
    import numpy as np

    y = np.asarray(counts, dtype=float)
    x = np.arange(1, len(y) + 1, dtype=float)
    total = float(y.sum())
    out: dict[str, Any] = dict.fromkeys(
        (
            "amplitude",
            "mean",
            "sigma",
            "amplitude_se",
            "mean_se",
            "sigma_se",
            "r2",
            "moment_mean",
            "moment_std",
            "error",
        )
    )
    out["status"] = "failed"
    if total <= 0:
        out["error"] = "no memorized generations to fit"
        return out
    m_mean = float((x * y).sum() / total)
    m_std = float(math.sqrt(max((((x - m_mean) ** 2) * y).sum() / total, 0.0)))
    out.update(moment_mean=m_mean, moment_std=m_std)
    if len(y) < 3:
        out["error"] = f"a 3-parameter fit needs at least 3 bins, got {len(y)}"
        return out
    import warnings

    from scipy.optimize import OptimizeWarning, curve_fit

    best: tuple[float, Any, Any] | None = None
    errors: list[str] = []
    for p0 in _starts(x, y, m_mean, m_std):
        try:
            with warnings.catch_warnings():
                # a singular covariance (e.g. a single non-empty bin) is reported as null standard errors
                warnings.simplefilter("ignore", OptimizeWarning)
                popt, pcov = curve_fit(gaussian, x, y, p0=p0, maxfev=5000)
        except (RuntimeError, ValueError) as exc:
            errors.append(str(exc))
            continue
        sse = float(((y - gaussian(x, *popt)) ** 2).sum())
        if np.all(np.isfinite(popt)) and (best is None or sse < best[0]):
            best = (sse, popt, pcov)
    if best is None:
        out["error"] = f"curve_fit found no optimum from any start: {errors[-1] if errors else 'no start'}"
        return out
    _, popt, pcov = best
    amplitude, mean, sigma = (float(v) for v in popt)
    resid = y - gaussian(x, amplitude, mean, sigma)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    se = [float(math.sqrt(v)) if np.isfinite(v) and v >= 0 else None for v in np.diag(pcov)]
    out.update(
        status="ok",
        amplitude=amplitude,
        mean=mean,
        sigma=abs(sigma),
        amplitude_se=se[0],
        mean_se=se[1],
        sigma_se=se[2],
        r2=1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else None,
    )
    return out


def _starts(x: Any, y: Any, m_mean: float, m_std: float) -> list[tuple[float, float, float]]:
    """Starting points: the moments, every local maximum of the counts (a peak of height y at x, width 1),
    and curve_fit's own default (1, 1, 1). The paper's counts are bimodal (a peak at 1, a second mode at
    14-15): from the moments or from (1, 1, 1) curve_fit does not converge, from the second peak it does."""
    starts = [(float(y.max()), m_mean, m_std if m_std > 0 else 0.5)]
    for i in range(len(y)):
        left = y[i - 1] if i > 0 else -1.0
        right = y[i + 1] if i + 1 < len(y) else -1.0
        if y[i] > 0 and y[i] >= left and y[i] >= right:
            starts.append((float(y[i]), float(x[i]), 1.0))
    starts.append((1.0, 1.0, 1.0))
    return starts


def one_to_many_counts(
    ws: Workspace,
    *,
    mitigation: str = "none",
    model_id: str | None = None,
    prompt_set: str | None = None,
    tau: float = DEFAULT_TAU,
    scoring_id: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Per model: the memorized-generation counts per bin 1..n_max and the totals behind a fit.

    Raises:
        InputError: no labelled generations match.
    """
    params: dict[str, Any] = {"tau": float(tau), "mit": mitigation, "model": model_id, "pset": prompt_set}
    if scoring_id is not None:
        params["scoring_id"] = scoring_id
    rows = ws.sql(
        "SELECT model_id, n_distinct_best, count(*) AS prompts, sum(generations) AS generations, "
        "sum(vm + bm + fm) AS memorized, max(generations) AS most FROM one_to_many "
        "WHERE mitigation = $mit AND ($model::VARCHAR IS NULL OR model_id = $model) "
        "AND ($pset::VARCHAR IS NULL OR prompt_set = $pset) GROUP BY ALL ORDER BY model_id, n_distinct_best",
        params,
    ).to_pylist()
    if not rows:
        where = (
            f"mitigation {mitigation!r}"
            + (f", model {model_id!r}" if model_id else "")
            + (f", prompt set {prompt_set!r}" if prompt_set else "")
        )
        raise InputError(
            f"no labelled generations for {where}",
            hint="run `fbmem score` (and generate with that mitigation) first; `fbmem labels` shows what is labelled",
        )
    sid = ws.sql("SELECT any_value(scoring_id) AS s FROM fbmem_labels", params).column("s")[0].as_py()
    per_model: dict[str, dict[str, Any]] = {}
    for r in rows:
        m = per_model.setdefault(
            r["model_id"], {"bins": {}, "n_prompts": 0, "n_generations": 0, "n_max": 0, "scoring_id": sid}
        )
        m["bins"][int(r["n_distinct_best"])] = int(r["memorized"])
        m["n_prompts"] += int(r["prompts"])
        m["n_generations"] += int(r["generations"])
        m["n_max"] = max(m["n_max"], int(r["most"]))
    for m in per_model.values():
        m["counts"] = [m["bins"].get(x, 0) for x in range(1, m["n_max"] + 1)]
    return per_model


@recorded(
    "one-to-many",
    lambda a: {"mitigation": a["mitigation"], "model_id": a["model_id"], "prompts": a["prompt_set"], "tau": a["tau"],
               "scoring_id": a["scoring_id"]},
)
def fit_one_to_many(
    ws: Workspace,
    *,
    mitigation: str = "none",
    model_id: str | None = None,
    prompt_set: str | None = None,
    tau: float = DEFAULT_TAU,
    scoring_id: str | None = None,
    run_id: str | None = None,
) -> list[str]:
    """Fit every matching model's one-to-many counts and store the fits in `one_to_many_fits`.

    Returns the fit_ids (one per model). A stored fit of the same settings and counts is kept as is.

    Raises:
        InputError: no labelled generations match.
    """
    ids = []
    for mid, data in one_to_many_counts(
        ws, mitigation=mitigation, model_id=model_id, prompt_set=prompt_set, tau=tau, scoring_id=scoring_id
    ).items():
        key = {
            "model_id": mid,
            "mitigation": mitigation,
            "prompt_set": prompt_set,
            "tau": float(tau),
            "scoring_id": data["scoring_id"],
            "counts": data["counts"],
        }
        fit_id = params_hash(key)
        ids.append(fit_id)
        row = {
            **key,
            **fit_gaussian(data["counts"]),
            "fit_id": fit_id,
            "n_max": data["n_max"],
            "n_prompts": data["n_prompts"],
            "n_generations": data["n_generations"],
            "n_memorized": sum(data["counts"]),
            "created_at": dt.datetime.now(dt.UTC),
            "run_id": run_id,
        }
        ws.write("one_to_many_fits", [row])  # a stored fit_id is skipped: same data, same fit
    return ids


def fit_report(ws: Workspace, fit_ids: Sequence[str]) -> pa.Table:
    """Per bin of the given fits: observed memorized generations and the fitted curve (view one_to_many_fit_curve)."""
    return ws.sql(
        "SELECT * FROM one_to_many_fit_curve WHERE list_contains($ids, fit_id) ORDER BY model_id, fit_id, n_distinct_best",
        {"ids": list(fit_ids)},
    )
