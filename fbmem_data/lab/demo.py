"""`fbmem demo` / `fbmem lab eval`: the whole FB-Mem pipeline on the lab, checked against planted truth.

Steps, each through the same library calls a user would make:
lab data set -> workspace (`write_lab_dataset`) -> generate with the shipped lab model
(`fbmem_data.generate.generate`, several seeds per prompt) -> segment (`lab` segmenter) -> pair
(ann top-k over thumbnails) -> score (MS-SSIM on RGBA parts, the paper metric) -> labels
(`fbmem_labels`) -> `lab_confusion` (planted group x label) and the one-to-many statistics ->
the mitigation comparison on the planted prompts (none / NeMo / NeMo-C / Wen / RTA, see
`fbmem_data.lab.mitigation_demo`) with the `lab-colours` utility. Every step resumes: re-running on the same workspace recomputes nothing already stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fbmem_data.workspace import Workspace


@dataclass(frozen=True)
class DemoConfig:
    """How much of the lab to run. `demo()` is the 10-minute default, `quick()` the CI smoke run,
    `full()` the whole benchmark of `fbmem lab eval`."""

    seeds: int = 4  # generations per prompt
    seed_start: int = 0  # seeds seed_start .. seed_start + seeds - 1 (other seeds: the same benchmark on new draws)
    steps: int = 20  # DDIM steps
    # classifier-free guidance scale; None: the model's own (generate.loading.resolve_guidance: the lab's
    # `guidance` in its lab_model.json, v1.3 7.0 and v2 2.0), 7.0 for a model that names none
    guidance: float | None = None
    unique_prompts: int | None = 8  # None = all of them
    control_prompts: int | None = 8
    planted_prompts: int | None = None  # None = every VM/FM/BM/template prompt
    k: int = 5  # candidates per generated image (the reference keeps the top 5)
    embedder: str = "thumbnail"
    metric: str = "msssim"  # the paper's metric: torchmetrics MS-SSIM defaults on RGBA parts
    # the paper's metric on fbmem's consistent parts; the exact "paper" preset compares the training
    # cut-out (alpha = mask) with a JPEG-cached generated one (alpha 1), which sinks the lab's small
    # foregrounds (docs/lab.md gives both tables)
    preset: str = "paper-clean"
    size: int = 256  # parts compared at this side (the paper: 512; 64x64 lab images upsample either way)
    segmenter: str = "lab"
    batch_size: int = 8
    extra_presets: tuple[str, ...] = ("paper", "default")  # also scored and printed beside the main scoring
    mitigations: tuple[str, ...] = ("nemo", "nemo-c", "wen", "rta")  # compared on the planted prompts
    mitigation_seeds: int | None = 2  # seeds per planted prompt under each mitigation (None = seeds)
    nemo_c_k: int | str = 4  # NeMo-C clusters of the planted captions ("auto": best silhouette)
    utility: str | None = "lab-colours"  # utility plug-in scored on every generation

    @classmethod
    def demo(cls) -> DemoConfig:
        return cls()

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(seeds=1, steps=4, unique_prompts=1, control_prompts=1, planted_prompts=3, k=2, size=176,
                   mitigation_seeds=1, nemo_c_k=2)

    @classmethod
    def full(cls) -> DemoConfig:
        return cls(seeds=8, steps=50, unique_prompts=None, control_prompts=None, size=512, extra_presets=("paper", "default"),
                   mitigation_seeds=None)


@dataclass
class DemoResult:
    workspace: Path
    config: dict[str, Any]
    confusion: Any  # pyarrow Table: lab_confusion of the main scoring
    one_to_many: Any  # pyarrow Table: one_to_many_histogram
    scoring_ids: dict[str, str]
    counts: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    report: Path | None = None  # the HTML evidence report (fbmem report) of the main scoring
    comparison: Any = None  # pyarrow Table: mitigation_comparison (None when no mitigation ran)
    notes: list[str] = field(default_factory=list)  # mitigations left out, and why
    scoring: str = ""  # the main scoring's id, metric, size, segmenter and preset (describe_scoring)
    extra_confusions: dict[str, Any] = field(default_factory=dict)  # preset -> lab_confusion, same pairs


def _choose_prompts(ws: Workspace, cfg: DemoConfig) -> list[str]:
    truth = ws.sql("SELECT prompt_id, planted_group, group_key FROM lab_truth ORDER BY group_key", output="polars")
    chosen: list[str] = []
    limits = {"unique": cfg.unique_prompts, "control": cfg.control_prompts}
    planted = [r for r in truth.iter_rows(named=True) if r["planted_group"] not in limits]
    # round robin over the groups, so a limited run still covers VM, FM and BM
    by_group = [[r for r in planted if r["planted_group"] == g] for g in ("VM", "FM", "BM", "template")]
    planted = [g[i] for i in range(max(map(len, by_group), default=0)) for g in by_group if i < len(g)]
    chosen += [r["prompt_id"] for r in planted[: cfg.planted_prompts]]
    for group, limit in limits.items():
        rows = [r["prompt_id"] for r in truth.iter_rows(named=True) if r["planted_group"] == group]
        chosen += rows[:limit]
    return chosen


def run_demo(
    ws: Workspace,
    cfg: DemoConfig | None = None,
    *,
    model: Any = "lab-v2",
    dataset_seed: int | None = None,
    segmenter_options: dict[str, Any] | None = None,
    nemo_neurons: Path | None = None,
    device: str = "cpu",
    log: Callable[[str], None] | None = print,
    progress: bool = False,
) -> DemoResult:
    """Run the lab benchmark into `ws` and return the confusion table.

    Args:
        ws: the workspace (empty, or one a previous demo wrote: finished steps are skipped).
        cfg: sizes and settings (DemoConfig.demo() by default).
        model: "lab-v2" (the benchmark's lab), "lab" (v1.3) or a loaded pipeline wrapper for `generate`.
        dataset_seed: the lab data set's seed (default: the one the lab model was trained on).
        segmenter_options: options of the segmenter plug-in (e.g. {"weights": path} for `lab`).
        nemo_neurons: NeMo CSV of the model's neurons (default: nemo_neurons.csv in the lab model's folder).
        device: torch device for generation, segmentation and scoring.

    Raises:
        ModelNotFoundError: the shipped lab weights or segmenter are missing.
    """
    from fbmem_data.fbmem.scoring import score_pairs
    from fbmem_data.generate.generator import generate
    from fbmem_data.generate.loading import load_pipeline, resolve_guidance
    from fbmem_data.lab.dataset import make_lab_dataset
    from fbmem_data.lab.ingest import write_lab_dataset
    from fbmem_data.lab.pipeline import (
        LAB_WEIGHTS_DIRS,
        lab_weights_dir,
        read_weights_info,
        weights_lab_config,
    )
    from fbmem_data.pairing import pair

    cfg = cfg or DemoConfig.demo()
    seconds: dict[str, float] = {}

    def step(name: str) -> Callable[[], None]:
        started = time.perf_counter()
        if log:
            log(f"[{name}] ...")
        return lambda: seconds.__setitem__(name, round(time.perf_counter() - started, 1))

    lab_config = None
    lab_model = model if isinstance(model, str) and model in LAB_WEIGHTS_DIRS else None
    if lab_model is not None:  # the data set, and the neuron lists, of the lab model that generates
        from fbmem_data.lab.mitigation_demo import shipped_neurons_path

        info = read_weights_info(lab_weights_dir(lab_model))
        lab_config = weights_lab_config(info)
        dataset_seed = info.dataset_seed if dataset_seed is None else dataset_seed
        nemo_neurons = nemo_neurons or shipped_neurons_path(lab_weights_dir(lab_model))
    done = step("dataset")
    written = write_lab_dataset(ws, make_lab_dataset(dataset_seed or 0, lab_config))
    done()
    prompt_ids = _choose_prompts(ws, cfg)
    done = step("generate")
    loaded = load_pipeline(model, device=device) if isinstance(model, str) else model  # once, for every step
    cfg = replace(cfg, guidance=resolve_guidance(loaded.pipe, cfg.guidance))  # so the recorded config names the scale used
    generate(ws, loaded, prompt_ids=prompt_ids, n=cfg.seeds, seed_start=cfg.seed_start, steps=cfg.steps, guidance=cfg.guidance,
             batch_size=cfg.batch_size, device=device, progress=progress)
    done()
    done = step("pair")
    pairing_id = pair(ws, method="ann", embedder=cfg.embedder, k=cfg.k, device=device)
    done()
    done = step("segment+score")
    scored = score_pairs(ws, pairing_id, preset=cfg.preset, metric=cfg.metric, size=cfg.size, segmenter=cfg.segmenter,
                         segmenter_options=segmenter_options, device=device, batch_size=cfg.batch_size,
                         progress=progress)
    scoring_ids = {"main": scored["scoring_id"]}
    for preset in (p for p in cfg.extra_presets if p != cfg.preset):
        extra = score_pairs(ws, pairing_id, preset=preset, segmenter=cfg.segmenter, size=cfg.size,
                            segmenter_options=segmenter_options, device=device, batch_size=cfg.batch_size)
        scoring_ids[preset] = extra["scoring_id"]
    done()
    comparison, notes = None, []
    planted = set(ws.sql(
        "SELECT prompt_id FROM lab_truth WHERE planted_group IN ('VM', 'FM', 'BM', 'template')"
    ).column("prompt_id").to_pylist())
    planted_ids = [p for p in prompt_ids if p in planted]
    methods = [m for m in cfg.mitigations if m != "none"]
    if methods and planted_ids:
        from fbmem_data.lab.mitigation_demo import comparison_table, prepare_mitigations

        done = step("mitigations")
        runnable, mit_params, notes = prepare_mitigations(ws, loaded.pipe, loaded.model_id, methods,
                                                          k=cfg.nemo_c_k, steps=cfg.steps,
                                                          neurons_csv=nemo_neurons, log=log)
        if runnable:
            generate(ws, loaded, prompt_ids=planted_ids, n=cfg.mitigation_seeds or cfg.seeds, seed_start=cfg.seed_start, steps=cfg.steps,
                     guidance=cfg.guidance, batch_size=cfg.batch_size, device=device, mitigations=runnable,
                     mitigation_params=mit_params, progress=progress)
            pairing_id = pair(ws, method="ann", embedder=cfg.embedder, k=cfg.k, device=device)
            score_pairs(ws, pairing_id, preset=cfg.preset, metric=cfg.metric, size=cfg.size, segmenter=cfg.segmenter,
                        segmenter_options=segmenter_options, device=device, batch_size=cfg.batch_size)
            for preset in (p for p in cfg.extra_presets if p != cfg.preset):  # every scoring covers the same pairs (a re-run then adds nothing)
                score_pairs(ws, pairing_id, preset=preset, segmenter=cfg.segmenter, size=cfg.size,
                            segmenter_options=segmenter_options, device=device, batch_size=cfg.batch_size)
        done()
        utility_id = None
        if cfg.utility:
            from fbmem_data.utility.runner import score_utility

            done = step("utility")
            options = {"lab_model": lab_model} if cfg.utility == "lab-colours" and lab_model not in (None, "lab") else None
            utility_id = score_utility(ws, cfg.utility, options=options, device=device, batch_size=64)["utility_id"]
            done()
        if runnable:
            comparison = comparison_table(ws, scored["scoring_id"], utility_id)
    params = {"scoring_id": scored["scoring_id"]}
    confusion = ws.sql("SELECT * FROM lab_confusion WHERE mitigation = 'none'", params)
    extra_confusions = {name: ws.sql("SELECT * FROM lab_confusion WHERE mitigation = 'none'", {"scoring_id": sid})
                        for name, sid in scoring_ids.items() if name != "main"}
    one_to_many = ws.sql(
        "SELECT n_distinct_best, prompts, generations, vm, bm, fm, nm FROM one_to_many_histogram "
        "WHERE mitigation = 'none' ORDER BY n_distinct_best", params,
    )
    done = step("report")
    from fbmem_data.report import build_report

    report = build_report(ws, ws.root / "report.html", scoring_id=scored["scoring_id"])
    done()
    counts = {**written, "prompts_generated": len(prompt_ids), "generations": ws.count("generations"),
              "region_scores": ws.count("region_scores")}
    from fbmem_data.fbmem.labelling import describe_scoring

    return DemoResult(ws.root, asdict(cfg), confusion, one_to_many, scoring_ids, counts, seconds, report,
                      comparison, notes, describe_scoring(ws, scored["scoring_id"]), extra_confusions)


def format_result(result: DemoResult) -> str:
    """The demo's printed report: confusion by planted group, one-to-many, where things are."""
    # the paper metric and every extra preset side by side: same generations, same candidate pairs
    tables = {f"{result.config.get('preset', 'main')} (main)": result.confusion, **result.extra_confusions}
    lines = ["", "FB-Mem labels of the lab's generations by planted group (tau 0.8), per scoring:"]
    if result.scoring:
        lines.append(f"main scoring: {result.scoring}")
    lines.append("")
    lines.append(f"{'':<10}{'':>5}" + "".join(f"   {name[:28]:<28}" for name in tables) + "   target")
    lines.append(f"{'planted':<10}{'n':>5}" + f"   {'VM':>4}{'FM':>4}{'BM':>4}{'NM':>4}   hit      " * len(tables))
    by_group = {name: {r["planted_group"]: r for r in t.to_pylist()} for name, t in tables.items()}
    for row in result.confusion.to_pylist():
        group = row["planted_group"]
        target = f"{float(row['target']):.2f}" if row["target"] is not None else "  -"
        cells = ""
        for name in tables:
            r = by_group[name].get(group)
            cells += (f"   {r['vm']:>4}{r['fm']:>4}{r['bm']:>4}{r['nm']:>4}   {r['hit_share']:.2f}     " if r
                      else f"   {'(not scored)':<28}")
        lines.append(f"{group:<10}{row['n']:>5}{cells}   {target}")
    if result.extra_confusions:
        ids = ", ".join(f"{name}: {sid}" for name, sid in result.scoring_ids.items())
        lines += ["", f"scoring ids ({ids}); the mitigation comparison below uses the main scoring."]
    lines += ["", "hit = VM for VM; FM or VM for FM; BM or VM for BM; NM for unique and control.", "",
              "One prompt to many training images (distinct best matches per prompt):", ""]
    lines.append(f"{'distinct':>8}{'prompts':>9}{'gens':>6}{'VM':>5}{'BM':>5}{'FM':>5}{'NM':>5}")
    for row in result.one_to_many.to_pylist():
        lines.append(f"{row['n_distinct_best']:>8}{row['prompts']:>9}{row['generations']:>6}{row['vm']:>5}"
                     f"{row['bm']:>5}{row['fm']:>5}{row['nm']:>5}")
    if result.comparison is not None:
        from fbmem_data.lab.mitigation_demo import format_comparison

        lines.append(format_comparison(result.comparison, result.notes))
    lines += ["", f"workspace: {result.workspace}",
              f"  tables: {result.workspace / 'tables'} (Parquet; query with `fbmem sql -w {result.workspace} ...`)",
              f"  images: {result.workspace / 'images'}",
              f"  report: {result.report} (open in a browser: evidence cards, rates, one-to-many)",
              "  try: fbmem sql \"SELECT * FROM lab_confusion\" -w " + str(result.workspace),
              "       fbmem sql \"SELECT * FROM mitigation_comparison\" -w " + str(result.workspace),
              f"timings (s): {result.seconds}"]
    return "\n".join(lines)
