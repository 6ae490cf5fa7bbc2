"""`fbmem report` without a browser: what the HTML holds, the plots, the options and the errors."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from fbmem_data.cli.app import build_app
from fbmem_data.errors import InputError
from fbmem_data.fbmem.scoring import DEFAULT_PRESET
from fbmem_data.report import build_report, build_report_summary
from fbmem_data.testing.sample_workspace import SampleSpec, write_sample_workspace
from fbmem_data.workspace import Workspace

SPEC = SampleSpec(n_prompts=16, seeds=2, k=3)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def page_blob(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    found = re.search(r'<script type="application/json" id="fbmem-data">(.*?)</script>', text, re.S)
    assert found, "the page has no data block"
    return json.loads(found.group(1))


def rows_of(blob: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(zip(blob["cols"], r, strict=True)) for r in blob["rows"]]


@pytest.fixture(scope="module")
def sample_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = Workspace.init(tmp_path_factory.mktemp("report") / "ws")
    write_sample_workspace(ws, SPEC)
    yield ws
    ws.close()


@pytest.fixture(scope="module")
def embedded_report(sample_ws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return build_report_summary(sample_ws, tmp_path_factory.mktemp("out") / "report.html", k=SPEC.k)


def test_report_rows_match_the_label_view_worst_first(sample_ws: Workspace, embedded_report: Any) -> None:
    blob = page_blob(embedded_report.path)
    rows = rows_of(blob)
    labels = sample_ws.sql("SELECT label, count(*) AS n FROM fbmem_labels GROUP BY label", {"tau": 0.8}).to_pylist()
    n_gens = SPEC.n_prompts * SPEC.seeds * len(SPEC.mitigations)
    assert len(rows) == n_gens == embedded_report.generations
    assert {x["label"]: x["n"] for x in labels} == dict(Counter(r["label"] for r in rows))
    pairs = [r["pair"] for r in rows]
    assert pairs == sorted(pairs, reverse=True), "cards must be worst (highest pair score) first"
    assert {r["mit"] for r in rows} == set(SPEC.mitigations)
    # Every row's prompt text resolves, and the seeds are those written.
    assert all(blob["prompts"][r["prompt"]][0].startswith("sample ") for r in rows)
    assert {r["seed"] for r in rows} == set(range(SPEC.seeds))


def test_report_is_self_contained_with_thumbnails_and_top_k(embedded_report: Any) -> None:
    text = embedded_report.path.read_text(encoding="utf-8")
    blob = page_blob(embedded_report.path)
    assert embedded_report.images_mode == "embed"
    assert all(src.startswith("data:image/jpeg;base64,") for src in blob["images"])
    srcs = re.findall(r'src="([^"]*)"', text)
    assert srcs and all(s.startswith("data:") for s in srcs), "nothing may load from outside the file"
    rows = rows_of(blob)
    assert all(len(r["topk"]) == SPEC.k - 1 for r in rows)
    for r in rows:  # other matches rank below the best one
        assert all(m[3] <= r["pair"] + 1e-9 for m in r["topk"])
    # Template prompts map to several training images, the others to one (one-to-many evidence).
    distinct = {r["set"]: len(blob["prompt_matches"][r["pm"]]) for r in rows if r["mit"] == "none"}
    assert distinct["template"] > 1 and distinct["memorized"] == 1


def test_report_states_what_produced_the_labels(embedded_report: Any) -> None:
    header = re.search(r'<div class="prov" id="provenance">(.*?)</div>', embedded_report.path.read_text(), re.S)
    assert header
    for fragment in ("segmenter <b>exact</b>", "metric <b>msssim</b>", "tau <b>0.8</b>", "preset <b>custom</b>"):
        assert fragment in header.group(1)
    meta = page_blob(embedded_report.path)["meta"]
    assert (meta["segmenter"], meta["metric"], meta["tau"], meta["preset"]) == ("exact", "msssim", 0.8, "custom")


def test_plots_are_written_beside_the_report_and_embedded(embedded_report: Any) -> None:
    assert set(embedded_report.plots) == {"rates", "one_to_many", "mitigation"}
    for path in embedded_report.plots.values():
        assert path.parent == embedded_report.path.parent / "report_files" / "plots"
        assert path.read_bytes().startswith(PNG_MAGIC)
    text = embedded_report.path.read_text()
    for name in embedded_report.plots:
        assert f'id="plot-{name}"' in text


def test_tau_changes_the_labels(sample_ws: Workspace, tmp_path: Path) -> None:
    blob = page_blob(build_report(sample_ws, tmp_path / "strict.html", tau=0.999))
    assert {r["label"] for r in rows_of(blob)} == {"NM"}
    assert blob["meta"]["tau"] == 0.999


def test_folder_mode_and_limit(sample_ws: Workspace, tmp_path: Path) -> None:
    summary = build_report_summary(sample_ws, tmp_path / "big.html", images="folder", limit=5)
    blob = page_blob(summary.path)
    assert summary.images_mode == "folder" and len(blob["rows"]) == 5
    for src in blob["images"]:
        assert src.startswith("big_files/thumbs/")
        assert (tmp_path / src).read_bytes()[:2] == b"\xff\xd8"  # JPEG
    # The summary still covers every generation, not only the 5 shown.
    rates = re.search(r'id="rates-table">(.*?)</table>', summary.path.read_text(), re.S)
    assert rates
    counts = [int(n) for n in re.findall(r"<td>(\d+)</td><td>\d+ \(", rates.group(1))]
    assert sum(counts) == SPEC.n_prompts * SPEC.seeds * len(SPEC.mitigations)


def test_missing_image_file_is_shown_as_not_stored(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    write_sample_workspace(ws, SampleSpec(n_prompts=4, seeds=1, mitigations=("none",), k=2))
    victim = ws.sql("SELECT generated_image_id FROM report_generations LIMIT 1").column(0)[0].as_py()
    ws.image_path(victim).unlink()
    summary = build_report_summary(ws, tmp_path / "r.html")
    assert victim in summary.thumbnail_errors
    blob = page_blob(summary.path)
    first = rows_of(blob)[0]
    assert blob["images"][first["gi"]] is None


def test_prompt_text_cannot_break_out_of_the_page(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    write_sample_workspace(ws, SampleSpec(n_prompts=4, seeds=1, mitigations=("none",), k=2))
    evil = "</script><script>alert(1)</script><!--"
    pid = ws.sql("SELECT prompt_id FROM prompts LIMIT 1").column(0)[0].as_py()
    # A second prompts row cannot replace the first (same key), so write the evil text into a fresh prompt
    # and point one generation at it.
    ws.write("prompts", [{"prompt_id": "evil0000evil0000", "prompt_set": "memorized", "text": evil, "source_key": "x"}])
    gen = ws.sql("SELECT * FROM generations WHERE prompt_id = $p LIMIT 1", {"p": pid}).to_pylist()[0]
    gen.update(generation_id="evil-generation", prompt_id="evil0000evil0000", seed=99)
    ws.write("generations", [gen])
    out = build_report(ws, tmp_path / "r.html")
    text = out.read_text()
    assert evil not in text
    assert text.count("</script>") == 2  # the data block's and the script's own
    assert any(p[0] == evil for p in page_blob(out)["prompts"])


def test_utility_view_gives_the_mitigation_scatter(sample_ws: Workspace, tmp_path: Path) -> None:
    # A stand-in for the utility view the mitigation evaluation defines (fbmem_data.report.gather.UTILITY_RELATION),
    # on this process's connection only, dropped afterwards (the module's other tests share the workspace).
    con = sample_ws.connection()
    con.execute(
        "CREATE OR REPLACE VIEW mitigation_utility AS SELECT * FROM (VALUES ('none', 0.91, 'object shown'), "
        "('nemo', 0.84, 'object shown')) AS u(method, utility, utility_metric)"
    )
    try:
        summary = build_report_summary(sample_ws, tmp_path / "r.html")
    finally:
        sample_ws.close()  # the next connection defines the real view (sql/55_utility.sql) again
    text = summary.path.read_text()
    table = re.search(r'<table class="rates" id="mitigation-table">(.*?)</table>', text, re.S)
    assert table, "no mitigation table"
    assert "<th>object shown</th>" in table.group(1) and "<td>0.84</td>" in table.group(1), table.group(1)
    assert "No utility is recorded" not in text


def test_report_without_scores_is_a_clear_error(workspace: Workspace, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no FB-Mem scores"):
        build_report(workspace, tmp_path / "r.html")


def test_bad_options_are_clear_errors(sample_ws: Workspace, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="HTML"):
        build_report(sample_ws, tmp_path / "r.pdf")
    with pytest.raises(InputError, match="images"):
        build_report(sample_ws, tmp_path / "r.html", images="zip")


def test_thumbnail_draws_the_mask_outline(tmp_path: Path) -> None:
    from PIL import Image

    from fbmem_data.fbmem.images import encode_mask
    from fbmem_data.report.thumbnails import make_thumbnail

    path = tmp_path / "grey.png"
    Image.fromarray(np.full((64, 64, 3), 60, np.uint8)).save(path)
    mask = np.zeros((64, 64), np.float32)
    mask[16:48, 16:48] = 1.0
    import io

    plain = np.asarray(Image.open(io.BytesIO(make_thumbnail(path, None, size=128))))
    outlined = np.asarray(Image.open(io.BytesIO(make_thumbnail(path, encode_mask(mask), size=128))))
    assert plain.shape == outlined.shape == (128, 128, 3)
    yellow = (outlined[..., 0] > 180) & (outlined[..., 1] > 160) & (outlined[..., 2] < 100)
    assert not ((plain[..., 0] > 180) & (plain[..., 2] < 100)).any()
    assert yellow.sum() > 100  # the square's outline, 4 x ~64 px at 2x
    assert not yellow[40:88, 40:88].any(), "the inside of the object is not painted"


def test_cli_report(sample_ws: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "cli.html"
    result = CliRunner().invoke(build_app(), ["report", "-w", str(sample_ws.root), "-o", str(out), "--k", "2"])
    assert result.exit_code == 0, result.output
    assert f"report: {out}" in result.output
    assert "plot rates:" in result.output
    assert all(len(r["topk"]) == 1 for r in rows_of(page_blob(out)))


def test_browser_driver_names_a_missing_chromium(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from fbmem_data.testing.browser import BrowserError, HeadlessChromium

    monkeypatch.setenv("FBMEM_CHROMIUM", str(tmp_path / "no-such-chromium"))
    with pytest.raises(BrowserError, match="does not exist") as info:
        HeadlessChromium()
    assert "apt-get install chromium" in str(info.value)


@pytest.mark.slow
def test_report_over_real_segmenter_and_scorer(tmp_path: Path) -> None:
    """The views join what `fbmem segment` and `fbmem score` really write (masks by segmenter settings)."""
    import datetime as dt
    import io

    import torch
    from PIL import Image

    from fbmem_data.fbmem import score_pairs, segment_images
    from fbmem_data.ids import prompt_id
    from fbmem_data.testing.scenes import planted_pair, to_uint8

    torch.set_num_threads(1)
    ws = Workspace.init(tmp_path / "ws")
    now = dt.datetime.now(dt.timezone.utc)
    images, prompts, generations, train_ids, gen_ids = [], [], [], [], []

    def add(arr: np.ndarray, role: str) -> str:
        buf = io.BytesIO()
        Image.fromarray(to_uint8(arr)).save(buf, "PNG")
        image_id, path = ws.store_image(buf.getvalue(), "png")
        images.append({"image_id": image_id, "role": role, "store_path": str(path.relative_to(ws.root)), "width": 64,
                       "height": 64, "status": "ok", "ingested_at": now})
        return image_id

    for i, truth in enumerate(("FM", "NM")):
        pair = planted_pair(i, truth, size=64)
        train_ids.append(add(pair.train, "train"))
        gen_ids.append(add(pair.generated, "generated"))
        pid = prompt_id("lab", str(i), f"prompt {i}")
        prompts.append({"prompt_id": pid, "prompt_set": "lab", "text": f"prompt {i}", "source_key": str(i)})
        generations.append({"generation_id": f"g{i}", "image_id": gen_ids[-1], "prompt_id": pid, "model_id": "m",
                            "seed": 0, "mitigation": "none"})
    ws.write("images", images)
    ws.write("prompts", prompts)
    ws.write("generations", generations)
    ws.write("candidates", [{"pairing_id": "p", "generated_image_id": g, "train_image_id": t, "method": "exhaustive"}
                            for g in gen_ids for t in train_ids])
    segment_images(ws, "saliency", device="cpu")
    score_pairs(ws, "p", size=176, segmenter="saliency", device="cpu")

    summary = build_report_summary(ws, tmp_path / "r.html")
    assert summary.thumbnail_errors == {} and summary.images == 4
    assert ws.sql("SELECT count(*) FROM report_masks").column(0)[0].as_py() == 4
    meta = page_blob(summary.path)["meta"]
    assert (meta["segmenter"], meta["metric"], meta["size"]) == ("saliency", DEFAULT_PRESET["metric"], 176)
    rows = rows_of(page_blob(summary.path))
    assert {r["label"] for r in rows} <= {"VM", "BM", "FM", "NM"} and len(rows) == 2
    assert all(len(r["topk"]) == 1 for r in rows)


def test_summary_html_is_escaped_by_the_template(tmp_path: Path) -> None:
    # Names a user chose (prompt set, title) reach the server-rendered tables and header: Jinja2 autoescape.
    ws = Workspace.init(tmp_path / "ws")
    write_sample_workspace(ws, SampleSpec(n_prompts=4, seeds=1, mitigations=("none",), k=2))
    evil_set = '<img src=x onerror="alert(1)">'
    pid = ws.sql("SELECT prompt_id FROM prompts LIMIT 1").column(0)[0].as_py()
    ws.write("prompts", [{"prompt_id": "evil0000evil0001", "prompt_set": evil_set, "text": "a prompt", "source_key": "y"}])
    gen = ws.sql("SELECT * FROM generations WHERE prompt_id = $p LIMIT 1", {"p": pid}).to_pylist()[0]
    gen.update(generation_id="evil-generation-2", prompt_id="evil0000evil0001", seed=98)
    ws.write("generations", [gen])
    out = build_report(ws, tmp_path / "r.html", title="<b>my</b> & report")
    text = out.read_text()
    assert evil_set not in text and "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in text
    assert "<title>&lt;b&gt;my&lt;/b&gt; &amp; report</title>" in text
    table = re.search(r'<table class="rates" id="rates-table">(.*?)</table>', text, re.S)
    assert table and table.group(1).count("<tr>") >= 3, "the rates table lost its rows"


def test_thumbnails_are_large_enough_for_sd_images(embedded_report: Any) -> None:
    # 128-px thumbnails were too small to judge a 512-px SD image; the cards show THUMB_SIZE (256) px.
    import base64
    import io

    from PIL import Image

    from fbmem_data.report.builder import THUMB_SIZE

    assert THUMB_SIZE >= 256
    blob = page_blob(embedded_report.path)
    sizes = {Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size for src in blob["images"][:8]}
    assert sizes and all(max(s) == THUMB_SIZE for s in sizes), sizes


def test_report_escapes_through_jinja2_not_by_hand() -> None:
    # The page used to be f-strings with hand-placed html.escape calls (one missed call is an injection);
    # now every value goes through the Jinja2 templates' autoescape.
    sources = sorted((Path(__file__).resolve().parents[1] / "fbmem_data" / "report").glob("*.py"))
    assert sources
    for path in sources:
        text = path.read_text(encoding="utf-8")
        assert "html.escape" not in text and "import html\n" not in text, f"{path.name} escapes by hand"
    from fbmem_data.report.render import _env

    assert _env().autoescape is True


def test_mitigation_table_shows_the_seed_to_seed_spread(sample_ws: Workspace, embedded_report: Any) -> None:
    text = embedded_report.path.read_text()
    table = re.search(r'<table class="rates" id="mitigation-table">(.*?)</table>', text, re.S)
    assert table and "<th>score per seed (± sd)</th>" in table.group(1)
    assert "over 2 seeds (<code>mitigation_seed_spread</code>)" in text
    for r in sample_ws.sql("SELECT * FROM mitigation_seed_spread WHERE method <> 'none'").to_pylist():
        assert r["seeds"] == SPEC.seeds
        assert f"<td>{r['score_per_seed']:.1f} ± {r['score_per_seed_sd']:.1f}</td>" in table.group(1)
