"""The Snakemake report of the tiny pipeline renders in headless Chromium with its figures."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from srsmlm.plots import REPORT_FIGURES

from .pipeline import snakemake

CATEGORIES = [
    "1. Patches",
    "2. Training",
    "3. Spectra",
    "4. Images",
    "5. Evaluation",
    "6. MLE readout",
]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: .ci/system-packages.sh should install it")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return path


def test_summary_json_has_key_numbers(tiny_run):
    summary = json.loads((tiny_run / "results/report/summary.json").read_text())
    assert {"test_set", "evaluation", "precision_by_signal"} <= set(summary)
    assert {"raw_centroid", "raw_gaussian_fit", "denoised_centroid"} <= set(
        summary["evaluation"]["sc_error"]
    )


def test_report_renders_with_figures(tiny_run, tmp_path):
    chromium = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    snakemake(tiny_run, "--report", "report.html")
    html = tiny_run / "report.html"
    assert html.stat().st_size > 100_000  # figures are embedded
    text = html.read_text(errors="replace")
    assert "Clean targets of this run" in text  # the opening text, rendered from the config
    assert "SF-fused" not in text  # no caption describes the retired leave-one-out centroid
    failed, errors, shown = [], [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("requestfailed", lambda r: failed.append(r.url[:120]))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(html.as_uri())
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(tmp_path / "report_home.png"))
        for category in CATEGORIES:
            page.get_by_text(category, exact=True).click()
            rows = page.locator("tr", has_text="results/report/")
            assert rows.count() >= 1, category
            for i in range(rows.count()):
                name = rows.nth(i).locator("td").first.inner_text()
                rows.nth(i).locator("a[iconname=eye]").click()
                img = page.locator("img[src^='data:image/png']").last
                img.wait_for(state="visible", timeout=10_000)
                assert img.evaluate(
                    "e => e.complete && e.naturalWidth > 100 && e.naturalHeight > 50"
                ), name
                shown.append(name)
                page.screenshot(path=str(tmp_path / f"report_{len(shown)}.png"))
                page.go_back()
            page.goto(html.as_uri())
            page.wait_for_load_state("networkidle")
        browser.close()
    assert not failed, failed
    assert not errors, errors
    assert len(shown) == len(REPORT_FIGURES), shown
