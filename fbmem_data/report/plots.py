"""The report's summary figures with matplotlib (object API, no pyplot: no global backend change).

Each function takes rows from the SQL views and returns a Figure, or None when there is nothing to plot.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LABELS = ("VM", "BM", "FM", "NM")
#: One colour per label, shared by the plots and the HTML (VM red: the worst case).
LABEL_COLOURS = {"VM": "#d62728", "BM": "#ff7f0e", "FM": "#1f77b4", "NM": "#9e9e9e"}


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _group_name(row: dict[str, Any], keys: Sequence[str]) -> str:
    return " · ".join(str(row.get(k) if row.get(k) is not None else "—") for k in keys)


def short_params(params: Any, width: int = 10) -> str:
    """mitigation_params JSON as `k=v, ...` with long values (ids) cut to `width` characters."""
    import json

    if params in (None, "", "{}"):
        return ""
    try:
        items = json.loads(params) if isinstance(params, str) else params
    except ValueError:
        return str(params)
    if not isinstance(items, dict):
        return str(items)
    parts = []
    for key, value in items.items():
        text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        parts.append(f"{key}={text if len(text) <= width else text[:width] + '…'}")
    return ", ".join(parts)


def method_labels(rows: Sequence[dict[str, Any]], method_key: str = "method") -> list[str]:
    """A readable name per row: the method alone, with its model when several models are shown, and
    with its parameters when the method appears with several parameter sets (never cut to `wen …`)."""
    models = {r.get("model_id") for r in rows}
    params_of: dict[Any, set[Any]] = {}
    for r in rows:
        params_of.setdefault(r[method_key], set()).add(r.get("mitigation_params"))
    names = []
    for r in rows:
        name = str(r[method_key])
        if len(params_of[r[method_key]]) > 1 and short_params(r.get("mitigation_params")):
            name += f" ({short_params(r.get('mitigation_params'))})"
        if len(models) > 1:
            name += f" · {r.get('model_id')}"
        names.append(name)
    return names


def n_label(row: dict[str, Any]) -> str:
    """`n=32`, or `n=32 of 64` when only some of the row's generations are matched."""
    n, total = row.get("n"), row.get("n_generated")
    return f"n={n}" if total is None or total == n else f"n={n} of {total}"


def rates_figure(rates: list[dict[str, Any]]) -> Figure | None:
    """VM/BM/FM/NM shares per model, prompt set and mitigation (fbmem_rates), stacked horizontal bars."""
    if not rates:
        return None
    keys = [k for k in ("model_id", "prompt_set", "mitigation") if len({r.get(k) for r in rates}) > 1] or ["mitigation"]
    mitigations = method_labels([{**r, "model_id": None} for r in rates], "mitigation")  # with parameters where needed
    names = [
        " · ".join(m if k == "mitigation" else _group_name(r, [k]) for k in keys) + f"  ({n_label(r)})"
        for r, m in zip(rates, mitigations, strict=True)
    ]
    fig = _figure(7.5, 0.9 + 0.38 * len(rates))
    ax = fig.add_subplot()
    left = [0.0] * len(rates)
    ypos = list(range(len(rates)))[::-1]
    for label in LABELS:
        shares = [float(r[f"{label.lower()}_share"] or 0.0) for r in rates]
        bars = ax.barh(ypos, shares, left=left, color=LABEL_COLOURS[label], label=label, height=0.7)
        for bar, share in zip(bars, shares, strict=True):
            if share >= 0.07:
                ax.text(bar.get_x() + bar.get_width() / 2, bar.get_y() + bar.get_height() / 2, f"{share:.0%}",
                        ha="center", va="center", fontsize=7, color="white")
        left = [a + b for a, b in zip(left, shares, strict=True)]
    ax.set_yticks(ypos, names, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of generations")
    tau = rates[0].get("tau")
    if any(r.get("n_generated") not in (None, r.get("n")) for r in rates):
        ax.set_xlabel("share of matched generations (same prompts, seeds, sampler settings)", fontsize=9)
    ax.set_title(f"FB-Mem labels by {' · '.join(keys)}" + (f" (tau = {tau:g})" if tau is not None else ""), fontsize=10)
    ax.legend(ncols=4, loc="lower center", bbox_to_anchor=(0.5, 1.08), fontsize=8, frameon=False)
    return fig


def one_to_many_figure(histogram: list[dict[str, Any]]) -> Figure | None:
    """Generations by number of distinct best-matching training images per prompt, stacked by label.

    The reference uses the unmodified model, so mitigation 'none' is shown when present; one panel per model.
    """
    if not histogram:
        return None
    mitigations = {r["mitigation"] for r in histogram}
    chosen = "none" if "none" in mitigations else sorted(mitigations, key=str)[0]
    rows = [r for r in histogram if r["mitigation"] == chosen]
    models = sorted({r["model_id"] for r in rows}, key=str)
    fig = _figure(7.5, 2.8 * len(models))
    for i, model in enumerate(models):
        ax = fig.add_subplot(len(models), 1, i + 1)
        mrows = sorted((r for r in rows if r["model_id"] == model), key=lambda r: r["n_distinct_best"])
        xs = [int(r["n_distinct_best"]) for r in mrows]
        bottom = [0.0] * len(mrows)
        for label in LABELS:
            counts = [float(r[label.lower()] or 0) for r in mrows]
            ax.bar(xs, counts, bottom=bottom, color=LABEL_COLOURS[label], label=label, width=0.8)
            bottom = [a + b for a, b in zip(bottom, counts, strict=True)]
        for x, top, r in zip(xs, bottom, mrows, strict=True):
            ax.text(x, top, f"{r['prompts']}p", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(1, max(xs) + 1))
        ax.set_xlabel("distinct best-matching training images per prompt")
        ax.set_ylabel("generations")
        ax.set_title(f"One prompt to many training images — {model}, mitigation {chosen} (labels: p = prompts)", fontsize=10)
        ax.margins(y=0.12)
        if i == 0:
            ax.legend(ncols=4, fontsize=8, frameon=False, loc="upper right")
    return fig


def mitigation_figure(rows: list[dict[str, Any]], utility_metric: str | None) -> Figure | None:
    """Mitigation score against utility, one point per method; score bars when no utility is recorded."""
    if not rows:
        return None

    labels = dict(zip(map(id, rows), method_labels(rows), strict=True))

    def name(r: dict[str, Any]) -> str:
        return labels[id(r)]

    with_utility = [r for r in rows if r.get("utility") is not None]
    fig = _figure(7.5, 4.0 if utility_metric and with_utility else 1.1 + 0.35 * len(rows))
    ax = fig.add_subplot()
    if utility_metric and with_utility:
        for r in with_utility:
            ax.scatter([r["utility"]], [r["score"]], s=40, color="#444" if r["method"] == "none" else "#d62728", zorder=3)
            # Text left of points in the right half, so no label runs off the axes.
            right = r["utility"] > sum(x["utility"] for x in with_utility) / len(with_utility)
            ax.annotate(name(r), (r["utility"], r["score"]), textcoords="offset points",
                        xytext=(-5 if right else 5, 4), ha="right" if right else "left", fontsize=8)
        ax.set_xlabel(utility_metric)
        ax.set_ylabel("mitigation score (higher = better)")
        ax.axhline(0, color="#bbb", lw=0.8)
        ax.set_title("Mitigation score against utility, one point per method\n"
                     "(matched generations: same prompts, seeds and sampler settings)", fontsize=10)
        ax.margins(0.25)
    else:
        names = [name(r) for r in rows]
        ax.barh(list(range(len(rows)))[::-1], [float(r["score"]) for r in rows], color="#d62728", height=0.6)
        ax.set_yticks(list(range(len(rows)))[::-1], names, fontsize=8)
        ax.set_xlabel("mitigation score (higher = better)")
        ax.set_title("Mitigation score per method (no utility recorded)", fontsize=10)
    return fig


def figure_png(fig: Figure, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def write_figure(fig: Figure, path: Path, dpi: int = 200) -> Path:
    """PNG for papers, written atomically."""
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_bytes(figure_png(fig, dpi))
    tmp.replace(path)
    return path
