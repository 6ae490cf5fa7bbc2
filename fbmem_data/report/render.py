"""The report's HTML: the shipped template filled with server-rendered summary parts and one JSON blob
that the page's script renders lazily (a page of cards and a page of table rows at a time)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markupsafe import Markup

from fbmem_data.report.gather import ReportData

TEMPLATE = Path(__file__).with_name("template.html")
#: Columns of every row in the JSON blob (the page's script indexes rows by these names).
ROW_COLUMNS = ("gi", "ti", "fg", "bg", "pair", "label", "prompt", "set", "model", "mit", "seed", "params", "degenerate", "topk", "pm")
SCORE_DIGITS = 4


@dataclass
class PlotImage:
    """A summary figure: where its PNG for papers was written and the smaller copy embedded in the page."""

    name: str
    title: str
    path: Path
    embedded_png: bytes


def _round(x: float | None) -> float | None:
    if x is None or x != x:  # NaN: JSON has no NaN; shown as a missing score
        return None
    return round(float(x), SCORE_DIGITS)


def _escape_json(blob: str) -> str:
    # '<' only occurs inside JSON strings, where \u003c is the same character: no '</script>' can end the block.
    return blob.replace("<", "\\u003c")


def data_blob(
    data: ReportData, image_src: dict[str, str], meta: dict[str, Any], image_files: dict[str, str] | None = None
) -> dict[str, Any]:
    """The page's data: rows worst first, images and prompts stored once and referenced by index.

    image_files: the full-size original of each image (a URI the card links to)."""
    image_index: dict[str, int] = {}
    images: list[str | None] = []
    image_ids: list[str] = []
    files: list[str | None] = []

    def img(image_id: str | None) -> int | None:
        if image_id is None:
            return None
        if image_id not in image_index:
            image_index[image_id] = len(images)
            images.append(image_src.get(image_id))
            image_ids.append(image_id[:16])
            files.append((image_files or {}).get(image_id))
        return image_index[image_id]

    prompt_index: dict[str, int] = {}
    prompts: list[list[str | None]] = []
    gens = data.generations.to_pylist()
    for g in gens:
        pid = g["prompt_id"]
        if pid is not None and pid not in prompt_index:
            prompt_index[pid] = len(prompts)
            prompts.append([g["prompt"], pid])

    top_k: dict[str, list[list[Any]]] = {}
    for m in data.top_k.to_pylist():
        top_k.setdefault(m["generated_image_id"], []).append(
            [m["train_image_id"], _round(m["fg_score"]), _round(m["bg_score"]), _round(m["pair_score"])]
        )
    pm_index: dict[tuple[Any, ...], int] = {}
    pm_lists: list[list[list[Any]]] = []
    for m in data.prompt_matches.to_pylist():
        key = (m["prompt_id"], m["model_id"], m["mitigation"])
        if key not in pm_index:
            pm_index[key] = len(pm_lists)
            pm_lists.append([])
        pm_lists[pm_index[key]].append([m["train_image_id"], int(m["generations"])])

    rows = []
    for g in gens:
        rows.append([
            img(g["generated_image_id"]),
            img(g["train_image_id"]),
            _round(g["fg_score"]),
            _round(g["bg_score"]),
            _round(g["pair_score"]),
            g["label"],
            prompt_index.get(g["prompt_id"]),
            g["prompt_set"],
            g["model_id"],
            g["mitigation"],
            g["seed"],
            g["mitigation_params"],
            g["degenerate_rule"],
            [[img(t), fg, bg, pair] for t, fg, bg, pair in top_k.get(g["generated_image_id"], [])],
            pm_index.get((g["prompt_id"], g["model_id"], g["mitigation"])),
        ])
    prompt_matches = [[[img(t), n] for t, n in lst] for lst in pm_lists]
    return {
        "meta": meta,
        "cols": list(ROW_COLUMNS),
        "rows": rows,
        "prompts": prompts,
        "prompt_matches": prompt_matches,
        "images": images,
        "image_ids": image_ids,
        "files": files,
    }


def needed_images(data: ReportData) -> list[str]:
    """Every image a card can show: generated, best match, other top-k, a prompt's distinct matches."""
    ids: list[str] = []
    ids += data.generations.column("generated_image_id").to_pylist()
    ids += data.generations.column("train_image_id").to_pylist()
    shown = set(ids)
    ids += [t for g, t in zip(data.top_k.column("generated_image_id").to_pylist(),
                              data.top_k.column("train_image_id").to_pylist(), strict=True) if g in shown]
    ids += data.prompt_matches.column("train_image_id").to_pylist()
    return [i for i in dict.fromkeys(ids) if i is not None]


def _env() -> Any:
    """Jinja2 with autoescape: every value is escaped unless it is Markup from another fragment."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _fragment(source: str, **context: Any) -> Markup:
    return Markup(_env().from_string(source).render(**context).strip())


_PROVENANCE = """
Labels from segmenter <b>{{ p.segmenter }}</b> · metric <b>{{ p.metric }}</b> · tau <b>{{ "%g"|format(p.tau) }}</b>
 · preset <b>{{ p.preset }}</b> · compared at <b>{{ p.size }}</b> px · scoring_id <code>{{ p.scoring_id }}</code>
{% if p.get("scorings", 1) > 1 %}
 · {{ p.scoring_choice }} of <b>{{ p.scorings }}</b> scorings (others: {% for o in p.get("other_scorings", []) %}<code>{{ o }}</code>{{ ", " if not loop.last }}{% endfor %}; choose with <code>fbmem report --scoring-id ID</code>)
{% endif %}
<br>{{ e.n_generations }} generations shown{% if e.get("limit") %} (the {{ e.limit }} worst){% endif %}
 · {{ p.generated_images }} generated and {{ p.train_images }} training images scored, {{ p.scored_pairs }} pairs, top-{{ p.k }} kept
 · scored {{ p.scored_at or "at an unrecorded time" }} · workspace <code>{{ e.workspace }}</code>
 · report built {{ e.created_at }} by fbmem {{ e.fbmem_version }}
 · PNG plots{{ " and thumbnails" if e.images_mode == "folder" }} in <code>{{ e.files_dir }}/</code>
"""


def provenance_html(data: ReportData, extra: dict[str, Any]) -> Markup:
    return _fragment(_PROVENANCE, p=data.provenance, e=extra)


_RATES = """
<h3>FB-Mem rates</h3><table class="rates" id="rates-table"><tr><th>model</th><th>prompt set</th><th>mitigation</th><th>n (matched)</th><th>generated</th>
{%- for x in labels %}<th><span class="badge {{ x }}">{{ x }}</span></th>{% endfor %}</tr>
{% for r in rows %}<tr>{% for c in r %}<td>{{ c }}</td>{% endfor %}</tr>
{% endfor %}</table>
<p class="note">Rates count matched generations: within a prompt set, only the prompts, seeds and sampler settings that every model and mitigation of the set generated (n of the generated).</p>
"""


def rates_table_html(data: ReportData) -> Markup:
    rows = data.rates.to_pylist()
    if not rows:
        return Markup("")
    from fbmem_data.report.plots import method_labels

    mitigations = method_labels([{**r, "model_id": None} for r in rows], "mitigation")
    cells = []
    for r, mitigation in zip(rows, mitigations, strict=True):
        shares = [f"{r[x]} ({float(r[x + '_share'] or 0):.1%})" if r["n"] else "—" for x in ("vm", "bm", "fm", "nm")]
        cells.append([
            "—" if r["model_id"] is None else str(r["model_id"]),
            "—" if r["prompt_set"] is None else str(r["prompt_set"]),
            mitigation if r["mitigation"] is not None else "—",
            str(r["n"]),
            str(r.get("n_generated", r["n"])),
            *shares,
        ])
    return _fragment(_RATES, rows=cells, labels=("VM", "BM", "FM", "NM"))


def format_number(value: Any, digits: int = 3) -> str:
    """Cells of the summary tables: floats to `digits` decimals (never 0.26041666666666663), '—' for none."""
    if value is None or (isinstance(value, float) and value != value):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


_MITIGATION = """
<h3>Mitigation comparison</h3><table class="rates" id="mitigation-table"><tr><th>method</th><th>parameters</th><th>model</th><th>pairs</th><th>mitigation score</th>
{%- if metric %}<th>{{ metric }}</th><th>n (utility)</th>{% endif %}{% if spread %}<th>score per seed (± sd)</th>{% endif %}</tr>
{% for title, r in rows %}<tr{% if title %} title="{{ title }}"{% endif %}>{% for c in r %}<td>{{ "—" if c is none else c }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% if not metric %}
<p class="note">No utility is recorded in this workspace (a <code>mitigation_utility</code> view with columns method and utility), so the comparison shows the mitigation score alone.</p>
{% else %}
<p class="note">Utility over matched generations: <code>none</code> on the prompts, seeds and sampler settings that a mitigation also generated, each mitigation on those <code>none</code> generated (as in <code>mitigation_comparison</code>).</p>
{% endif %}
{% if spread %}<p class="note">Score per seed: the mitigation score of one seed's generations, mean ± sample sd over {{ spread }} seeds (<code>mitigation_seed_spread</code>); a difference between two methods within about their sd is not a difference (<code>mitigation_seed_contrast</code> pairs them seed by seed).</p>{% endif %}
"""


def mitigation_table_html(data: ReportData) -> Markup:
    rows = data.mitigation
    if not rows:
        return Markup("")
    from fbmem_data.report.plots import short_params

    metric = data.utility_metric
    # the seed-to-seed spread, where the comparison has two seeds or more
    spread = max((r.get("seeds") or 0 for r in rows), default=0)
    spread = spread if spread > 1 else 0
    out = []
    for r in rows:
        params = r.get("mitigation_params")
        cells = [r["method"], short_params(params, 16) or None, r.get("model_id"), r.get("n_pairs"), format_number(r.get("score"), 1)]
        if metric:
            cells += [format_number(r.get("utility")), r.get("utility_n")]
        if spread:
            mean, sd = r.get("score_per_seed"), r.get("score_per_seed_sd")
            cells.append(f"{mean:.1f} ± {sd:.1f}" if mean is not None and sd is not None else None)
        out.append((str(params) if params else None, cells))
    return _fragment(_MITIGATION, rows=out, metric=metric, spread=spread)


_PLOTS = """
{% for p in plots %}<figure><img class="plot" id="plot-{{ p.name }}" alt="{{ p.title }}" src="{{ p.src }}"><figcaption>{{ p.title }} — <code>{{ p.file }}</code></figcaption></figure>{% endfor %}
"""


def plots_html(plots: list[PlotImage], data_uri: Any) -> Markup:
    if not plots:
        return Markup('<p class="note">Nothing to plot.</p>')
    items = [
        {"name": p.name, "title": p.title, "src": data_uri(p.embedded_png, "image/png"), "file": p.path.name}
        for p in plots
    ]
    return _fragment(_PLOTS, plots=items)


def render_html(title: str, provenance: str, plots: str, summary_tables: str, blob: dict[str, Any]) -> str:
    """The page: template.html rendered by Jinja2 with autoescape (the fragments above are Markup)."""
    data_json = _escape_json(json.dumps(blob, separators=(",", ":"), allow_nan=False))
    return _env().get_template(TEMPLATE.name).render(
        title=title,
        provenance=Markup(provenance),
        plots=Markup(plots),
        summary_tables=Markup(summary_tables),
        data_json=Markup(data_json),  # JSON with every '<' as \u003c: safe inside <script>
    )
