"""The service on a real uvicorn server on 127.0.0.1: concurrent requests batched (with the
answers of one-by-one calls), the event loop free while the models run, the queue's limit, and
``grounded-seg serve`` itself from the command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from grounded_seg import GroundedSAM
from grounded_seg.export import rle_decode
from grounded_seg.serve import ServeSettings
from grounded_seg.shapes import HELD_OUT_SEEDS, PHRASES, make_scene

from serve_helpers import SEEDS, Gated, free_port, live_server, png, wait_until

SHAPES = {"detector": "shapes-gdino", "segmenter": "shapes-sam", "device": "cpu"}
PROMPT = "red circle. blue square. yellow star."


@pytest.fixture(scope="module")
def shapes_gs():
    return GroundedSAM(**SHAPES)


def _scenes(offset: int, count: int):
    return [make_scene(HELD_OUT_SEEDS.start + SEEDS[offset + i]) for i in range(count)]


def _post(
    url: str, image: np.ndarray, prompt: str = PROMPT, timeout: float = 120
) -> httpx.Response:
    files = {"image": ("scene.png", png(image), "image/png")}
    return httpx.post(f"{url}/v1/segment", data={"prompt": prompt}, files=files, timeout=timeout)


def test_concurrent_requests_share_one_batch_and_get_one_by_one_answers(shapes_gs):
    gated = Gated(shapes_gs)
    scenes = _scenes(10, 9)
    with live_server(ServeSettings(**SHAPES, max_batch=8), predictor=gated) as (url, app):
        service = app.state.service
        gated.close()
        with ThreadPoolExecutor(9) as pool:
            first = pool.submit(_post, url, scenes[0].image)
            assert gated.entered.wait(30)  # the first request holds the model thread
            # the event loop still answers while the models run
            assert httpx.get(f"{url}/healthz", timeout=10).json()["in_progress"] == 1
            rest = [pool.submit(_post, url, s.image) for s in scenes[1:]]
            wait_until(lambda: service.active == 9)
            gated.open()
            answers = [first.result(), *(f.result() for f in rest)]
    assert gated.sizes == [1, 8]
    assert [a.json()["batch_size"] for a in answers] == [1] + [8] * 8
    for scene, answer in zip(scenes, answers, strict=True):
        assert answer.status_code == 200
        alone = shapes_gs.predict_batch([scene.image], PROMPT)[0]
        rows = answer.json()["detections"]
        assert [r["class_name"] for r in rows] == alone.data["class_name"].tolist()
        for row, box, mask in zip(rows, alone.xyxy, alone.mask, strict=True):
            np.testing.assert_allclose(row["box_xyxy"], box, atol=0.01)
            assert (rle_decode(row["mask_rle"]) == mask).mean() > 0.999


def test_requests_differing_in_prompt_or_size_are_not_batched_together(shapes_gs):
    gated = Gated(shapes_gs)
    small, other = _scenes(20, 2)
    wide = np.concatenate([other.image, other.image], axis=1)  # 128 x 256
    with live_server(ServeSettings(**SHAPES, max_batch=8), predictor=gated) as (url, app):
        gated.close()
        with ThreadPoolExecutor(5) as pool:
            first = pool.submit(_post, url, small.image)
            assert gated.entered.wait(30)
            rest = [
                pool.submit(_post, url, small.image),
                pool.submit(_post, url, small.image, "green triangle"),
                pool.submit(_post, url, wide),
                pool.submit(_post, url, small.image),
            ]
            wait_until(lambda: app.state.service.active == 5)
            gated.open()
            statuses = [first.result().status_code, *(f.result().status_code for f in rest)]
    assert statuses == [200] * 5
    assert sorted(gated.sizes[1:]) == [1, 1, 2]  # same prompt and size together, others alone


def test_a_full_queue_answers_503_with_retry_after_then_recovers(shapes_gs):
    gated = Gated(shapes_gs)
    (scene,) = _scenes(30, 1)
    settings = ServeSettings(**SHAPES, max_batch=1, max_queue=2)
    with live_server(settings, predictor=gated) as (url, app):
        gated.close()
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(_post, url, scene.image) for _ in range(2)]
            wait_until(lambda: app.state.service.active == 2)
            refused = _post(url, scene.image)
            assert refused.status_code == 503
            assert int(refused.headers["retry-after"]) >= 1
            assert "--max-queue 2" in refused.json()["detail"]
            gated.open()
            assert [f.result().status_code for f in held] == [200, 200]
        assert _post(url, scene.image).status_code == 200


def _serve(*options: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "grounded_seg.cli", "serve", "--port", str(port), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler),
    )
    return process, f"http://127.0.0.1:{port}"


def test_grounded_seg_serve_starts_answers_and_stops_on_ctrl_c():
    process, url = _serve(
        "--detector", "shapes-gdino", "--segmenter", "shapes-sam", "--device", "cpu"
    )
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status = httpx.get(f"{url}/healthz", timeout=5).status_code
            except httpx.TransportError:
                status = None
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200, process.stdout.read() if process.poll() is not None else "no 200"
        scene = make_scene(HELD_OUT_SEEDS.start + SEEDS[40], phrases=[PHRASES[0]])
        answer = _post(url, scene.image, PHRASES[0])
        assert answer.status_code == 200
        assert [r["class_name"] for r in answer.json()["detections"]] == [PHRASES[0]]
        process.send_signal(signal.SIGINT)
        # uvicorn shuts down cleanly, then hands Ctrl-C on; the command ends with 130, quietly
        assert process.wait(timeout=30) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = process.stdout.read()
    assert "models loaded" in log and f"Uvicorn running on {url}" in log
    assert "Application shutdown complete" in log and "Traceback" not in log


@pytest.mark.parametrize(
    ("detector", "status", "words"),
    [
        ("nothing-here", 2, "detector: no such file or folder"),  # as `segment` answers it
        ("grounding-dino-tiny", 1, "grounding-dino-tiny"),  # weights not here, offline
    ],
)
def test_grounded_seg_serve_fails_before_listening_on_a_missing_model(
    tmp_path, detector, status, words
):
    if detector == "nothing-here":
        detector = str(tmp_path / detector)
    process, _ = _serve("--detector", detector, "--segmenter", "shapes-sam")
    out, _ = process.communicate(timeout=120)
    assert process.returncode == status, out
    assert words in out and "Uvicorn running" not in out


def test_grounded_seg_serve_without_the_extra_says_what_to_install():
    code = (
        "import sys; sys.modules['fastapi'] = None; from grounded_seg.cli import main; "
        "sys.exit(main(['serve', '--detector', 'shapes-gdino', '--segmenter', 'shapes-sam']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert 'pip install "grounded-seg[serve]"' in done.stderr


def test_another_host_without_a_key_is_warned_about(monkeypatch, caplog):
    import uvicorn

    from grounded_seg.cli import main

    ran = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: ran.append(self.config.host))
    args = ["serve", "--detector", "shapes-gdino", "--segmenter", "shapes-sam"]
    assert main([*args, "--host", "0.0.0.0"]) == 0
    assert "without an API key" in caplog.text
    caplog.clear()
    assert main([*args, "--host", "0.0.0.0", "--api-key", "k"]) == 0
    assert main([*args]) == 0
    assert "without an API key" not in caplog.text
    assert ran == ["0.0.0.0", "0.0.0.0", "127.0.0.1"]  # the default binds loopback only
