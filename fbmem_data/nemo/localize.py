"""NeMo localization: initial neuron selection and greedy refinement (the paper's method).

Both stages test "blocking hypotheses" - neuron sets whose channels are zeroed - by predicting noise
for the prompt on n_seeds fixed latents and comparing the blocked noise differences with the
unblocked ones: a hypothesis *succeeds* (the prompt is mitigated) when the maximum over the kept
seeds of MS-SSIM(unblocked, blocked) is <= the threshold.

Two algorithms reach the same decisions:

- `sequential`: the reference: one UNet call (n_seeds samples) per hypothesis, as NeMo's code does.
- `batched`: several hypotheses in one UNet call (a batch of hypotheses x seeds, each batch row with
  its own channel mask). The initial selection evaluates the next `width` (theta, k) steps together
  and takes the first success. The refinement is a greedy sequence of "drop this layer / neuron if it
  stays mitigated" decisions, each depending on the previous ones; the batched refinement tests the
  next `width` candidates in one call along a *predicted* path (candidate j against the state that the
  predicted outcomes of the candidates before it give). Every hypothesis up to and including the first
  misprediction was built on exactly the state the sequential algorithm would test, so those decisions
  are the sequential ones; the next call starts after it. Predictions start as "drop" and are updated
  from the outcomes seen in each call's discarded tail. Neuron sets equal the sequential ones whenever
  the UNet returns the same values for a sample whatever batch it is in (true up to float rounding; a
  score within rounding of the threshold could flip).

Interpretations (where the paper leaves a detail open; all are LocalizationConfig fields):
- candidates per layer are {z > theta} union the top-k neurons by raw activation |a| (`topk_by`);
- kept seeds (`seed_filter="memorized"`) are the seeds whose max pairwise similarity to another seed
  exceeds the threshold at detection; if none do, all seeds are kept;
- if the initial selection never succeeds (theta reaches its floor), the last selection is refined
  against the score it reached (as the reference code does) and the status is `not_mitigated`;
- refinement tests neurons in reverse layer order and ascending neuron index within a layer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from fbmem_data.errors import InputError
from fbmem_data.nemo.detect import (
    NoiseDiffSettings,
    msssim_pairs,
    noise_diff_inputs,
    normalise_noise_diff,
    predicted_noise,
)
from fbmem_data.nemo.hooks import blocked_neurons
from fbmem_data.nemo.layers import NemoLayer, discover_nemo_layers
from fbmem_data.runs import recorded

if TYPE_CHECKING:
    import torch

    from fbmem_data.distribute import Distributor, EngineOptions
    from fbmem_data.workspace import Workspace

Algorithm = Literal["batched", "sequential"]
# {layer index: sorted neuron indices}
Neurons = dict[int, list[int]]

PAPER_TAU = 0.428


@dataclass(frozen=True)
class LocalizationConfig:
    """Every constant of the localization. The defaults are NeMo's (`--preset paper`)."""

    noise: NoiseDiffSettings = field(default_factory=NoiseDiffSettings)
    tau: float = PAPER_TAU
    theta_start: float = 5.0
    theta_step: float = 0.25
    theta_min: float = 1.0
    k_start: int = 0
    k_step: int = 1
    k_max: int = 1280
    topk_by: Literal["activation", "z"] = "activation"
    seed_filter: Literal["memorized", "all"] = "memorized"
    skip_not_memorized: bool = True
    # refinement as NeMo's code: neurons of a layer in the order its initial selection listed them
    # ("reference": z-candidates ascending, then the top-k by descending activation) instead of
    # ascending index, and a layer/neuron dropped only when the score is strictly below the threshold
    refine_order: Literal["ascending", "reference"] = "ascending"
    refine_strict: bool = False

    def schedule(self) -> list[tuple[float, int]]:
        """The (theta, k) steps of the initial selection: 5/0, 4.75/1, ..., 1.25/15 for the paper."""
        steps = []
        theta, k = self.theta_start, self.k_start
        while theta > self.theta_min + 1e-9 and k < self.k_max:
            steps.append((theta, k))
            theta -= self.theta_step
            k += self.k_step
        return steps

    def as_params(self) -> dict[str, Any]:
        params = asdict(self)
        params["noise"] = self.noise.as_params()
        # only when set: ids of configurations from before these options stay the same
        if self.refine_order == "ascending":
            params.pop("refine_order")
        if not self.refine_strict:
            params.pop("refine_strict")
        return params


#: "paper": NeMo's released code exactly (torchmetrics 1.3.2's MS-SSIM with per-call data range, its
#: refinement order and strict comparison); "paper-clean": the same constants with fbmem's simpler
#: MS-SSIM (data range 1) and ascending refinement order, the library default.
PRESETS: dict[str, LocalizationConfig] = {
    "paper": LocalizationConfig(noise=NoiseDiffSettings(reference_msssim=True), refine_order="reference", refine_strict=True),
    "paper-clean": LocalizationConfig(),
}


@dataclass
class Counter:
    hypotheses: int = 0
    samples: int = 0
    batches: int = 0


class NoiseDiffEvaluator:
    """Normalised noise differences of one prompt under blocking hypotheses, counting the UNet work."""

    def __init__(
        self,
        unet: Any,
        scheduler: Any,
        embeds: torch.Tensor,
        settings: NoiseDiffSettings,
        *,
        layers: Sequence[NemoLayer] | None = None,
        max_batch: int = 160,
    ) -> None:
        import torch

        self.unet = unet
        self.scheduler = scheduler
        self.settings = settings
        self.layers = list(discover_nemo_layers(unet) if layers is None else layers)
        self.max_batch = max(max_batch, settings.n_seeds)
        self.device, self.dtype = unet.device, unet.dtype
        self.latents, self.timestep, self.model_input = noise_diff_inputs(unet, scheduler, settings)
        self.embeds = embeds.to(self.device, self.dtype)
        if self.embeds.shape[0] != 1:
            raise InputError("NoiseDiffEvaluator takes the embedding of one prompt")
        self.counter = Counter()
        with torch.no_grad():
            self.reference = self._run(self.latents.shape[0], None)

    def _run(self, rows: int, masks: dict[int, torch.Tensor] | None) -> torch.Tensor:

        reps = rows // self.settings.n_seeds
        latents = self.model_input.repeat(reps, 1, 1, 1)
        embeds = self.embeds.expand(rows, -1, -1)
        self.counter.samples += rows
        self.counter.batches += 1
        if masks:
            with blocked_neurons(self.layers, masks):
                out = self.unet(latents, self.timestep, encoder_hidden_states=embeds).sample
        else:
            out = self.unet(latents, self.timestep, encoder_hidden_states=embeds).sample
        eps = predicted_noise(self.scheduler, latents, out, self.timestep)
        return normalise_noise_diff(eps.float() - self.latents.float().repeat(reps, 1, 1, 1))

    def evaluate(self, hypotheses: Sequence[Neurons]) -> torch.Tensor:
        """(len(hypotheses), n_seeds, C, H, W) normalised noise differences, max_batch samples per UNet call."""
        import torch

        from fbmem_data.nemo.hooks import keep_masks

        seeds = self.settings.n_seeds
        per_call = max(1, self.max_batch // seeds)
        out = []
        with torch.no_grad():
            for start in range(0, len(hypotheses), per_call):
                chunk = hypotheses[start : start + per_call]
                masks = keep_masks(self.layers, chunk, device=self.device)
                masks = {i: m.repeat_interleave(seeds, dim=0) for i, m in masks.items()}
                out.append(self._run(len(chunk) * seeds, masks).reshape(len(chunk), seeds, *self.latents.shape[1:]))
        self.counter.hypotheses += len(hypotheses)
        return torch.cat(out)

    def blocked_scores(self, hypotheses: Sequence[Neurons], kept: Sequence[int]) -> list[float]:
        """Per hypothesis: max over kept seeds of MS-SSIM(unblocked, blocked) noise differences."""
        import torch

        diffs = self.evaluate(hypotheses)[:, list(kept)]
        ref = self.reference[list(kept)].unsqueeze(0).expand_as(diffs)
        groups = torch.arange(len(hypotheses)).repeat_interleave(len(kept))  # NeMo scores one hypothesis per call
        sims = msssim_pairs(
            ref.reshape(-1, *ref.shape[2:]), diffs.reshape(-1, *diffs.shape[2:]),
            kernel_size=self.settings.kernel_size, betas=self.settings.betas,
            reference=self.settings.reference_msssim, groups=groups,
        )
        return sims.reshape(len(hypotheses), len(kept)).amax(dim=1).tolist()


@dataclass
class LocalizationResult:
    status: str
    initial: Neurons
    refined: Neurons
    detection_score: float
    threshold: float
    refinement_threshold: float | None
    initial_score: float | None
    refined_score: float | None
    theta: float | None
    top_k: int | None
    counter: Counter
    wall_s: float

    @staticmethod
    def count(neurons: Neurons) -> int:
        return sum(len(v) for v in neurons.values())


def select_candidates(
    activations: Sequence[torch.Tensor], means: Sequence[torch.Tensor], stds: Sequence[torch.Tensor],
    theta: float, k: int, topk_by: str = "activation",
) -> Neurons:
    """Per layer: {z > theta} union the top-k neurons (by |a|, or by z), z = |a - mean| / std."""
    selection: Neurons = {}
    for layer, (a, mu, sd) in enumerate(zip(activations, means, stds, strict=True)):
        z = (a - mu).abs() / sd.clamp_min(1e-12)
        chosen = set((z > theta).nonzero().flatten().tolist())
        if k > 0:
            key = a.abs() if topk_by == "activation" else z
            chosen |= set(key.topk(min(k, key.numel())).indices.tolist())
        if chosen:
            selection[layer] = sorted(chosen)
    return selection


def reference_order(
    activations: Sequence[torch.Tensor], means: Sequence[torch.Tensor], stds: Sequence[torch.Tensor],
    theta: float, k: int, topk_by: str = "activation",
) -> Neurons:
    """Per layer the neurons of `select_candidates` in the order NeMo's code tests them in refinement.

    Its selection is a list: the z-candidates in ascending index, then the top-k (descending key),
    duplicates kept. Refinement removes list entries one at a time; a neuron listed twice stays blocked
    until its second entry is removed, so it is effectively tested at its last position: z-only
    neurons ascending, then the top-k neurons in descending order of the key.
    """
    order: Neurons = {}
    for layer, (a, mu, sd) in enumerate(zip(activations, means, stds, strict=True)):
        z = (a - mu).abs() / sd.clamp_min(1e-12)
        listed = (z > theta).nonzero().flatten().tolist()
        if k > 0:
            key = a.abs() if topk_by == "activation" else z
            listed += key.topk(min(k, key.numel())).indices.tolist()
        last = {n: i for i, n in enumerate(listed)}
        if last:
            order[layer] = sorted(last, key=last.__getitem__)
    return order


def _without(neurons: Neurons, layer: int, neuron: int | None = None) -> Neurons:
    out = {layer_: list(v) for layer_, v in neurons.items()}
    if neuron is None:
        out.pop(layer, None)
    else:
        out[layer] = [n for n in out[layer] if n != neuron]
        if not out[layer]:
            out.pop(layer)
    return out


# A removal: (layer, None) drops the layer, (layer, neuron) one neuron.
Removal = tuple[int, int | None]


def _greedy_sequential(
    current: Neurons, candidates: list[Removal], succeeds: Callable[[list[Neurons]], list[float]], threshold: float
) -> tuple[Neurons, float | None]:
    last_score = None
    for layer, neuron in candidates:
        hypothesis = _without(current, layer, neuron)
        score = succeeds([hypothesis])[0]
        if score <= threshold:
            current, last_score = hypothesis, score
    return current, last_score


def _greedy_speculative(
    current: Neurons, candidates: list[Removal], succeeds: Callable[[list[Neurons]], list[float]], threshold: float, width: int
) -> tuple[Neurons, float | None]:
    """The sequential greedy decisions, `width` speculative hypotheses per UNet call.

    Each call follows a *predicted* path through the next `width` candidates: candidate j is tested
    against the state the predicted outcomes of the candidates before it lead to, and the state moves
    on only where j is predicted to be dropped. Walking the results, every hypothesis up to and
    including the first misprediction was built on the state the sequential algorithm would have, so
    those decisions are exact; the next call starts after it. Predictions start as "drop" and are
    updated from the outcomes observed in the discarded tail of each call (tested against a state one
    decision away from the true one), which predicts well because blocking is close to monotone.
    """
    last_score = None
    predicted_drop = [True] * len(candidates)
    pos = 0
    while pos < len(candidates):
        window = range(pos, min(len(candidates), pos + width))
        hypotheses, state = [], current
        for j in window:
            layer, neuron = candidates[j]
            hypothesis = _without(state, layer, neuron)
            hypotheses.append(hypothesis)
            if predicted_drop[j]:
                state = hypothesis
        scores = succeeds(hypotheses)
        decided = 0
        for j, hypothesis, score in zip(window, hypotheses, scores, strict=True):
            drop = score <= threshold
            decided += 1
            if drop:
                current, last_score = hypothesis, score  # built on the true state (all earlier predictions held)
            if drop != predicted_drop[j]:
                break
        for j, score in zip(window[decided:], scores[decided:], strict=True):
            predicted_drop[j] = score <= threshold
        pos += decided
    return current, last_score


def localize_prompt(
    unet: Any,
    scheduler: Any,
    embeds: torch.Tensor,
    activations: Sequence[torch.Tensor],
    means: Sequence[torch.Tensor],
    stds: Sequence[torch.Tensor],
    config: LocalizationConfig | None = None,
    *,
    algorithm: Algorithm = "batched",
    width: int = 16,
    max_batch: int = 160,
) -> LocalizationResult:
    """Localize the neurons memorizing one prompt.

    Args:
        unet, scheduler: the pipeline's UNet and (DDIM) scheduler.
        embeds: (1, tokens, dim) prompt embedding.
        activations, means, stds: per NeMo layer, the prompt's activations and the reference statistics.
        config: the constants (default: the paper's).
        algorithm: "batched" or "sequential" (the reference).
        width: hypotheses evaluated together by the batched algorithm.
        max_batch: most latent samples per UNet call.

    Raises:
        InputError: the statistics do not have the UNet's layer widths.
    """
    config = config or LocalizationConfig()
    started = time.perf_counter()
    layers = discover_nemo_layers(unet)
    widths = [layer.width for layer in layers]
    if [int(m.numel()) for m in means] != widths or [int(a.numel()) for a in activations] != widths:
        raise InputError(
            f"neuron statistics have widths {[int(m.numel()) for m in means]}, the UNet's NeMo layers {widths}",
            hint="use statistics computed for this model (fbmem nemo activations --stats)",
        )
    width = 1 if algorithm == "sequential" else max(1, width)
    evaluator = NoiseDiffEvaluator(unet, scheduler, embeds, config.noise, layers=layers, max_batch=max_batch if algorithm == "batched" else config.noise.n_seeds)
    from fbmem_data.nemo.detect import pairwise_max_similarity

    per_seed = pairwise_max_similarity(evaluator.reference, config.noise)
    detection = float(per_seed.max())
    kept = list(range(config.noise.n_seeds))
    if config.seed_filter == "memorized":
        kept = (per_seed > config.tau).nonzero().flatten().tolist() or kept

    def result(status: str, **kw: Any) -> LocalizationResult:
        base: dict[str, Any] = dict(
            initial={}, refined={}, refinement_threshold=None, initial_score=None, refined_score=None, theta=None, top_k=None
        )
        base.update(kw)
        return LocalizationResult(
            status=status, detection_score=detection, threshold=config.tau, counter=evaluator.counter,
            wall_s=time.perf_counter() - started, **base,
        )

    if config.skip_not_memorized and detection <= config.tau:
        return result("not_memorized")

    def scores(hypotheses: list[Neurons]) -> list[float]:
        return evaluator.blocked_scores(hypotheses, kept)

    acts = [a.float().cpu() for a in activations]
    mus, sds = [m.float().cpu() for m in means], [s.float().cpu() for s in stds]
    schedule = config.schedule()
    chosen: tuple[float, int, Neurons, float] | None = None
    last: tuple[float, int, Neurons, float] | None = None
    for start in range(0, len(schedule), width):
        steps = schedule[start : start + width]
        selections = [select_candidates(acts, mus, sds, theta, k, config.topk_by) for theta, k in steps]
        for (theta, k), sel, score in zip(steps, selections, scores(selections), strict=True):
            last = (theta, k, sel, score)
            if score <= config.tau:
                chosen = last
                break
        if chosen:
            break
    if last is None:
        return result("not_mitigated")
    status = "mitigated" if chosen else "not_mitigated"
    theta, k, initial, initial_score = chosen or last
    threshold = config.tau if chosen else initial_score

    greedy = _greedy_sequential if algorithm == "sequential" else (
        lambda cur, cands, fn, thr: _greedy_speculative(cur, cands, fn, thr, width)
    )
    # the reference drops only below the threshold: <= the next smaller float is < threshold
    drop_at = math.nextafter(threshold, -math.inf) if config.refine_strict else threshold
    layer_candidates: list[Removal] = [(layer, None) for layer in sorted(initial, reverse=True)]
    current, score_layers = greedy(initial, layer_candidates, scores, drop_at)
    order = (
        reference_order(acts, mus, sds, theta, k, config.topk_by) if config.refine_order == "reference" else current
    )
    neuron_candidates: list[Removal] = [
        (layer, n) for layer in sorted(current, reverse=True) for n in order[layer] if n in current[layer]
    ]
    refined, score_neurons = greedy(current, neuron_candidates, scores, drop_at)
    refined_score = score_neurons if score_neurons is not None else score_layers
    if refined_score is None:
        refined_score = initial_score  # nothing could be dropped
    return result(
        status, initial=initial, refined=refined, refinement_threshold=threshold, initial_score=initial_score,
        refined_score=refined_score, theta=theta, top_k=k,
    )


def localization_id(model_id: str, stats_reference: str, config: LocalizationConfig, algorithm: Algorithm) -> str:
    from fbmem_data.ids import params_hash

    return params_hash({"model_id": model_id, "stats": stats_reference, "config": config.as_params(), "algorithm": algorithm})


@dataclass(frozen=True)
class LocalizeModel:
    """Model factory of NeMo localization: the pipeline, its NeMo layers and the neuron statistics.

    A worker loads `model`; an in-process engine is lent the pipeline the caller holds (`pipe`) and
    a callback `report(prompt_id, result)` called after each prompt.
    """

    model: str
    model_id: str
    device: str
    stats_reference: str
    config: LocalizationConfig
    algorithm: Algorithm
    width: int
    max_batch: int
    base: dict[str, Any] = field(default_factory=dict)  # localization_id, model_id, algorithm, params, run_id
    pipe: Any = None
    report: Callable[[str, LocalizationResult], None] | None = None

    def __call__(self, ws: Workspace) -> Callable[[Any], dict[str, list[dict[str, Any]]]]:
        from fbmem_data.nemo.stats import load_stats

        pipe = self.pipe
        if pipe is None:
            from fbmem_data.generate.loading import load_pipeline

            pipe = load_pipeline(self.model, device=self.device, model_id=self.model_id).pipe
        _, means, stds = load_stats(ws, self.model_id, self.stats_reference)
        layers = discover_nemo_layers(pipe.unet)

        def localize_rows(rows: Any) -> dict[str, list[dict[str, Any]]]:
            neurons: list[dict[str, Any]] = []
            summaries: list[dict[str, Any]] = []
            for pid, text in zip(rows.column("prompt_id").to_pylist(), rows.column("text").to_pylist(), strict=True):
                got, summary, res = prompt_localization_rows(
                    pipe, layers, text, {**self.base, "prompt_id": pid}, means, stds, self.config,
                    algorithm=self.algorithm, width=self.width, max_batch=self.max_batch,
                )
                neurons += got
                summaries.append(summary)
                if self.report is not None and res is not None:
                    self.report(pid, res)
            # neurons first: a nemo_summary row is the resume marker of a prompt
            return {"nemo_neurons": neurons, "nemo_summary": summaries}

        return localize_rows


def localize_run_config(args: Mapping[str, Any]) -> dict[str, Any]:
    """The `runs` config of a localization call, from its arguments by name (the engine named unless local)."""
    config = args["config"] or LocalizationConfig()
    engine = args.get("engine", "local")
    name = engine if isinstance(engine, str) else engine.name
    return {"model_id": args["model_id"], "n": len(args["prompt_ids"]), "algorithm": args["algorithm"],
            "width": args["width"], "max_batch": args["max_batch"], "stats": args["stats_reference"],
            "localization": config.as_params(), **({} if name == "local" else {"engine": name})}


@recorded("nemo localize", localize_run_config)
def localize_prompts(
    ws: Workspace,
    pipe: Any,
    model_id: str,
    prompt_ids: Sequence[str],
    *,
    config: LocalizationConfig | None = None,
    stats_reference: str | None = None,
    algorithm: Algorithm = "batched",
    width: int = 16,
    max_batch: int = 160,
    run_id: str | None = None,
    progress: Callable[[str, LocalizationResult], None] | None = None,
    engine: str | Distributor = "local",
    engine_options: EngineOptions | None = None,
    device: str = "auto",
    shard_rows: int = 1,
) -> str:
    """Localize every prompt not yet done under this configuration; returns the localization_id.

    The pending prompts are one `nemo-localize` job (LocalizeModel, one prompt per batch-function call)
    run on `engine`. Each shard's neurons, then its nemo_summary rows (the resume marker), are written
    when it is done (shard_rows prompts, default 1); a prompt that raises gets status 'failed' with the
    error and the run goes on.

    Args:
        pipe: a loaded diffusers pipeline (in-process engines), or a model name / directory / hub id
            that the engine's workers load on `device`.
        progress: called with (prompt_id, result) after each prompt (in-process engines).
        engine: "local", "ray", or a Distributor the caller holds; engine_options: how a named one runs.

    Raises:
        InputError: a prompt id is not stored, the statistics are missing or ambiguous, or a loaded
            pipeline given to an engine that runs elsewhere.
    """
    import json

    import pyarrow as pa

    from fbmem_data.distribute import ExtractorJob, open_engine
    from fbmem_data.nemo.stats import load_stats

    config = config or LocalizationConfig()
    reference, _, _ = load_stats(ws, model_id, stats_reference)
    loc_id = localization_id(model_id, reference, config, algorithm)
    done = set(
        ws.sql("SELECT prompt_id FROM nemo_summary WHERE localization_id = $id", {"id": loc_id}).column("prompt_id").to_pylist()
    )
    texts = {
        r["prompt_id"]: r["text"]
        for r in ws.sql("SELECT prompt_id, text FROM prompts WHERE prompt_id IN (SELECT unnest($ids::VARCHAR[]))", {"ids": list(prompt_ids)}).to_pylist()
    }
    unknown = [p for p in prompt_ids if p not in texts]
    if unknown:
        raise InputError(f"{len(unknown)} prompt id(s) are not in the prompts table, e.g. {unknown[:3]}")
    todo = [p for p in dict.fromkeys(prompt_ids) if p not in done]
    # order keeps the caller's order of the prompts on every engine; prompt_id in the key makes the
    # shard ids (which mark shards done) name the prompts, not just their positions
    inputs = pa.table({"order": pa.array(range(len(todo)), pa.int64()), "prompt_id": pa.array(todo, pa.string()),
                       "text": pa.array([texts[p] for p in todo], pa.string())})
    params = json.dumps({"stats": reference, "config": config.as_params(), "width": width, "max_batch": max_batch})
    base = {"localization_id": loc_id, "model_id": model_id, "algorithm": algorithm, "params": params, "run_id": run_id}
    with open_engine(engine, engine_options) as distributor:
        if not isinstance(pipe, str) and not distributor.in_process:
            raise InputError(f"the {distributor.name} engine loads the model on its workers", hint="pass the model by name or path")
        lend = distributor.in_process
        model = LocalizeModel(
            pipe if isinstance(pipe, str) else model_id, model_id, device, reference, config, algorithm, width, max_batch, base,
            pipe=None if isinstance(pipe, str) else pipe, report=progress if lend else None,
        )
        job = ExtractorJob(
            extractor="nemo-localize",
            config_hash=loc_id,
            tables=("nemo_neurons", "nemo_summary"),
            inputs=inputs,
            key=("order", "prompt_id"),
            model=model,
            shard_rows=shard_rows,
            batch_size=1,
        )
        if todo:
            distributor.run(ws, job)
    return loc_id


def prompt_localization_rows(
    pipe: Any,
    layers: Sequence[NemoLayer],
    text: str,
    base: dict[str, Any],
    means: Sequence[torch.Tensor],
    stds: Sequence[torch.Tensor],
    config: LocalizationConfig,
    *,
    algorithm: Algorithm = "batched",
    width: int = 16,
    max_batch: int = 160,
) -> tuple[list[dict[str, Any]], dict[str, Any], LocalizationResult | None]:
    """The batch function of localization, for one prompt: (nemo_neurons rows, nemo_summary row, result).

    `base` holds the summary's identifying fields (localization_id, prompt_id, model_id, algorithm,
    params, run_id). A prompt that raises (other than InputError) gets a 'failed' summary row and
    no result. Write the neurons before the summary: the summary row is the resume marker.
    """
    from fbmem_data.nemo.activations import encode_prompts, layer_activations

    try:
        embeds = encode_prompts(pipe, [text])
        acts = [a[0] for a in layer_activations(layers, embeds)]
        res = localize_prompt(
            pipe.unet, pipe.scheduler, embeds, acts, means, stds, config, algorithm=algorithm, width=width, max_batch=max_batch
        )
    except InputError:
        raise
    except Exception as exc:  # one bad prompt must not end the run: record it
        return [], {**base, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}, None
    rows = [
        {"localization_id": base["localization_id"], "prompt_id": base["prompt_id"], "model_id": base["model_id"],
         "stage": stage, "layer": layer, "neuron": n, "run_id": base["run_id"]}
        for stage, neurons in (("initial", res.initial), ("refined", res.refined))
        for layer, ns in neurons.items()
        for n in ns
    ]
    summary = {
        **base,
        "status": res.status,
        "detection_score": res.detection_score,
        "threshold": res.threshold,
        "refinement_threshold": res.refinement_threshold,
        "initial_score": res.initial_score,
        "refined_score": res.refined_score,
        "theta": res.theta,
        "top_k": res.top_k,
        "n_initial": LocalizationResult.count(res.initial),
        "n_refined": LocalizationResult.count(res.refined),
        "hypotheses": res.counter.hypotheses,
        "unet_samples": res.counter.samples,
        "unet_batches": res.counter.batches,
        "wall_s": res.wall_s,
    }
    return rows, summary, res
