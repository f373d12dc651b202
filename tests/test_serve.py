"""The service's API through FastAPI's test client, on the shapes models: right answers for a
shapes scene, the same masks as the library, and every limit and bad request with its status."""

from __future__ import annotations

import base64
import io
import struct
import threading
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from grounded_seg import GroundedSAM, annotate
from grounded_seg.export import rle_decode
from grounded_seg.serve import ServeSettings, create_app
from grounded_seg.shapes import HELD_OUT_SEEDS, make_scene

from serve_helpers import SEEDS, png

SHAPES = {"detector": "shapes-gdino", "segmenter": "shapes-sam", "device": "cpu"}
PROMPT = "red circle. blue square."


@pytest.fixture(scope="module")
def shapes_gs():
    return GroundedSAM(**SHAPES)


@pytest.fixture(scope="module")
def client(shapes_gs):
    settings = ServeSettings(**SHAPES, max_upload_mb=0.05, max_pixels=200_000)
    with TestClient(create_app(settings, predictor=shapes_gs)) as made:
        yield made


@pytest.fixture(scope="module")
def scene():
    return make_scene(HELD_OUT_SEEDS.start + SEEDS[0], phrases=["red circle", "blue square"])


def _box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


def _post(client, data: bytes, prompt=PROMPT, fmt="json", **fields):
    form = {"prompt": prompt, **{k: str(v) for k, v in fields.items()}}
    files = {"image": ("scene.png", data, "image/png")}
    return client.post(f"/v1/segment?format={fmt}", data=form, files=files)


def test_a_shapes_scene_gets_its_objects_with_the_librarys_masks(client, shapes_gs, scene):
    response = _post(client, png(scene.image))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"] == {"width": 128, "height": 128}
    assert body["prompt"]["classes"] == ["red circle", "blue square"]
    rows = body["detections"]
    for phrase, truth in zip(scene.phrases, scene.boxes, strict=True):  # the known answer
        best = max(
            (_box_iou(r["box_xyxy"], truth) for r in rows if r["class_name"] == phrase), default=0
        )
        assert best >= 0.8, (phrase, rows)
    expected = shapes_gs.predict_batch([scene.image], PROMPT)[0]  # what the library answers
    assert [r["class_name"] for r in rows] == expected.data["class_name"].tolist()
    for row, box, mask in zip(rows, expected.xyxy, expected.mask, strict=True):
        np.testing.assert_allclose(row["box_xyxy"], box, atol=0.006)
        assert np.array_equal(rle_decode(row["mask_rle"]), mask)
        assert row["mask_area"] == int(mask.sum())
        assert row["color"].startswith("#") and len(row["color"]) == 7
    assert set(body["timings_ms"]) == {"read", "decode", "queue", "model", "total"}


def test_json_with_a_base64_image_answers_as_multipart(client, scene):
    data = png(scene.image)
    form = _post(client, data).json()["detections"]
    for image in (
        base64.b64encode(data).decode(),
        "data:image/png;base64," + base64.b64encode(data).decode(),
    ):
        response = client.post("/v1/segment", json={"image": image, "prompt": PROMPT})
        assert response.status_code == 200, response.text
        assert response.json()["detections"] == form


def test_png_format_is_the_librarys_annotated_image(client, shapes_gs, scene):
    response = _post(client, png(scene.image), fmt="png")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    drawn = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
    expected = annotate(scene.image, shapes_gs.predict_batch([scene.image], PROMPT)[0])
    assert int(response.headers["x-detections"]) >= 2
    assert np.array_equal(drawn, expected)


def test_nothing_found_is_an_empty_valid_answer(client, scene):
    response = _post(client, png(scene.image), prompt="green star", box_threshold=0.9)
    assert response.status_code == 200
    body = response.json()
    assert body["detections"] == []
    assert "not above box_threshold 0.9" in body["nothing_found"]


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def _form(image: bytes | None, prompt: str | None = "red circle", **fields) -> dict:
    data = {**({"prompt": prompt} if prompt is not None else {}), **fields}
    files = {"image": ("x.png", image, "image/png")} if image is not None else None
    return {"data": data, "files": files}


def _raw(content: bytes, content_type: str | None) -> dict:
    return {"content": content, "headers": {"content-type": content_type} if content_type else {}}


def _bad_requests(scene_png: bytes, tmp_path) -> dict[str, tuple[int, str, dict]]:
    path = tmp_path / "on-the-server.png"
    path.write_bytes(scene_png)
    big = png(np.zeros((600, 400, 3), np.uint8))  # 240,000 pixels > max_pixels 200,000
    noise = png(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8))
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    path_b64 = base64.b64encode(str(path).encode()).decode()
    picture = {"data": {"prompt": "red circle"}, "files": {"picture": ("x.png", scene_png)}}
    return {
        "upload too large": (413, "the image is more than", _form(noise)),
        "body too large (Content-Length)": (413, "the request body is more", _form(noise * 3)),
        "too many pixels": (413, "--max-pixels", _form(big)),
        "30000 x 30000 declared": (413, "too large", _form(_png_header(30000, 30000))),
        "truncated PNG": (422, "damaged image data", _form(scene_png[: len(scene_png) // 2])),
        "not an image": (422, "not an image file", _form(b"hello, world")),
        "PostScript (never opened)": (422, "not an image file", _form(eps)),
        "empty file": (422, "empty", _form(b"")),
        "empty prompt": (422, "prompt: expected text naming what to find", _form(scene_png, "")),
        "no prompt": (422, "prompt: expected text, got nothing", _form(scene_png, None)),
        "threshold not a number": (
            422, "box_threshold: expected a number in [0, 1], got 'abc'",
            _form(scene_png, box_threshold="abc"),
        ),
        "threshold out of range": (
            422, "text_threshold: expected a number in [0, 1], got 1.5",
            _form(scene_png, text_threshold="1.5"),
        ),
        "a model asked for": (
            422, "unknown field(s) 'detector'", _form(scene_png, detector="sam-vit-huge")
        ),
        "no image part": (422, "image: expected a file part named 'image'", picture),
        "a path instead of an image": (
            422, "image: ", {"json": {"image": str(path), "prompt": "red circle"}}
        ),
        "a path as base64": (
            422, "not an image file", {"json": {"image": path_b64, "prompt": "red circle"}}
        ),
        "image not a string": (
            422, "image: expected the image file as a base64 string, got int",
            {"json": {"image": 3, "prompt": "red circle"}},
        ),
        "not JSON": (422, "not valid JSON", _raw(b"{nope", "application/json")),
        "JSON not an object": (422, "expected a JSON object, got list", {"json": [1, 2]}),
        "wrong content type": (415, "got 'text/plain'", _raw(b"hello", "text/plain")),
        "no content type": (415, "got 'no content type'", _raw(b"hello", None)),
        "broken multipart": (
            422, "multipart", _raw(b"--x\r\nnot a part", "multipart/form-data; boundary=x")
        ),
    }  # fmt: skip


def test_every_bad_request_gets_its_status_and_the_service_still_answers(client, scene, tmp_path):
    for name, (status, words, request) in _bad_requests(png(scene.image), tmp_path).items():
        response = client.post("/v1/segment", **request)
        assert response.status_code == status, (name, response.text)
        assert words in response.json()["detail"], (name, response.json())
    assert _post(client, png(scene.image)).status_code == 200
    assert client.get("/healthz").json()["status"] == "ready"


def test_a_chunked_body_over_the_limit_is_refused_while_reading(client):
    sent = []

    def body():
        for _ in range(100):  # 100 x 4 KiB, no Content-Length: refused before the end
            sent.append(1)
            yield b"x" * 4096

    response = client.post(
        "/v1/segment", content=body(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "--max-upload-mb" in response.json()["detail"]


def test_unknown_routes_formats_and_methods(client, scene):
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/etc/passwd").status_code == 404
    assert _post(client, png(scene.image), fmt="gif").status_code == 422
    assert client.get("/v1/segment").status_code == 405


def test_models_docs_page_and_scene(client):
    models = client.get("/v1/models").json()
    assert models["detector"] == "shapes-gdino" and models["segmenter"] == "shapes-sam"
    assert models["max_batch"] == 8 and models["max_pixels"] == 200_000
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/v1/segment"]["post"]["requestBody"]["content"]
    assert set(content) == {"multipart/form-data", "application/json"}
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "<title>grounded-seg</title>" in page.text
    seed = HELD_OUT_SEEDS.start + SEEDS[1]
    response = client.get(f"/v1/scene?seed={seed}")
    made = make_scene(seed)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(response.content))), made.image)
    assert response.headers["x-scene-prompt"] == ". ".join(dict.fromkeys(made.phrases)) + "."
    assert client.get("/v1/scene?seed=-1").status_code == 422


def test_an_api_key_guards_the_api_but_not_the_page(shapes_gs, scene):
    settings = ServeSettings(**SHAPES, api_key="s3cret")
    with TestClient(create_app(settings, predictor=shapes_gs)) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "s3cre"}):
            response = client.get("/v1/models", headers=headers)
            assert response.status_code == 401, headers
            assert response.headers["www-authenticate"] == "Bearer"
        files = {"image": ("x.png", png(scene.image), "image/png")}
        assert (
            client.post("/v1/segment", data={"prompt": "red circle"}, files=files).status_code
            == 401
        )
        for headers in ({"Authorization": "Bearer s3cret"}, {"X-API-Key": "s3cret"}):
            response = client.post(
                "/v1/segment", data={"prompt": "red circle"}, files=files, headers=headers
            )
            assert response.status_code == 200
        assert client.get("/healthz").json()["api_key_required"] is True
        assert client.get("/").status_code == 200


def test_healthz_says_ready_only_once_the_models_are_loaded(monkeypatch, shapes_gs):
    import grounded_seg.predictor

    gate = threading.Event()

    def slow_load(**kwargs):
        assert kwargs["detector"] == "shapes-gdino"
        gate.wait(30)
        return shapes_gs

    monkeypatch.setattr(grounded_seg.predictor, "GroundedSAM", slow_load)
    with TestClient(create_app(ServeSettings(**SHAPES))) as client:
        loading = client.get("/healthz")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        early = client.post("/v1/segment", json={"image": "", "prompt": "x"})
        assert early.status_code == 503 and early.headers["retry-after"] == "5"
        gate.set()
        for _ in range(300):
            if client.get("/healthz").status_code == 200:
                break
            threading.Event().wait(0.05)
        assert client.get("/healthz").json()["status"] == "ready"


def test_a_model_that_cannot_load_is_reported(tmp_path):
    settings = ServeSettings(detector=str(tmp_path / "missing"), segmenter="shapes-sam")
    with TestClient(create_app(settings)) as client:
        for _ in range(300):
            if client.get("/healthz").json()["status"] != "loading":
                break
            threading.Event().wait(0.05)
        health = client.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "failed"
        assert "missing" in health.json()["detail"]
        response = client.post("/v1/segment", json={"image": "", "prompt": "x"})
        assert response.status_code == 503 and "could not be loaded" in response.json()["detail"]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"max_batch": 0}, "max_batch: expected an int >= 1, got 0"),
        ({"max_queue": 0}, "max_queue"),
        ({"max_upload_mb": 0}, "max_upload_mb: expected a finite number > 0"),
        ({"batch_window_ms": -1}, "batch_window_ms"),
        ({"port": 70000}, "port"),
        ({"proposer": "owl"}, "proposer: expected one of"),
        ({"api_key": ""}, "api_key"),
    ],
)
def test_bad_settings_are_refused_before_anything_loads(options, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        ServeSettings(**options)


def test_the_clip_route_serves_the_same_answers_as_the_library(scene):
    clip = {"proposer": "clip", "detector": "shapes-clip", "segmenter": "shapes-sam"}
    models = GroundedSAM(**clip, device="cpu")
    with TestClient(create_app(ServeSettings(**clip), predictor=models)) as client:
        assert client.get("/v1/models").json()["proposer"] == "clip"
        response = _post(client, png(scene.image))
    assert response.status_code == 200, response.text
    rows = response.json()["detections"]
    expected = models.predict_batch([scene.image], PROMPT)[0]
    assert rows and [r["class_name"] for r in rows] == expected.data["class_name"].tolist()
    for row, mask in zip(rows, expected.mask, strict=True):
        assert np.array_equal(rle_decode(row["mask_rle"]), mask)
