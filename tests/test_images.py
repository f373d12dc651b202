"""Tests for grounded_seg.images: loading, conversion and validation of input images."""

from __future__ import annotations

import io
import pathlib
import struct

import numpy as np
import pytest
from PIL import Image

from grounded_seg.images import load_image, to_input_type, validate_image_format

ORIENTATION_TAG = 0x0112


def _assert_rgb_result(out: np.ndarray, h: int, w: int) -> None:
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.uint8
    assert out.shape == (h, w, 3)
    assert out.flags.c_contiguous


def _grid_rgb() -> np.ndarray:
    """A 2x3 (H=2, W=3) RGB array with six distinct, known pixels."""
    return np.array(
        [
            [[255, 0, 0], [0, 255, 0], [0, 0, 255]],
            [[10, 20, 30], [40, 50, 60], [70, 80, 90]],
        ],
        dtype=np.uint8,
    )


def _pil_snapshot(img: Image.Image) -> tuple:
    return img.mode, img.size, img.tobytes(), dict(img.info), dict(img.getexif())


# ------------------------------------------------------------------ image_format


@pytest.mark.parametrize(
    ("given", "expected"),
    [("RGB", "RGB"), ("rgb", "RGB"), ("Rgb", "RGB"), ("BGR", "BGR"), ("bgr", "BGR")],
)
def test_validate_image_format_accepts_case_insensitively(given: str, expected: str) -> None:
    assert validate_image_format(given) == expected


@pytest.mark.parametrize("bad", ["HSV", "RGBA", "", " rgb", "R G B", None, 3])
def test_validate_image_format_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match=r"'RGB', 'BGR'"):
        validate_image_format(bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------ numpy input


def test_ndarray_rgb_keeps_exact_pixels() -> None:
    arr = _grid_rgb()
    out = load_image(arr)
    _assert_rgb_result(out, 2, 3)
    np.testing.assert_array_equal(out, arr)
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[1, 2].tolist() == [70, 80, 90]


def test_ndarray_bgr_is_reversed_to_rgb() -> None:
    bgr = np.zeros((2, 2, 3), dtype=np.uint8)
    bgr[0, 1] = [10, 20, 30]  # B, G, R
    out = load_image(bgr, image_format="BGR")
    _assert_rgb_result(out, 2, 2)
    assert out[0, 1].tolist() == [30, 20, 10]
    np.testing.assert_array_equal(out, bgr[:, :, ::-1])


def test_ndarray_lowercase_bgr() -> None:
    bgr = np.array([[[1, 2, 3]]], dtype=np.uint8)
    assert load_image(bgr, "bgr")[0, 0].tolist() == [3, 2, 1]


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 1)])
@pytest.mark.parametrize("image_format", ["RGB", "BGR"])
def test_ndarray_greyscale_repeated(shape: tuple, image_format: str) -> None:
    grey = np.arange(6, dtype=np.uint8).reshape(shape) * 40
    out = load_image(grey, image_format)
    _assert_rgb_result(out, 2, 3)
    assert out[1, 2].tolist() == [200, 200, 200]
    assert out[0, 1].tolist() == [40, 40, 40]


def test_ndarray_rgba_composited_over_white() -> None:
    rgba = np.array(
        [
            [[10, 20, 30, 0], [10, 20, 30, 255]],
            [[0, 0, 0, 128], [100, 255, 0, 128]],
            [[1, 2, 3, 254], [0, 0, 0, 1]],
        ],
        dtype=np.uint8,
    )
    out = load_image(rgba)
    _assert_rgb_result(out, 3, 2)
    assert out[0, 0].tolist() == [255, 255, 255]  # fully transparent -> white
    assert out[0, 1].tolist() == [10, 20, 30]  # opaque keeps its colour
    # c * 128/255 + 255 * 127/255: 0 -> 127, 100 -> 177.196 -> 177, 255 -> 255
    assert out[1, 0].tolist() == [127, 127, 127]
    assert out[1, 1].tolist() == [177, 255, 127]
    # rounded, not truncated: 1 * 254/255 + 255/255 = 1.996 -> 2, 2.992 -> 3, 3.988 -> 4
    assert out[2, 0].tolist() == [2, 3, 4]
    assert out[2, 1].tolist() == [254, 254, 254]  # 254.0 exactly


def test_ndarray_bgra_reversed_and_composited() -> None:
    bgra = np.array([[[30, 20, 10, 255], [0, 0, 100, 128], [1, 2, 3, 0]]], dtype=np.uint8)
    out = load_image(bgra, image_format="BGR")
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[0, 1].tolist() == [177, 127, 127]
    assert out[0, 2].tolist() == [255, 255, 255]


@pytest.mark.parametrize(
    ("shape", "image_format"),
    [
        ((2, 3), "RGB"),
        ((2, 3, 1), "RGB"),
        ((2, 3, 3), "RGB"),
        ((2, 3, 3), "BGR"),
        ((2, 3, 4), "RGB"),
        ((2, 3, 4), "BGR"),
    ],
)
def test_ndarray_caller_array_unchanged_and_not_shared(shape: tuple, image_format: str) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
    before = arr.copy()
    out = load_image(arr, image_format)
    np.testing.assert_array_equal(arr, before)
    assert not np.shares_memory(out, arr)
    out[...] = 7  # writing to the result must not reach the caller's array
    np.testing.assert_array_equal(arr, before)


def test_ndarray_rgb_result_is_a_copy_even_when_no_conversion_needed() -> None:
    arr = _grid_rgb()
    out = load_image(arr)
    assert out is not arr
    assert not np.shares_memory(out, arr)


def test_ndarray_non_contiguous_and_read_only_input() -> None:
    big = np.zeros((4, 6, 3), dtype=np.uint8)
    big[::2, ::2] = _grid_rgb()
    view = big[::2, ::2]
    view.flags.writeable = False
    assert not view.flags.c_contiguous
    out = load_image(view)
    _assert_rgb_result(out, 2, 3)
    np.testing.assert_array_equal(out, _grid_rgb())
    assert out.flags.writeable


def test_ndarray_fortran_order_bgr() -> None:
    arr = np.asfortranarray(_grid_rgb()[:, :, ::-1])
    out = load_image(arr, "BGR")
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, _grid_rgb())


# ------------------------------------------------------------------ PIL input


def test_pil_rgb_exact_pixels_and_image_format_ignored() -> None:
    img = Image.fromarray(_grid_rgb())
    out_rgb = load_image(img)
    out_bgr = load_image(img, image_format="BGR")  # ignored for PIL images
    _assert_rgb_result(out_rgb, 2, 3)
    np.testing.assert_array_equal(out_rgb, _grid_rgb())
    np.testing.assert_array_equal(out_bgr, _grid_rgb())


def test_pil_image_format_still_validated() -> None:
    with pytest.raises(ValueError, match="image_format"):
        load_image(Image.new("RGB", (1, 1)), image_format="XYZ")


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("L", 77, (77, 77, 77)),
        ("1", 1, (255, 255, 255)),
        ("1", 0, (0, 0, 0)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("CMYK", (255, 0, 255, 0), (0, 255, 0)),
        ("CMYK", (0, 0, 0, 255), (0, 0, 0)),
        ("HSV", (0, 255, 255), (255, 0, 0)),
        ("HSV", (85, 255, 255), (0, 255, 0)),
        ("YCbCr", (255, 128, 128), (255, 255, 255)),
        ("RGBA", (10, 20, 30, 0), (255, 255, 255)),
        ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
        ("RGBA", (100, 255, 0, 128), (177, 255, 127)),
        ("RGBA", (1, 2, 3, 254), (2, 3, 4)),
        ("LA", (100, 128), (177, 177, 177)),
        ("LA", (100, 0), (255, 255, 255)),
        # premultiplied: stored colour c' = c * a / 255, result c' + 255 - a
        ("RGBa", (100, 50, 0, 128), (227, 177, 127)),
        ("RGBa", (0, 0, 0, 0), (255, 255, 255)),
        ("La", (100, 128), (227, 227, 227)),
    ],
)
def test_pil_mode_conversion(mode: str, value: object, expected: tuple) -> None:
    img = Image.new(mode, (2, 1), value)
    out = load_image(img)
    _assert_rgb_result(out, 1, 2)
    assert tuple(out[0, 0].tolist()) == expected
    assert tuple(out[0, 1].tolist()) == expected


def test_pil_lab_white_and_black() -> None:
    # PIL's LAB -> RGB conversion is approximate at the extremes.
    white = load_image(Image.new("LAB", (1, 1), (255, 128, 128)))
    black = load_image(Image.new("LAB", (1, 1), (0, 128, 128)))
    assert np.all(white >= 253)
    assert np.all(black <= 2)


def _palette_image() -> Image.Image:
    img = Image.new("P", (3, 1))
    img.putpalette([255, 0, 0, 0, 0, 255, 12, 34, 56])
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    img.putpixel((2, 0), 2)
    return img


def test_pil_palette_without_transparency() -> None:
    out = load_image(_palette_image())
    assert out[0].tolist() == [[255, 0, 0], [0, 0, 255], [12, 34, 56]]


def test_pil_palette_with_transparency_index_is_white() -> None:
    img = _palette_image()
    img.info["transparency"] = 1
    out = load_image(img)
    assert out[0].tolist() == [[255, 0, 0], [255, 255, 255], [12, 34, 56]]


def test_pil_palette_alpha_mode() -> None:
    pal = _palette_image()
    alpha = Image.frombytes("L", (3, 1), bytes([255, 0, 128]))
    img = Image.merge("PA", (pal, alpha))
    assert img.mode == "PA"
    out = load_image(img)
    # (12, 34, 56) at alpha 128 -> round(c * 128/255 + 127) = 133, 144, 155
    assert out[0].tolist() == [[255, 0, 0], [255, 255, 255], [133, 144, 155]]


def _int_image(mode: str, values: list[int]) -> Image.Image:
    fmt = {"I;16": "<H", "I;16L": "<H", "I;16B": ">H", "I": "<i"}[mode]
    data = b"".join(struct.pack(fmt, v) for v in values)
    if mode == "I":
        return Image.frombytes("I", (len(values), 1), data, "raw", "I")
    return Image.frombytes(mode, (len(values), 1), data)


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16B", "I"])
def test_pil_16bit_scaled_to_8bit(mode: str) -> None:
    values = [0, 128, 129, 257, 32896, 65535]
    img = _int_image(mode, values)
    assert np.asarray(img).ravel().tolist() == values  # the fixture is what we think
    out = load_image(img)
    _assert_rgb_result(out, 1, len(values))
    # round(v * 255 / 65535): 128 -> 0.498 -> 0, 129 -> 0.502 -> 1, 257 -> 1, 32896 -> 128
    assert out[0, :, 0].tolist() == [0, 0, 1, 1, 128, 255]
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_pil_16bit_native_mode() -> None:
    img = Image.new("I;16N", (1, 1), 32896)
    assert load_image(img)[0, 0].tolist() == [128, 128, 128]


def test_pil_mode_i_out_of_range_values_clipped() -> None:
    img = _int_image("I", [-5, 70000, 2_000_000_000])
    out = load_image(img)
    assert out[0, :, 0].tolist() == [0, 255, 255]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.2, 1.0], [0, 51, 255]),  # all in [0, 1]: scaled by 255
        ([0.0, 100.4, 254.6], [0, 100, 255]),  # in [0, 255]: rounded
        ([0.0, 0.0, 0.0], [0, 0, 0]),
    ],
)
def test_pil_float_mode(values: list[float], expected: list[int]) -> None:
    img = Image.frombytes("F", (3, 1), struct.pack("<3f", *values), "raw", "F;32F")
    out = load_image(img)
    _assert_rgb_result(out, 1, 3)
    assert out[0, :, 0].tolist() == expected
    assert out[0, :, 2].tolist() == expected


@pytest.mark.parametrize("values", [[-0.5, 0.5, 1.0], [0.0, 10.0, 300.0], [0.0, float("nan"), 1.0]])
def test_pil_float_mode_out_of_range(values: list[float]) -> None:
    img = Image.frombytes("F", (3, 1), struct.pack("<3f", *values), "raw", "F;32F")
    with pytest.raises(ValueError, match="mode 'F'"):
        load_image(img)


def _oriented_image(orientation: int) -> Image.Image:
    img = Image.fromarray(_grid_rgb())  # W=3, H=2
    img.getexif()[ORIENTATION_TAG] = orientation
    return img


def test_pil_exif_orientation_6_rotates_clockwise() -> None:
    img = _oriented_image(6)
    out = load_image(img)
    _assert_rgb_result(out, 3, 2)
    # Orientation 6: rotate 90 degrees clockwise for display. The original
    # top-left pixel (red) ends up top-right; the bottom-left ends up top-left.
    assert out[0, 1].tolist() == [255, 0, 0]
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[2, 1].tolist() == [0, 0, 255]
    np.testing.assert_array_equal(out, np.rot90(_grid_rgb(), k=-1))


def test_pil_exif_orientation_3_rotates_180() -> None:
    out = load_image(_oriented_image(3))
    _assert_rgb_result(out, 2, 3)
    np.testing.assert_array_equal(out, _grid_rgb()[::-1, ::-1])


def test_pil_caller_image_unchanged_after_exif_transpose() -> None:
    img = _oriented_image(6)
    before = _pil_snapshot(img)
    load_image(img)
    assert _pil_snapshot(img) == before
    assert img.getexif()[ORIENTATION_TAG] == 6


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "CMYK", "I;16", "F", "La"])
def test_pil_caller_image_unchanged(mode: str) -> None:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, size=(4, 5, 4), dtype=np.uint8))
    if mode == "I;16":
        img = _int_image("I;16", [0, 1000, 65535])
    elif mode == "F":
        img = Image.frombytes("F", (2, 1), struct.pack("<2f", 0.1, 0.9), "raw", "F;32F")
    elif mode == "La":
        img = Image.new("La", (2, 2), (10, 20))
    elif mode != "RGBA":
        img = img.convert(mode)
    if mode == "P":
        img.info["transparency"] = 3
    before = _pil_snapshot(img)
    out = load_image(img)
    assert out.shape == (img.size[1], img.size[0], 3)
    assert _pil_snapshot(img) == before


# ------------------------------------------------------------------ path input


def test_png_path_loads_like_pil(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "grid.png"
    Image.fromarray(_grid_rgb()).save(path)
    from_path = load_image(path)
    from_str = load_image(str(path))
    with Image.open(path) as img:
        from_pil = load_image(img)
    _assert_rgb_result(from_path, 2, 3)
    np.testing.assert_array_equal(from_path, _grid_rgb())
    np.testing.assert_array_equal(from_str, from_pil)
    np.testing.assert_array_equal(from_path, from_pil)


def test_path_image_format_ignored(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "grid.png"
    Image.fromarray(_grid_rgb()).save(path)
    np.testing.assert_array_equal(load_image(path, image_format="BGR"), _grid_rgb())


def test_png_path_with_exif_orientation(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "oriented.png"
    img = Image.fromarray(_grid_rgb())
    exif = img.getexif()
    exif[ORIENTATION_TAG] = 6
    img.save(path, exif=exif)
    out = load_image(path)
    _assert_rgb_result(out, 3, 2)
    assert out[0, 1].tolist() == [255, 0, 0]
    np.testing.assert_array_equal(out, np.rot90(_grid_rgb(), k=-1))


def test_jpeg_path_with_exif_orientation(tmp_path: pathlib.Path) -> None:
    # Flat 8x8 blocks of colour so that JPEG compression stays close.
    arr = np.zeros((16, 24, 3), dtype=np.uint8)
    arr[:8, :8] = [255, 0, 0]
    arr[:8, 8:] = [255, 255, 255]
    arr[8:] = [0, 0, 255]
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[ORIENTATION_TAG] = 6
    path = tmp_path / "oriented.jpg"
    img.save(path, exif=exif, quality=95)
    out = load_image(path)
    _assert_rgb_result(out, 24, 16)
    # Original top-left red block is now the top-right corner.
    assert np.abs(out[2, 13].astype(int) - [255, 0, 0]).max() <= 12
    assert np.abs(out[2, 2].astype(int) - [0, 0, 255]).max() <= 12
    assert np.abs(out[20, 13].astype(int) - [255, 255, 255]).max() <= 12


def test_rgba_png_path_composited(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "alpha.png"
    rgba = np.array([[[10, 20, 30, 0], [10, 20, 30, 255], [0, 0, 0, 128]]], dtype=np.uint8)
    Image.fromarray(rgba).save(path)
    out = load_image(path)
    assert out[0].tolist() == [[255, 255, 255], [10, 20, 30], [127, 127, 127]]


def test_16bit_png_path(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "deep.png"
    _int_image("I;16", [0, 32896, 65535]).save(path)
    out = load_image(path)
    assert out[0, :, 0].tolist() == [0, 128, 255]


def test_palette_png_with_transparency(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "pal.png"
    _palette_image().save(path, transparency=1)
    out = load_image(path)
    assert out[0].tolist() == [[255, 0, 0], [255, 255, 255], [12, 34, 56]]


# ------------------------------------------------------------------ to_input_type


def test_to_input_type_pil() -> None:
    rgb = _grid_rgb()
    out = to_input_type(rgb, Image.new("L", (3, 2)))
    assert isinstance(out, Image.Image)
    assert out.mode == "RGB"
    assert out.size == (3, 2)
    np.testing.assert_array_equal(np.asarray(out), rgb)


@pytest.mark.parametrize("like", ["some/file.png", pathlib.Path("some/file.png")])
def test_to_input_type_path_gives_pil(like: object) -> None:
    out = to_input_type(_grid_rgb(), like)  # type: ignore[arg-type]
    assert isinstance(out, Image.Image)
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), _grid_rgb())


@pytest.mark.parametrize("like_shape", [(2, 3), (2, 3, 3), (2, 3, 4)])
def test_to_input_type_ndarray_rgb(like_shape: tuple) -> None:
    rgb = _grid_rgb()
    out = to_input_type(rgb, np.zeros(like_shape, dtype=np.uint8))
    assert isinstance(out, np.ndarray)
    assert out.shape == (2, 3, 3)
    assert out.dtype == np.uint8
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)
    assert not np.shares_memory(out, rgb)


def test_to_input_type_ndarray_bgr_reversed_and_round_trips() -> None:
    rgb = _grid_rgb()
    out = to_input_type(rgb, np.zeros((2, 3, 3), dtype=np.uint8), image_format="BGR")
    assert out[0, 0].tolist() == [0, 0, 255]
    assert out[1, 2].tolist() == [90, 80, 70]
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(load_image(out, "BGR"), rgb)


@pytest.mark.parametrize(
    ("rgb", "like", "image_format", "exc", "pattern"),
    [
        (np.zeros((2, 3, 3), np.uint8), [1, 2], "RGB", TypeError, r"got list"),
        (np.zeros((2, 3, 3), np.uint8), None, "RGB", TypeError, r"got NoneType"),
        (np.zeros((2, 3, 3), np.float32), np.zeros((2, 3)), "RGB", TypeError, r"uint8"),
        (np.zeros((2, 3, 4), np.uint8), np.zeros((2, 3)), "RGB", ValueError, r"\(2, 3, 4\)"),
        (np.zeros((2, 3), np.uint8), np.zeros((2, 3)), "RGB", ValueError, r"\(H, W, 3\)"),
        ([[0, 0, 0]], np.zeros((2, 3)), "RGB", TypeError, r"got list"),
        (np.zeros((2, 3, 3), np.uint8), np.zeros((2, 3)), "RGBA", ValueError, r"'BGR'"),
    ],
)
def test_to_input_type_errors(
    rgb: object, like: object, image_format: str, exc: type, pattern: str
) -> None:
    with pytest.raises(exc, match=pattern):
        to_input_type(rgb, like, image_format)  # type: ignore[arg-type]


# ------------------------------------------------------------------ bad inputs


def _truncated_png(tmp_path: pathlib.Path) -> pathlib.Path:
    rng = np.random.default_rng(2)
    noise = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    data = buf.getvalue()
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    return path


def _text_png(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    return path


class _FakeTensor:
    """Stands in for a torch.Tensor without importing torch."""


_FakeTensor.__module__ = "torch"
_FakeTensor.__qualname__ = "Tensor"

BAD_INPUTS = [
    # (id, factory(tmp_path) -> (image, image_format), exception, message regex)
    (
        "missing-file",
        lambda p: (p / "does_not_exist.png", "RGB"),
        FileNotFoundError,
        r"not found.*does_not_exist\.png",
    ),
    ("directory", lambda p: (p, "RGB"), ValueError, r"expected an image file, got a directory"),
    (
        "text-file-named-png",
        lambda p: (_text_png(p), "RGB"),
        ValueError,
        r"could not read '.*notes\.png' as an image: .*cannot identify image file",
    ),
    (
        "truncated-png",
        lambda p: (_truncated_png(p), "RGB"),
        ValueError,
        r"could not read '.*truncated\.png' as an image: .+",
    ),
    (
        "1d-array",
        lambda p: (np.zeros(5, np.uint8), "RGB"),
        ValueError,
        r"expected an image array of shape \(H, W\).*got shape \(5,\)",
    ),
    (
        "4d-array",
        lambda p: (np.zeros((1, 2, 3, 3), np.uint8), "RGB"),
        ValueError,
        r"got shape \(1, 2, 3, 3\)",
    ),
    (
        "zero-height",
        lambda p: (np.zeros((0, 5, 3), np.uint8), "RGB"),
        ValueError,
        r"zero-size shape \(0, 5, 3\)",
    ),
    (
        "zero-width-grey",
        lambda p: (np.zeros((5, 0), np.uint8), "RGB"),
        ValueError,
        r"zero-size shape \(5, 0\)",
    ),
    (
        "two-channels",
        lambda p: (np.zeros((4, 5, 2), np.uint8), "RGB"),
        ValueError,
        r"\(H, W, 4\).*got shape \(4, 5, 2\)",
    ),
    (
        "five-channels",
        lambda p: (np.zeros((4, 5, 5), np.uint8), "RGB"),
        ValueError,
        r"got shape \(4, 5, 5\)",
    ),
    (
        "float32-array",
        lambda p: (np.zeros((4, 5, 3), np.float32), "RGB"),
        TypeError,
        r"expected .*uint8, got dtype float32.*\(img \* 255\)\.round\(\)\.astype\(np\.uint8\)",
    ),
    (
        "int64-array",
        lambda p: (np.zeros((4, 5, 3), np.int64), "RGB"),
        TypeError,
        r"expected .*uint8, got dtype int64",
    ),
    (
        "bool-array",
        lambda p: (np.zeros((4, 5), bool), "RGB"),
        TypeError,
        r"uint8, got dtype bool",
    ),
    (
        "list",
        lambda p: ([[0, 0, 0]], "RGB"),
        TypeError,
        r"expected a path .*PIL\.Image\.Image or numpy\.ndarray, got list",
    ),
    ("none", lambda p: (None, "RGB"), TypeError, r"got NoneType"),
    ("bytes", lambda p: (b"\x89PNG", "RGB"), TypeError, r"got bytes"),
    ("int", lambda p: (3, "RGB"), TypeError, r"got int"),
    ("tensor-like", lambda p: (_FakeTensor(), "RGB"), TypeError, r"got torch\.Tensor"),
    (
        "bad-image-format",
        lambda p: (np.zeros((4, 5, 3), np.uint8), "HSV"),
        ValueError,
        r"image_format must be one of 'RGB', 'BGR'.*got 'HSV'",
    ),
    (
        "bad-image-format-with-path",
        lambda p: (p / "does_not_exist.png", "RGBA"),
        ValueError,
        r"image_format must be one of 'RGB', 'BGR'",
    ),
]


@pytest.mark.parametrize(
    ("factory", "exc", "pattern"),
    [pytest.param(f, e, m, id=i) for i, f, e, m in BAD_INPUTS],
)
def test_bad_inputs(tmp_path: pathlib.Path, factory, exc: type, pattern: str) -> None:
    image, image_format = factory(tmp_path)
    with pytest.raises(exc, match=pattern):
        load_image(image, image_format)


def test_missing_file_error_carries_filename(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError) as info:
        load_image(path)
    assert info.value.filename == str(path)


def test_float_array_error_does_not_touch_array() -> None:
    arr = np.full((2, 2, 3), 0.5, dtype=np.float32)
    with pytest.raises(TypeError):
        load_image(arr)
    assert np.all(arr == 0.5)
