"""Decoding: every supported file kind ends as RGB uint8 at the cache size; unreadable files raise DecodeError."""

import cv2
import numpy as np
import pytest

from fasttrain.data.decode import DecodeError, decode_file


def _write(path, bgr_or_gray, ext):
    ok, encoded = cv2.imencode(ext, bgr_or_gray)
    assert ok
    path.write_bytes(encoded.tobytes())
    return path


def test_colour_jpeg_is_converted_from_bgr_to_rgb(tmp_path):
    bgr = np.zeros((32, 32, 3), np.uint8)
    bgr[..., 2] = 250  # red in OpenCV's BGR order
    image = decode_file(_write(tmp_path / "red.jpg", bgr, ".jpg"), 32)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert image[..., 0].mean() > 240 and image[..., 2].mean() < 15


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.full((20, 20), 77, np.uint8)
    image = decode_file(_write(tmp_path / "gray.png", gray, ".png"), 20)
    assert image.shape == (20, 20, 3)
    assert (image == 77).all()


def test_rgba_png_drops_alpha_and_keeps_colour(tmp_path):
    bgra = np.zeros((16, 16, 4), np.uint8)
    bgra[..., 0] = 200  # blue
    bgra[..., 3] = 10   # almost transparent: alpha is dropped, not blended
    image = decode_file(_write(tmp_path / "rgba.png", bgra, ".png"), 16)
    assert image.shape == (16, 16, 3)
    assert (image[..., 2] == 200).all() and (image[..., :2] == 0).all()


def test_sixteen_bit_png_is_scaled_to_eight_bits(tmp_path):
    gray16 = np.full((16, 16), 65535, np.uint16)
    gray16[:8] = 257 * 100
    image = decode_file(_write(tmp_path / "deep.png", gray16, ".png"), 16)
    assert image.dtype == np.uint8
    assert (image[8:] == 255).all() and (image[:8] == 100).all()


def test_bmp_and_other_sizes_are_resized(tmp_path):
    bgr = np.full((100, 50, 3), (10, 20, 30), np.uint8)
    image = decode_file(_write(tmp_path / "wide.bmp", bgr, ".bmp"), 32)
    assert image.shape == (32, 32, 3)
    assert tuple(image[16, 16]) == (30, 20, 10)
    small = decode_file(_write(tmp_path / "small.png", bgr[:8, :8], ".png"), 32)
    assert small.shape == (32, 32, 3)


@pytest.mark.parametrize("damage", ["zero-byte", "truncated-jpeg", "truncated-png", "not-an-image"])
def test_unreadable_files_raise_decode_error(tmp_path, damage):
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    path = tmp_path / "bad.img"
    if damage == "zero-byte":
        path.write_bytes(b"")
    elif damage == "truncated-jpeg":
        data = cv2.imencode(".jpg", pixels)[1].tobytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "truncated-png":
        data = cv2.imencode(".png", pixels)[1].tobytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"this is a text file, not a picture" * 10)
    with pytest.raises(DecodeError):
        decode_file(path, 32)
