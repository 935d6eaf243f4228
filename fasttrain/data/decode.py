"""Decode one image file with OpenCV to RGB uint8 (H, W, 3) at the cache's image size."""

from __future__ import annotations

import os

import cv2
import numpy as np

# Colour (grey → 3 channels, alpha dropped) at the file's own bit depth, so 16-bit files are
# scaled to 8 bits here rather than clipped by OpenCV.
_READ_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH
_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"


class DecodeError(Exception):
    """An image file that cannot be decoded (zero bytes, truncated, not an image); the message is the reason."""


def quiet_opencv() -> None:
    """Silence OpenCV's own stderr warnings (we report unreadable files ourselves) and its thread pool."""
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:
        pass
    cv2.setNumThreads(1)


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """BGR(A)/grey OpenCV array of any supported depth → contiguous RGB uint8 (H, W, 3)."""
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    elif image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    else:
        raise DecodeError(f"unsupported channel count {image.shape[2]}")
    if image.dtype == np.uint16:
        # 0..65535 → 0..255 with rounding (65535/255 = 257)
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        image = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DecodeError(f"unsupported pixel type {image.dtype}")
    return np.ascontiguousarray(image)


def resize_to(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to size×size (no crop: the whole picture is kept); area filter when shrinking."""
    height, width = image.shape[:2]
    if height == size and width == size:
        return image
    shrinking = height * width > size * size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def decode_bytes(data: bytes | np.ndarray, size: int) -> np.ndarray:
    """Decode encoded image bytes to RGB uint8 (size, size, 3); DecodeError with a reason if unreadable."""
    buffer = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
    if buffer.size == 0:
        raise DecodeError("zero-byte file")
    # Older OpenCV builds return a grey-padded picture for a truncated JPEG; a JPEG must contain
    # its end-of-image marker.
    if buffer[:2].tobytes() == _JPEG_START and buffer.tobytes().rfind(_JPEG_END) < 0:
        raise DecodeError("truncated JPEG (no end-of-image marker)")
    try:
        image = cv2.imdecode(buffer, _READ_FLAGS)
    except cv2.error as err:
        raise DecodeError(f"OpenCV could not decode it ({str(err).strip().splitlines()[-1]})") from None
    if image is None or image.size == 0:
        raise DecodeError("not a readable image (truncated or corrupt)")
    return resize_to(to_rgb_uint8(image), size)


def decode_file(path: str | os.PathLike, size: int) -> np.ndarray:
    """Read and decode one file to RGB uint8 (size, size, 3); DecodeError with a reason if unreadable."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise DecodeError(f"cannot read file ({err.strerror or err})") from None
    return decode_bytes(data, size)
