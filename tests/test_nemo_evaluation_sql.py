"""NeMo's memorization and diversity figures (SSCD to the training image, to the unmitigated image,
pairwise among seeds; median +- MAD over prompts) from stored embeddings, on hand-made unit vectors."""

from __future__ import annotations

import math
import statistics

import pytest

from fbmem_data.workspace import Workspace


def _unit(angle: float) -> list[float]:
    return [math.cos(angle), math.sin(angle)]


def _gen(gid: str, prompt: str, seed: int, mitigation: str) -> dict[str, object]:
    return {
        "generation_id": gid,
        "image_id": f"img-{gid}",
        "prompt_id": prompt,
        "model_id": "m",
        "seed": seed,
        "steps": 50,
        "guidance": 7.0,
        "height": 64,
        "width": 64,
        "mitigation": mitigation,
    }


def _emb(image_id: str, angle: float, embedder: str = "sscd", params: str = "w1") -> dict[str, object]:
    return {
        "image_id": image_id,
        "embedder": embedder,
        "params_hash": params,
        "dim": 2,
        "vector": _unit(angle),
        "status": "ok",
    }


@pytest.fixture
def ws(workspace: Workspace) -> Workspace:
    workspace.write(
        "prompts",
        [
            {
                "prompt_id": "p1",
                "prompt_set": "memorized",
                "text": "one",
                "source_key": "1",
                "memorization_type": "VM",
            },
            {
                "prompt_id": "p2",
                "prompt_set": "memorized",
                "text": "two",
                "source_key": "2",
                "memorization_type": "TM",
            },
        ],
    )
    workspace.write(
        "train_links",
        [
            {"image_id": "t1a", "prompt_id": "p1", "relation": "url"},
            {"image_id": "t1b", "prompt_id": "p1", "relation": "url"},
            {"image_id": "t2", "prompt_id": "p2", "relation": "url"},
        ],
    )
    gens = [_gen(f"{p}-{m}-{s}", p, s, m) for p in ("p1", "p2") for m in ("none", "nemo") for s in (1, 2, 3)]
    workspace.write("generations", gens)
    # angles (radians): training images, then each generation
    angles = {"t1a": 0.0, "t1b": 0.2, "t2": 1.0}
    for i, g in enumerate(gens):
        base = 0.0 if g["prompt_id"] == "p1" else 1.0
        shift = 0.05 * g["seed"] if g["mitigation"] == "none" else 0.5 + 0.1 * g["seed"]
        angles[str(g["image_id"])] = base + shift + 0.001 * i
    workspace.write("embeddings", [_emb(k, a) for k, a in angles.items()])
    # a second configuration with fewer vectors, and another embedder: neither may leak in
    workspace.write(
        "embeddings", [_emb("t1a", 3.0, params="w0"), _emb("img-p1-none-1", 3.0, embedder="open_clip")]
    )
    workspace.angles = angles  # type: ignore[attr-defined]
    return workspace


def test_per_prompt_figures_match_a_direct_computation(ws: Workspace) -> None:
    a = ws.angles  # type: ignore[attr-defined]
    cos = lambda x, y: math.cos(a[x] - a[y])  # noqa: E731 - unit vectors: the cosine of the angle difference
    trains = {"p1": ["t1a", "t1b"], "p2": ["t2"]}
    orig = {
        (r["method"], r["prompt_id"]): r for r in ws.sql("SELECT * FROM nemo_sim_orig_per_prompt").to_pylist()
    }
    gen = {
        (r["method"], r["prompt_id"]): r for r in ws.sql("SELECT * FROM nemo_sim_gen_per_prompt").to_pylist()
    }
    div = {
        (r["method"], r["prompt_id"]): r
        for r in ws.sql("SELECT * FROM nemo_diversity_per_prompt").to_pylist()
    }
    assert set(gen) == {("nemo", "p1"), ("nemo", "p2")}
    for m in ("none", "nemo"):
        for p in ("p1", "p2"):
            imgs = [f"img-{p}-{m}-{s}" for s in (1, 2, 3)]
            per_image = [statistics.median(cos(i, t) for t in trains[p]) for i in imgs]
            assert orig[(m, p)]["sim_max"] == pytest.approx(max(per_image), abs=1e-6)
            assert orig[(m, p)]["sim_median"] == pytest.approx(statistics.median(per_image), abs=1e-6)
            pairs = [cos(imgs[i], imgs[j]) for i in range(3) for j in range(i + 1, 3)]
            assert div[(m, p)]["pairs"] == 3 and div[(m, p)]["sim_median"] == pytest.approx(
                statistics.median(pairs), abs=1e-6
            )
            if m == "nemo":
                twins = [cos(f"img-{p}-nemo-{s}", f"img-{p}-none-{s}") for s in (1, 2, 3)]
                assert gen[(m, p)]["sim_median"] == pytest.approx(statistics.median(twins), abs=1e-6)


def test_summary_is_median_and_mad_over_prompts(ws: Workspace) -> None:
    rows = ws.sql("SELECT * FROM nemo_evaluation WHERE figure = 'sim_orig_max'").to_pylist()
    per = {
        (r["method"], r["prompt_id"]): r["sim_max"]
        for r in ws.sql("SELECT * FROM nemo_sim_orig_per_prompt").to_pylist()
    }
    by = {(r["method"], r["memorization_type"]): r for r in rows}
    assert set(by) == {(m, t) for m in ("none", "nemo") for t in ("VM", "TM", "all")}
    vals = [per[("nemo", "p1")], per[("nemo", "p2")]]
    med = statistics.median(vals)
    assert by[("nemo", "all")]["median"] == pytest.approx(med) and by[("nemo", "all")]["n_prompts"] == 2
    assert by[("nemo", "all")]["mad"] == pytest.approx(statistics.median(abs(v - med) for v in vals))
    assert (
        by[("nemo", "VM")]["median"] == pytest.approx(per[("nemo", "p1")]) and by[("nemo", "VM")]["mad"] == 0
    )
    # nemo moved every image away from its training images: lower similarity than none
    assert by[("nemo", "all")]["median"] < by[("none", "all")]["median"]
    assert {r["embedder"] for r in rows} == {"sscd"}
    # the CLIP variant reads the other embedder (one image only: no training-image pair, no rows)
    assert (
        ws.sql("SELECT count(*) AS n FROM nemo_evaluation", {"nemo_embedder": "open_clip"})
        .column("n")[0]
        .as_py()
        == 0
    )
