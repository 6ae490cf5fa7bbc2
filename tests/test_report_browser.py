"""The report in a real browser: headless Chromium over the DevTools protocol (fbmem_data.testing.browser).

Chromium comes from the Debian packages `chromium` and `chromium-driver` (.ci/run installs them). Without it
the test fails in CI (CI is set) and is skipped on a developer machine. A screenshot is kept in
test-artifacts/ (git-ignored) and in pytest's tmp dir.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from fbmem_data.report import build_report_summary
from fbmem_data.report.builder import THUMB_SIZE
from fbmem_data.testing.browser import HeadlessChromium, find_chromium
from fbmem_data.testing.sample_workspace import SampleSpec, write_sample_workspace
from fbmem_data.workspace import Workspace

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SPEC = SampleSpec(n_prompts=16, seeds=2, k=3)


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = find_chromium()
    if exe is None:
        message = (
            "Chromium is not installed: the report's browser test needs it. "
            "Install the Debian packages: apt-get install chromium chromium-driver (.ci/run does this)."
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message + " Skipped because CI is not set.")
    return exe


def _labels_in_view(browser: HeadlessChromium, selector: str) -> list[str]:
    return browser.evaluate(f"Array.from(document.querySelectorAll('{selector}')).map(e => e.textContent)")


def test_report_renders_filters_and_shows_evidence(chromium: str, tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    write_sample_workspace(ws, SPEC)
    labels = Counter(ws.sql("SELECT label FROM fbmem_labels", {"tau": 0.8}).column("label").to_pylist())
    total = sum(labels.values())
    embedded = build_report_summary(ws, tmp_path / "report.html", k=SPEC.k)
    folder = build_report_summary(
        ws, tmp_path / "folder.html", k=SPEC.k, images="folder", limit=24
    )  # one page

    with HeadlessChromium(chromium, width=1280, height=1000) as browser:
        browser.open(embedded.path)
        assert browser.evaluate("document.body.dataset.ready") == "1"
        assert browser.errors == [], browser.errors

        # Summary plots: present and decoded.
        plots = browser.evaluate(
            "Array.from(document.querySelectorAll('img.plot')).map(i => [i.id, i.naturalWidth])"
        )
        assert {p[0] for p in plots} == {"plot-rates", "plot-one_to_many", "plot-mitigation"}
        assert all(width > 100 for _, width in plots)

        # Evidence cards: the first page, worst first, each with both images decoded.
        assert browser.evaluate("document.querySelectorAll('#cards .card').length") == min(24, total)
        images = browser.evaluate(
            "Array.from(document.querySelectorAll('#cards .card .pair img')).map(i => i.complete && i.naturalWidth)"
        )
        assert len(images) == 2 * min(24, total) and all(w == THUMB_SIZE for w in images)

        # Each thumbnail links to its full-size original, a file that exists.
        links = browser.evaluate(
            "Array.from(document.querySelectorAll('#cards .card .pair a.full')).map(a => a.href)"
        )
        assert len(links) == 2 * min(24, total)
        assert all(Path(unquote(urlparse(u).path)).is_file() for u in links), links[:2]

        # A difference map per card, drawn once both thumbnails decode; an exact copy is near white.
        for _ in range(50):
            states = browser.evaluate(
                "Array.from(document.querySelectorAll('#cards .diff-figure')).map(f => f.dataset.diff)"
            )
            if states and all(s == "ok" for s in states):
                break
            time.sleep(0.1)
        assert len(states) == min(24, total) and set(states) == {"ok"}, states
        means = browser.evaluate(
            "Array.from(document.querySelectorAll('#cards .card')).map(c => [c.querySelector('.badge').textContent, "
            "parseFloat(c.querySelector('.diff-figure').dataset.meanDiff)])"
        )
        assert max(m for label, m in means if label == "NM") > min(m for label, m in means if label == "VM")
        assert (
            browser.evaluate("document.getElementById('match-count').textContent")
            == f"{total} of {total} generations"
        )
        pair_scores = browser.evaluate(
            "Array.from(document.querySelectorAll('#cards .card .head')).map(h => parseFloat(h.textContent.split('pair ')[1]))"
        )
        assert pair_scores == sorted(pair_scores, reverse=True)

        # Other top-k matches and one-to-many, on demand.
        browser.evaluate("document.querySelector('#cards .card .more-topk').click()")
        assert browser.evaluate("document.querySelectorAll('#cards .card .extra img').length") == SPEC.k - 1
        template_pm = browser.evaluate(
            "(() => { const b = Array.from(document.querySelectorAll('#cards .more-prompt')).find(b => !b.textContent.includes('→ 1 ')); "
            "if (!b) return -1; b.click(); return b.closest('.card').querySelectorAll('.extra img').length; })()"
        )
        assert template_pm > 1

        # A filter: only NM. The count, every card and every table row follow it.
        browser.evaluate(
            "for (const l of ['VM', 'BM', 'FM']) { const c = document.getElementById('filter-label-' + l); "
            "c.checked = false; c.dispatchEvent(new Event('change')); }"
        )
        assert (
            browser.evaluate("document.getElementById('match-count').textContent")
            == f"{labels['NM']} of {total} generations"
        )
        assert set(_labels_in_view(browser, "#cards .card .head .badge")) == {"NM"}
        assert set(_labels_in_view(browser, "#gen-table tbody .badge")) == {"NM"}
        assert browser.evaluate("document.querySelectorAll('#gen-table tbody tr').length") == min(
            100, labels["NM"]
        )
        # The CSV download holds every filtered row (all pages), with full ids.
        assert browser.evaluate("!!document.getElementById('download-csv')")
        csv_lines = browser.evaluate("window.fbmemReport.csv()").strip().split("\r\n")
        assert csv_lines[0].startswith("label,pair,fg,bg,prompt_set") and len(csv_lines) == labels["NM"] + 1
        assert {line.split(",")[0] for line in csv_lines[1:]} == {"NM"}
        assert all(len(line.split(",")[-1]) == 64 for line in csv_lines[1:])

        # A select filter combined with it, then back to all labels.
        browser.evaluate(
            "const s = document.getElementById('filter-mitigation'); s.value = 'nemo'; s.dispatchEvent(new Event('change'));"
        )
        nm_nemo = (
            ws.sql("SELECT count(*) FROM fbmem_labels WHERE label = 'NM' AND mitigation = 'nemo'")
            .column(0)[0]
            .as_py()
        )
        assert (
            browser.evaluate("document.getElementById('match-count').textContent")
            == f"{nm_nemo} of {total} generations"
        )
        browser.evaluate(
            "for (const l of ['VM', 'BM', 'FM']) { const c = document.getElementById('filter-label-' + l); "
            "c.checked = true; c.dispatchEvent(new Event('change')); }"
        )
        assert set(_labels_in_view(browser, "#gen-table tbody .badge")) > {"NM"}

        # Sorting by a table column, and a row click opening its card.
        browser.evaluate("document.querySelector('#gen-table th[data-key=\"pair\"]').click()")
        table_pairs = browser.evaluate(
            "Array.from(document.querySelectorAll('#gen-table tbody tr')).map(r => parseFloat(r.children[2].textContent))"
        )
        assert table_pairs == sorted(table_pairs)  # a second click on the sorted column: ascending
        browser.evaluate("document.querySelector('#gen-table tbody tr').click()")
        assert browser.evaluate("document.querySelectorAll('#cards .card.highlight').length") == 1
        assert browser.errors == [], browser.errors

        # The screenshot artifact: the page as first opened.
        browser.open(embedded.path)
        shot = browser.screenshot(tmp_path / "report_browser.png")
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(shot, ARTIFACTS / "report_browser.png")
        assert shot.stat().st_size > 50_000

        # The folder mode: thumbnails load from the folder beside the page without errors.
        browser.open(folder.path)
        loaded = browser.evaluate(
            "Array.from(document.querySelectorAll('#cards img')).every(i => i.complete && i.naturalWidth > 0)"
        )
        assert loaded and browser.errors == [], browser.errors


def test_report_mitigation_utility_is_the_matched_comparison(chromium: str, tmp_path: Path) -> None:
    """Demo-like: 'none' over every prompt (controls too), the mitigation over the memorized ones only. The
    report's `none` utility is mitigation_comparison's (same prompts and seeds), not the mean over every
    unmitigated generation, and its numbers are rounded."""
    spec = SampleSpec(n_prompts=16, seeds=2, k=3, mitigated_sets=("memorized", "template"), utility=True)
    ws = Workspace.init(tmp_path / "ws")
    write_sample_workspace(ws, spec)
    comparison = {r["method"]: r for r in ws.sql("SELECT * FROM mitigation_comparison").to_pylist()}
    unmatched = (
        ws.sql("SELECT avg(utility_all) AS u FROM mitigation_utility WHERE method = 'none'")
        .column("u")[0]
        .as_py()
    )
    assert abs(unmatched - comparison["none"]["utility"]) > 0.02  # the two rules give different numbers here
    built = build_report_summary(ws, tmp_path / "report.html", k=spec.k)

    with HeadlessChromium(chromium, width=1280, height=1000) as browser:
        browser.open(built.path)
        assert browser.evaluate("document.body.dataset.ready") == "1"
        rows = browser.evaluate(
            "Array.from(document.querySelectorAll('#mitigation-table tr')).slice(1)"
            ".map(r => Array.from(r.children).map(c => c.textContent))"
        )
        shown = {r[0]: r for r in rows}
        assert shown["none"][5] == f"{comparison['none']['utility']:.3f}"
        assert shown["nemo"][5] == f"{comparison['nemo']['utility']:.3f}"
        assert float(shown["none"][5]) > float(shown["nemo"][5])  # the mitigation costs utility, as planted
        cells = browser.evaluate(
            "Array.from(document.querySelectorAll('table.rates td')).map(c => c.textContent)"
        )
        assert not [c for c in cells if len(c.split(".")[-1]) > 4 and c.replace(".", "").isdigit()], cells
        rates = browser.evaluate(
            "Array.from(document.querySelectorAll('#rates-table tr')).slice(1)"
            ".map(r => Array.from(r.children).map(c => c.textContent))"
        )
        # memorized: none counts only the prompts and seeds nemo also generated
        memorized = {r[2]: (int(r[3]), int(r[4])) for r in rates if r[1] == "memorized"}
        assert memorized["none"][0] == memorized["nemo"][0] == memorized["nemo"][1]
        assert browser.errors == [], browser.errors
