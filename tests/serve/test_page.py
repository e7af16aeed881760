"""The web page in a real browser: Playwright drives Debian's headless chromium (no browser
download) against a real uvicorn on loopback. It uploads a PNG, asks, waits for the streamed
answer and the routing view, checks that no request left 127.0.0.1, and saves a screenshot."""

from __future__ import annotations

import os
import shutil
from urllib.parse import urlparse

import pytest

from tests.serve.conftest import png_bytes


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (CI must install Debian's chromium package)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox"]
        )
        yield browser
        browser.close()


def _run_page(
    browser,
    url: str,
    tmp_path,
    question: str | None,
    *,
    threshold: str | None = None,
    prompt: str | None = None,
):
    """Open the page, upload a PNG (or, for a generator, type `prompt`), ask, wait."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    # The page's CSP forbids eval, so waits use selectors and function expressions.
    page.wait_for_selector("#model:has-text('·')")
    if prompt is None:
        png = tmp_path / "scene.png"
        png.write_bytes(png_bytes(3, 32))
        page.set_input_files("#file", str(png))
    else:
        page.fill("#prompt", prompt)
    page.wait_for_selector("#ask:not([disabled])")
    if question is not None:
        page.fill("#question", question)
    if threshold is not None:
        page.fill("#threshold", threshold)
    page.click("#ask")
    page.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=30_000)
    return page, requests, errors


def _assert_loopback_only(requests: list[str]) -> None:
    assert requests
    for u in requests:
        parsed = urlparse(u)
        assert parsed.scheme in ("http", "data", "blob"), u
        if parsed.scheme == "http":
            assert parsed.hostname == "127.0.0.1", u


def test_page_streams_an_answer_and_shows_routing(browser, decoder_server, tmp_path):
    page, requests, errors = _run_page(browser, decoder_server, tmp_path, "a")
    assert page.evaluate("document.body.dataset.state") == "done", page.inner_text("#status")
    assert not errors
    assert page.inner_text("#answer").strip()
    assert page.locator("#tokens .tok").count() >= 2  # <bos>, the prompt, the answer
    layers = int(page.get_attribute("#layer", "max")) + 1
    assert layers >= 1
    assert page.inner_text("#layerName") != "–"
    # The patches are painted: the canvas is no longer one flat colour.
    colours = page.evaluate(
        """() => { const c = document.getElementById('routing').getContext('2d');
        const d = c.getImageData(0, 0, 320, 320).data; const s = new Set();
        for (let i = 0; i < d.length; i += 4 * 97) s.add(d[i] + ',' + d[i+1] + ',' + d[i+2]);
        return s.size; }"""
    )
    assert colours > 3
    assert page.locator("#legend span").count() >= 1
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert (tmp_path / "page.png").stat().st_size > 10_000
    _assert_loopback_only(requests)
    page.close()


def test_page_shows_vqa_answers_with_scores(browser, fusion_dir, tmp_path):
    from vlmoe.serve import build_app
    from vlmoe.serve.server import serve_in_background

    with serve_in_background(build_app(fusion_dir, model_name="vqa")) as url:
        page, requests, errors = _run_page(browser, url, tmp_path, "what colour?")
        assert page.evaluate("document.body.dataset.state") == "done", page.inner_text("#status")
        assert not errors and "(scene: " in page.inner_text("#answer")
        assert page.locator("#scores tr").count() == 5  # the top 5 answers
        assert page.locator("#tokens .tok").count() >= 2  # the question's tokens
        _assert_loopback_only(requests)
        page.close()


def test_page_draws_the_boxes_of_a_detector(browser, det_dir, tmp_path):
    from vlmoe.serve import build_app
    from vlmoe.serve.server import serve_in_background

    with serve_in_background(build_app(det_dir, model_name="det")) as url:
        page, requests, errors = _run_page(browser, url, tmp_path, None, threshold="0")
        assert page.evaluate("document.body.dataset.state") == "done", page.inner_text("#status")
        assert not errors and page.inner_text("#answer") == "20 objects"  # the page's cap
        assert page.locator("#scores tr").count() == 8  # the best 8 listed
        # Box edges are drawn in the box colour #ffeb3b over the 320x320 canvas.
        yellow = page.evaluate(
            """() => { const d = document.getElementById('routing').getContext('2d')
                   .getImageData(0, 0, 320, 320).data; let n = 0;
                   for (let i = 0; i < d.length; i += 4)
                     if (d[i] === 255 && d[i+1] === 235 && d[i+2] === 59) n++;
                   return n; }"""
        )
        assert yellow > 100, yellow
        page.screenshot(path=str(tmp_path / "boxes.png"), full_page=True)
        _assert_loopback_only(requests)
        page.close()


def test_page_generates_images(browser, dit_dir, tmp_path):
    from vlmoe.serve import build_app
    from vlmoe.serve.server import serve_in_background

    with serve_in_background(build_app(dit_dir, model_name="gen")) as url:
        page, requests, errors = _run_page(browser, url, tmp_path, None, prompt="circle")
        assert page.evaluate("document.body.dataset.state") == "done", page.inner_text("#status")
        assert not errors and page.is_hidden("#drop")
        assert page.locator("#gallery img").count() == 4
        sizes = page.evaluate(
            "() => Array.from(document.querySelectorAll('#gallery img'))"
            ".map((i) => [i.naturalWidth, i.naturalHeight])"
        )
        assert sizes == [[8, 8]] * 4
        assert page.locator("#legend span").count() >= 1  # the routing of the first image
        page.screenshot(path=str(tmp_path / "generated.png"), full_page=True)
        _assert_loopback_only(requests)
        page.close()
