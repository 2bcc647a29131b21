"""Image reading with user-facing errors.

``read_image`` returns a numpy float32 (H, W, C) array in [-1, 1] (numpy, not torch, so
evaluation/export code can use it without torch; :mod:`slimface.data.torch_data` converts).
Every failure a user can cause (missing file, empty or truncated file, wrong size or channel
count under ``strict_size``) raises :class:`DataError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from slimface.errors import DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm"})


class ImageFileError(DataError):
    """An image file that cannot be used; ``reason`` is a short category for load reports."""

    def __init__(self, message: str, reason: str, detail: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.detail = detail


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def image_channels(img: Image.Image) -> int:
    """Channel count of a PIL image as stored (L/I/F: 1, LA: 2, RGB/P/YCbCr: 3, RGBA/CMYK: 4)."""
    return {"1": 1, "L": 1, "I": 1, "F": 1, "LA": 2, "PA": 2, "RGBA": 4, "CMYK": 4}.get(
        img.mode if not img.mode.startswith("I;16") else "I", 3
    )


def probe_image(path: Path) -> tuple[int, int]:
    """Cheap load-time check: non-empty file and a readable image header. Returns (width, height)."""
    return probe_header(path)[0]


def probe_header(path: Path) -> tuple[tuple[int, int], int]:
    """Like :func:`probe_image`, plus the stored channel count (header only, no pixel decode)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageFileError(f"image file not found: {path}", "missing file") from None
    if size == 0:
        raise ImageFileError(f"empty file (0 bytes): {path}; re-copy or delete it", "empty file")
    try:
        with Image.open(path) as img:
            return img.size, image_channels(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageFileError(f"unreadable image {path}: {e}; re-copy or delete it", "unreadable image", str(e)) from None


def open_image(path: Path) -> Image.Image:
    """Fully decode ``path`` (catches truncated files, which PIL only notices on load)."""
    path = Path(path)
    if not path.is_file():
        raise ImageFileError(f"image file not found: {path}", "missing file")
    if path.stat().st_size == 0:
        raise ImageFileError(f"empty file (0 bytes): {path}; re-copy or delete it", "empty file")
    try:
        with Image.open(path) as img:
            img.load()  # the decoded pixels stay valid after the file is closed
            return img
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageFileError(
            f"unreadable or truncated image {path}: {e}; re-copy or delete it", "unreadable image", str(e)
        ) from None


def _to_unit_array(img: Image.Image, channels: int) -> np.ndarray:
    """PIL image -> float32 (H, W, channels) in [0, 1], converting the colour mode."""
    if img.mode.startswith("I;16") or img.mode == "I":
        a = np.asarray(img, dtype=np.float32) / 65535.0
        a = np.clip(a, 0.0, 1.0)[..., None]
        return np.repeat(a, 3, axis=2) if channels == 3 else a
    if img.mode == "F":
        a = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)[..., None]
        return np.repeat(a, 3, axis=2) if channels == 3 else a
    if channels == 1:
        img = img.convert("L")  # ITU-R 601 luma for colour inputs
        return (np.asarray(img, dtype=np.float32) / 255.0)[..., None]
    img = img.convert("RGB")  # gray images are replicated to 3 channels
    return np.asarray(img, dtype=np.float32) / 255.0


def pil_to_array(
    img: Image.Image,
    resolution: int | None,
    channels: int,
    *,
    strict_size: bool = False,
    name: str = "image",
) -> np.ndarray:
    """Convert a decoded PIL image to float32 (H, W, C) in [-1, 1] (see :func:`read_image`)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if strict_size:
        if resolution is not None and img.size != (resolution, resolution):
            raise DataError(
                f"{name} is {img.size[0]}x{img.size[1]} but {resolution}x{resolution} is required; "
                "crop/resize your data or turn off strict size checking"
            )
        have = image_channels(img)
        if have != channels:
            raise DataError(
                f"{name} has {have} channel(s) (mode {img.mode}) but {channels} are required; "
                "convert the images or set channels to match"
            )
    if resolution is not None and img.size != (resolution, resolution):
        if img.mode.startswith("I;16") or img.mode == "I":
            img = img.convert("F").point(lambda v: v / 65535.0)
        img = img.resize((resolution, resolution), Image.BILINEAR)
    a = _to_unit_array(img, channels)
    return (a * 2.0 - 1.0).astype(np.float32)


def read_image(
    path: str | Path,
    resolution: int | None = None,
    channels: int = 3,
    *,
    strict_size: bool = False,
) -> np.ndarray:
    """Read an image as float32 (H, W, C) in [-1, 1].

    ``resolution``: output is ``resolution x resolution`` (bilinear resize; crops are
    expected to be aligned already, so non-square images are stretched), or the native size
    if None. ``channels``: 1 (luma) or 3 (gray replicated). ``strict_size=True`` raises
    DataError instead of resizing/converting when the size or channel count differs.
    """
    img = open_image(Path(path))
    return pil_to_array(img, resolution, channels, strict_size=strict_size, name=str(path))
