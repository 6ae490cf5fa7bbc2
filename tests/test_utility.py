"""Utility metrics (plug-in family "utility"): one contract suite for every plug-in, then the lab judge
against the truth, CLIP score against torchmetrics' formula, the runner, the SQL views and the CLI.

Plug-ins are built as they run without downloads: `lab-colours` with the shipped lab segmenter,
`clip` as a tiny randomly initialised OpenCLIP model (OpenCLIP's own built-in tokenizer).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fbmem_data.errors import InputError, ModelNotFoundError
from fbmem_data.ids import prompt_id
from fbmem_data.lab.dataset import encode_png, make_lab_dataset
from fbmem_data.plugins import names
from fbmem_data.utility.base import UtilityInput, UtilityMetric, UtilityValue
from fbmem_data.utility.runner import load_plugins, make_utility_metric, score_utility, utility_id
from fbmem_data.workspace import Workspace

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
OPTIONS: dict[str, dict[str, Any]] = {
    "lab-colours": {},
    "clip": {"random_init": True, "model_overrides": TINY_CLIP},
}
VALUE_RANGE = {"lab-colours": (0.0, 1.0), "clip": (0.0, 100.0)}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def lab() -> Any:
    return make_lab_dataset(0)


def build(name: str, device: str = "cpu") -> UtilityMetric:
    return make_utility_metric(name, device, OPTIONS[name])


@pytest.fixture(scope="module", params=sorted(OPTIONS))
def metric(request: pytest.FixtureRequest) -> UtilityMetric:
    return build(request.param)


def test_every_registered_plugin_is_in_the_suite() -> None:
    assert load_plugins() == names("utility") == sorted(OPTIONS)


def sample_items(lab: Any) -> list[UtilityInput]:
    """Lab drawings under their own captions, plus one under another group's caption."""
    trained = [p for p in lab.prompts if p.image_keys]
    picks = [trained[0], trained[7], trained[20], trained[-1]]
    items = [UtilityInput(lab.images[p.image_keys[0]].pixels, p.text, p.key) for p in picks]
    items.append(UtilityInput(lab.images[picks[0].image_keys[0]].pixels, picks[2].text, "swapped"))
    bigger = lab.images[picks[1].image_keys[0]].pixels.repeat(2, axis=0).repeat(2, axis=1)[:100, :90]
    items.append(UtilityInput(np.ascontiguousarray(bigger), picks[1].text, "not-64x64"))
    return items


def bad_prompt_item(name: str, image: np.ndarray) -> UtilityInput:
    """An item the plug-in cannot score: a caption the lab never drew / an empty prompt for CLIP."""
    return UtilityInput(image, "a photo of the Eiffel tower at night" if name == "lab-colours" else "  ", "bad")


# -- the contract ----------------------------------------------------------------------------------
def test_protocol_and_values_in_range(metric: UtilityMetric, lab: Any) -> None:
    assert isinstance(metric, UtilityMetric)
    assert isinstance(metric.metric, str) and metric.metric
    items = sample_items(lab)
    values = metric.score(items)
    assert len(values) == len(items) and all(isinstance(v, UtilityValue) for v in values)
    lo, hi = VALUE_RANGE[metric.name]
    for v in values:
        assert v.error is None and v.value is not None and lo <= v.value <= hi, v
        json.dumps(v.detail)
    assert metric.score([]) == []


def test_one_value_per_item_in_order(metric: UtilityMetric, lab: Any) -> None:
    items = sample_items(lab)
    batch = [v.value for v in metric.score(items)]
    reversed_batch = [v.value for v in metric.score(items[::-1])][::-1]
    one_by_one = [metric.score([it])[0].value for it in items]
    assert reversed_batch == pytest.approx(batch, abs=1e-4)
    assert one_by_one == pytest.approx(batch, abs=1e-4)


def test_per_item_problem_is_an_error_value_not_an_exception(metric: UtilityMetric, lab: Any) -> None:
    items = sample_items(lab)
    mixed = [items[0], bad_prompt_item(metric.name, items[1].image), items[1]]
    values = metric.score(mixed)
    assert [v.error is None for v in values] == [True, False, True]
    assert values[1].value is None and values[1].error
    good = metric.score([items[0], items[1]])
    assert [values[0].value, values[2].value] == pytest.approx([v.value for v in good], abs=1e-4)


@pytest.mark.parametrize(
    "image",
    [np.zeros((16, 16), np.uint8), np.zeros((16, 16, 4), np.uint8), np.zeros((16, 16, 3), np.float32), "not an image"],
    ids=["grey", "rgba", "float", "str"],
)
def test_malformed_image_raises_input_error(metric: UtilityMetric, lab: Any, image: Any) -> None:
    good = sample_items(lab)[0]
    with pytest.raises(InputError, match="item 1"):
        metric.score([good, UtilityInput(image, good.prompt_text)])


def test_params_stable_jsonable_and_device_free(metric: UtilityMetric) -> None:
    again = build(metric.name, device="auto")
    assert metric.params() == again.params()
    assert utility_id(metric) == utility_id(again)
    text = json.dumps(metric.params(), sort_keys=True)
    assert '"cpu"' not in text and "cuda" not in text


# -- lab-colours against the truth ----------------------------------------------------------------------
@pytest.mark.slow  # ~30 s: draws and scores the lab set
def test_lab_judge_prefers_the_true_caption(lab: Any) -> None:
    """Every trained drawing scores higher, on average, under its own caption than under another group's."""
    judge = build("lab-colours")
    trained = [p for p in lab.prompts if p.image_keys]
    own = [UtilityInput(lab.images[p.image_keys[0]].pixels, p.text) for p in trained]
    other = [UtilityInput(it.image, trained[(i + 7) % len(trained)].text) for i, it in enumerate(own)]
    own_values = np.array([v.value for v in judge.score(own)])
    other_values = np.array([v.value for v in judge.score(other)])
    assert own_values.mean() >= 0.85
    assert own_values.mean() - other_values.mean() >= 0.5
    # control captions (never drawn) are judged from the spec the caption describes
    control = next(p for p in lab.prompts if p.group == "control")
    assert control.text in judge.named and set(judge.named[control.text]) == {"object", "background"}


# -- clip against torchmetrics' CLIPScore formula -----------------------------------------------------
class _HfLikeClip:
    """Presents an OpenCLIP model with the CLIPModel/CLIPProcessor calls torchmetrics makes."""

    def __init__(self, clip: Any) -> None:
        from types import SimpleNamespace

        self.clip, self.config = clip, SimpleNamespace()

    def to(self, device: Any) -> _HfLikeClip:
        return self

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.clip.model.encode_image(pixel_values)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.clip.model.encode_text(input_ids)

    def __call__(self, images: Any = None, text: Any = None, **_: Any) -> dict[str, torch.Tensor]:
        from torchvision.transforms.functional import to_pil_image

        if images is not None:
            return {"pixel_values": torch.stack([self.clip.preprocess(to_pil_image(im)) for im in images])}
        ids = self.clip.tokenizer(text)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_clip_score_matches_torchmetrics_formula(lab: Any) -> None:
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update

    clip = build("clip")
    rng = np.random.default_rng(1)
    items = [*sample_items(lab), UtilityInput(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8), "a blue square")]
    ours = clip.score(items)
    hf = _HfLikeClip(clip)
    with torch.inference_mode():
        raw, n = _clip_score_update([torch.from_numpy(it.image).permute(2, 0, 1) for it in items],
                                    [it.prompt_text for it in items], hf, hf)
    assert n == len(items)
    expected = torch.clamp(raw, min=0).double().numpy()  # CLIPScore = max(100 * cos, 0), per image here
    assert [v.value for v in ours] == pytest.approx(expected.tolist(), abs=1e-3)
    assert [v.detail["cosine"] for v in ours] == pytest.approx((raw.double().numpy() / 100).tolist(), abs=1e-5)
    # and our own reading of the formula: 100 * max(cos(E_i, E_t), 0) on unit embeddings
    e_i, e_t = clip.embed_images([items[0].image]), clip.embed_texts([items[0].prompt_text])
    assert ours[0].value == pytest.approx(100 * max(float(e_i[0] @ e_t[0]), 0.0), abs=1e-4)


def test_clip_needs_local_weights_and_loads_a_checkpoint(tmp_path: Path, lab: Any) -> None:
    with pytest.raises(ModelNotFoundError, match="local weights") as info:
        make_utility_metric("clip", "cpu", {})
    assert "hf download" in (info.value.hint or "")
    with pytest.raises(ModelNotFoundError, match="do not exist"):
        make_utility_metric("clip", "cpu", {"pretrained": str(tmp_path / "missing.safetensors")})
    source = build("clip")
    checkpoint = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(source.model.state_dict(), checkpoint)
    loaded = make_utility_metric("clip", "cpu", {"pretrained": str(checkpoint), "model_overrides": TINY_CLIP})
    items = sample_items(lab)
    assert [v.value for v in loaded.score(items)] == pytest.approx([v.value for v in source.score(items)], abs=1e-5)
    assert loaded.params()["weights"] != source.params()["weights"]


# -- runner, SQL views, CLI -----------------------------------------------------------------------------
def _store(ws: Workspace, pixels: np.ndarray) -> str:
    image_id, path = ws.store_image(encode_png(pixels), "png")
    ws.write("images", [{"image_id": image_id, "role": "generated", "store_path": str(path.relative_to(ws.root)),
                         "width": pixels.shape[1], "height": pixels.shape[0], "status": "ok",
                         "ingested_at": dt.datetime.now(dt.timezone.utc)}])
    return image_id


def lab_generations(ws: Workspace, lab: Any) -> dict[str, Any]:
    """Three lab prompts x two seeds: `none` draws the true training image, `nemo` seed 0 a wrong one,
    `nemo` seed 1 the true one; plus a `rta` generation whose image file is missing."""
    trained = [p for p in lab.prompts if p.image_keys and p.group in ("VM", "unique")][:3]
    prompts, gens = [], []
    for k, p in enumerate(trained):
        pid = prompt_id("lab-train", p.key, p.text)
        prompts.append({"prompt_id": pid, "prompt_set": "lab-train", "text": p.text, "source_key": p.key})
        truth = lab.images[p.image_keys[0]].pixels
        wrong = lab.images[trained[(k + 1) % 3].image_keys[0]].pixels
        for seed in (0, 1):
            for mitigation, pixels in (("none", truth), ("nemo", wrong if seed == 0 else truth)):
                gens.append({"generation_id": f"{p.key}-{mitigation}-{seed}", "image_id": _store(ws, pixels),
                             "prompt_id": pid, "model_id": "lab-model", "seed": seed, "steps": 10,
                             "mitigation": mitigation})
    gens.append({"generation_id": "lost", "image_id": "f" * 64, "prompt_id": prompts[0]["prompt_id"],
                 "model_id": "lab-model", "seed": 0, "steps": 10, "mitigation": "rta"})
    ws.write("prompts", prompts)
    ws.write("generations", gens)
    return {"prompts": prompts, "generations": gens}


def test_runner_scores_resumes_records_errors_and_views_average(workspace: Workspace, lab: Any) -> None:
    lab_generations(workspace, lab)
    first = score_utility(workspace, "lab-colours", device="cpu", batch_size=4)
    # 12 generations share images: nemo seed 1 == none seed 1 bytes, so distinct (image, prompt) pairs are fewer
    n_pairs = workspace.sql("SELECT count(*) FROM (SELECT DISTINCT image_id, prompt_id FROM generations)").column(0)[0].as_py()
    assert first["pending"] == first["scored"] == n_pairs and first["errors"] == 1
    assert workspace.count("utility_scores") == n_pairs
    again = score_utility(workspace, "lab-colours", device="cpu", batch_size=4)
    assert (again["pending"], again["scored"]) == (0, 0) and workspace.count("utility_scores") == n_pairs

    lost = workspace.sql("SELECT status, value, error FROM utility_scores WHERE generated_image_id = $i",
                         {"i": "f" * 64}).to_pylist()
    assert len(lost) == 1 and lost[0]["status"] == "error" and lost[0]["value"] is None and "f" * 8 in lost[0]["error"]

    per_gen = workspace.sql("""
        SELECT g.mitigation, g.prompt_id, g.seed, s.value FROM generations g
        JOIN utility_scores s ON s.generated_image_id = g.image_id AND s.prompt_id = g.prompt_id
        WHERE s.status = 'ok'""").to_pylist()
    by_method: dict[str, list[float]] = {}
    for r in per_gen:
        by_method.setdefault(r["mitigation"], []).append(r["value"])
    none_of = {(r["prompt_id"], r["seed"]): r["value"] for r in per_gen if r["mitigation"] == "none"}
    nemo = [r for r in per_gen if r["mitigation"] == "nemo"]

    view = {r["method"]: r for r in workspace.sql("SELECT * FROM mitigation_utility").to_pylist()}
    assert set(view) == {"none", "nemo"}  # rta's only generation has no value
    for method, values in by_method.items():
        assert view[method]["n"] == len(values) == 6
        assert view[method]["utility"] == pytest.approx(np.mean(values))
    assert view["none"]["utility_change"] == pytest.approx(0.0)
    expected_change = np.mean([r["value"] for r in nemo]) / np.mean([none_of[(r["prompt_id"], r["seed"])] for r in nemo]) - 1
    assert view["nemo"]["utility_change"] == pytest.approx(expected_change)
    assert view["nemo"]["utility_change"] < -0.2  # wrong drawings for half of nemo's generations
    assert view["nemo"]["utility_metric"].startswith("lab colour match")

    # another plug-in's configuration does not mix in; the views pick one by plug-in or id
    clip_summary = score_utility(workspace, "clip", options=OPTIONS["clip"], device="cpu", mitigations=["none"])
    assert clip_summary["pending"] == 3 and clip_summary["errors"] == 0  # seeds 0 and 1 of `none` share bytes
    clip_view = {r["method"]: r for r in
                 workspace.sql("SELECT * FROM mitigation_utility", {"utility_plugin": "clip"}).to_pylist()}
    # nemo's seed-1 generations are the same bytes as none's, so they share the stored value
    assert {m: r["n"] for m, r in clip_view.items()} == {"none": 6, "nemo": 3}
    assert clip_view["none"]["utility_metric"].startswith("CLIP score")
    assert clip_view["nemo"]["utility_change"] == pytest.approx(0.0, abs=1e-9)
    by_id = workspace.sql("SELECT * FROM mitigation_utility", {"utility_id": first["utility_id"]}).to_pylist()
    assert {r["method"] for r in by_id} == {"none", "nemo"}
    # the lab view splits the same values by planted group (lab_truth): one group per prompt here
    groups = {r["prompt_id"]: ("VM", "unique", "VM")[k] for k, r in enumerate(
        workspace.sql("SELECT prompt_id FROM prompts ORDER BY prompt_id").to_pylist())}
    workspace.write("lab_truth", [{"prompt_id": pid, "planted_group": g, "group_key": f"g{k}", "prompt_set": "lab-train",
                                   "dataset_seed": 0, "train_image_ids": [], "repeats": 1}
                                  for k, (pid, g) in enumerate(groups.items())])
    by_group = workspace.sql("SELECT * FROM mitigation_utility_by_group", {"utility_id": first["utility_id"]}).to_pylist()
    lab_values = workspace.sql("""
        SELECT g.mitigation, g.prompt_id, s.value FROM generations g
        JOIN utility_scores s ON s.generated_image_id = g.image_id AND s.prompt_id = g.prompt_id
        WHERE s.status = 'ok' AND s.utility_id = $u""", {"u": first["utility_id"]}).to_pylist()
    expected: dict[tuple[str, str], list[float]] = {}
    for r in lab_values:
        expected.setdefault((r["mitigation"], groups[r["prompt_id"]]), []).append(r["value"])
    assert {(r["method"], r["planted_group"]): (r["n"], pytest.approx(r["utility"])) for r in by_group} == {
        key: (len(v), np.mean(v)) for key, v in expected.items()}
    assert {r["planted_group"] for r in by_group} == {"VM", "unique"} and len(by_group) == 4


def test_cli_score_and_show(workspace: Workspace, lab: Any) -> None:
    from typer.testing import CliRunner

    from fbmem_data.cli.app import build_app

    lab_generations(workspace, lab)
    app, ws = build_app(), str(workspace.root)
    args = ["utility", "score", "-w", ws, "--metric", "clip", "-O", "random_init=true",
            "-O", f"model_overrides={json.dumps(TINY_CLIP)}", "--device", "cpu", "--mitigation", "none",
            "--mitigation", "nemo", "--model-id", "lab-model", "--batch-size", "5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = result.stdout.strip().splitlines()[-1]
    assert "scored=" in summary and "errors=0" in summary and "pending=" in summary
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "scored=0" in again.stdout
    shown = CliRunner().invoke(app, ["utility", "show", "-w", ws, "-f", "json"])
    assert shown.exit_code == 0, shown.output
    rows = json.loads(shown.stdout)
    assert {r["method"] for r in rows} == {"none", "nemo"} and all(0 <= r["utility"] <= 100 for r in rows)

    bad = CliRunner().invoke(app, ["utility", "score", "-w", ws, "--metric", "clip", "-O", "novalue"])
    assert isinstance(bad.exception, InputError) and "KEY=VALUE" in str(bad.exception)
    missing = CliRunner().invoke(app, ["utility", "score", "-w", ws, "--metric", "clip", "--device", "cpu"])
    assert isinstance(missing.exception, ModelNotFoundError)
    unknown = CliRunner().invoke(app, ["utility", "score", "-w", ws, "--metric", "nope", "--device", "cpu"])
    assert "unknown utility" in str(unknown.exception)
