"""Images: [-1, 1] floats to uint8, a grid, and a PNG writer that needs only zlib."""
from __future__ import annotations

import math
import struct
import zlib

import numpy as np

from .errors import FarError
from .files import atomic_write


def check_finite(images: np.ndarray) -> None:
    """Refuse a run whose decoded images hold NaN or Inf (never write a black image)."""
    if not np.isfinite(images).all():
        raise FarError("The run produced NaN or infinite values (the model or the options "
                       "overflow), so no image was made.")


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] to [B, H, W, 3] uint8 (MAR's (x + 1) / 2 mapping)."""
    x = np.clip((np.asarray(images, dtype=np.float32) + 1.0) * 127.5, 0, 255)
    return np.rint(x).astype(np.uint8).transpose(0, 2, 3, 1)


def grid(images: np.ndarray, cols: int | None = None, pad: int = 2) -> np.ndarray:
    """[B, H, W, 3] uint8 to one [rows*H, cols*W, 3] image."""
    B, H, W, C = images.shape
    cols = cols or math.ceil(math.sqrt(B))
    rows = math.ceil(B / cols)
    out = np.full((rows * (H + pad) + pad, cols * (W + pad) + pad, C), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        y, x = pad + r * (H + pad), pad + c * (W + pad)
        out[y:y + H, x:x + W] = img
    return out


def write_png(path: str, image: np.ndarray) -> None:
    """An [H, W, 3] uint8 array as an 8-bit RGB PNG, written atomically."""
    png = encode_png(image)

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(png)
    atomic_write(path, write)


def encode_png(image: np.ndarray) -> bytes:
    """The bytes of an 8-bit RGB PNG of an [H, W, 3] uint8 array."""
    H, W, _ = image.shape
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(H))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    return png
