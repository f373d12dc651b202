"""The page in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

Open the page, upload a shapes scene, ask for "red circle", and check what a person sees: the
table lists it with a score, the overlay is drawn over the object and nowhere far from it, a
row hovered highlights its object, and the service's errors show in the page. A screenshot is
saved as a test artefact (``$GROUNDED_SEG_TEST_ARTIFACTS``, default ``test-artifacts/``).
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import STRICT
from PIL import Image

from grounded_seg import GroundedSAM
from grounded_seg.serve import ServeSettings
from grounded_seg.shapes import HELD_OUT_SEEDS, make_scene

from serve_helpers import SEEDS, live_server, png

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("GROUNDED_SEG_TEST_ARTIFACTS", REPO / "test-artifacts"))
SHAPES = {"detector": "shapes-gdino", "segmenter": "shapes-sam", "device": "cpu"}


def _chromium() -> str:
    found = (
        os.environ.get("GROUNDED_SEG_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )
    if not found:
        why = "no chromium: apt-get install chromium (or set GROUNDED_SEG_CHROMIUM)"
        if STRICT:
            pytest.fail(f"CI needs the browser test: {why}")
        pytest.skip(why)
    return found


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox"]
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server():
    with live_server(ServeSettings(**SHAPES), predictor=GroundedSAM(**SHAPES)) as (url, _):
        yield url


def _canvas(page) -> tuple[np.ndarray, int]:
    """The canvas as an RGB array at the image's own size (it is drawn scaled by an integer)."""
    url = page.evaluate("() => document.getElementById('canvas').toDataURL('image/png')")
    data = base64.b64decode(url.split(",", 1)[1])
    drawn = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    scale = page.evaluate("() => window.gsView.scale")
    return drawn, scale


def test_the_page_segments_an_uploaded_scene(browser, server, tmp_path):
    scene = make_scene(
        HELD_OUT_SEEDS.start + SEEDS[50], phrases=["red circle", "blue square", "yellow star"]
    )
    path = tmp_path / "scene.png"
    path.write_bytes(png(scene.image))
    page = browser.new_page(viewport={"width": 1180, "height": 780})
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(server)
    page.wait_for_selector("#status.ready", timeout=30_000)
    page.set_input_files("#file", str(path))
    page.wait_for_function("() => window.gsView.image !== null")
    plain, scale = _canvas(page)
    assert scale == 4  # a 128 px scene is shown 4x, pixelated
    plain_small = plain[::scale, ::scale]
    assert np.abs(plain_small.astype(int) - scene.image).max() <= 2  # the image as uploaded

    page.fill("#prompt", "red circle")
    page.click("#go")
    page.wait_for_selector("body[data-state=answered]", timeout=60_000)
    rows = page.locator("#rows tr").all_inner_texts()
    assert rows and rows[0].split("\t")[1].strip() == "red circle", rows
    assert re.fullmatch(r"0\.\d{3}", rows[0].split("\t")[3].strip()), rows

    drawn, _ = _canvas(page)
    diff = np.abs(drawn.astype(int) - plain.astype(int)).sum(axis=2)
    truth = scene.masks[scene.phrases.index("red circle")]
    inside = np.kron(truth, np.ones((scale, scale), bool))
    assert diff[inside].mean() > 20, diff[inside].mean()  # the overlay covers the object
    x0, y0, x1, y1 = (scene.boxes[scene.phrases.index("red circle")] * scale).astype(int)
    far = np.ones_like(inside)
    far[max(0, y0 - 40) : y1 + 12, max(0, x0 - 12) : x1 + 12] = False  # box, label above it
    assert diff[far].max() <= 6  # and nothing else

    page.hover("#rows tr:first-child")
    assert "hot" in page.get_attribute("#rows tr:first-child", "class")
    hovered, _ = _canvas(page)
    assert np.abs(hovered.astype(int) - drawn.astype(int))[inside].sum() > 0  # highlighted
    page.mouse.move(5, 5)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "serve_page.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000

    # the service's own message shows in the page, not only in the console
    page.fill("#prompt", " . ")
    page.click("#go")
    page.wait_for_selector("#error.shown", timeout=30_000)
    assert "422" in page.inner_text("#error") and "prompt" in page.inner_text("#error")
    assert errors == []
    page.close()


def test_try_a_generated_scene_fills_the_image_and_the_prompt(browser, server):
    page = browser.new_page()
    page.goto(server)
    page.wait_for_selector("#status.ready", timeout=30_000)
    page.click("#scene")
    page.wait_for_function("() => window.gsView.image !== null")
    prompt = page.input_value("#prompt")
    assert prompt.endswith(".") and len(prompt) > 3
    page.click("#go")
    page.wait_for_selector("body[data-state=answered]", timeout=60_000)
    assert page.inner_text("#summary")  # a count or the reason nothing was found
    with page.expect_download() as download:
        page.click("#save-json")
    saved = Path(download.value.path()).read_text()
    assert '"detections"' in saved
    with page.expect_download() as download:
        page.click("#save-png")
    picture = Image.open(download.value.path())
    assert picture.format == "PNG" and picture.size[0] >= 128
    page.close()
