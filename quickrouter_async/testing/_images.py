"""Output images: cheap gradients drawn with Pillow on first download, then cached.

Pillow is imported only when an image is drawn, so the emulator runs without it; a
download then gets a 503 that says what to install.
"""

from __future__ import annotations

import hashlib
import io
from collections import OrderedDict
from typing import Final

PILLOW_MISSING: Final = (
    "Drawing output images needs Pillow: pip install 'quickrouter-async[emulator]'"
)


class PillowMissingError(RuntimeError):
    """Pillow is not installed, so no image can be drawn."""


def _colours(seed: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    digest = hashlib.sha256(seed.encode()).digest()
    return (digest[0], digest[1], digest[2]), (digest[3], digest[4], digest[5])


def draw(seed: str, width: int, height: int, extension: str) -> bytes:
    """A ``width`` x ``height`` gradient coloured by ``seed``, encoded as jpg or png.

    Raises:
        PillowMissingError: Pillow cannot be imported.
    """
    try:
        from PIL import Image  # noqa: PLC0415 (optional dependency, imported when needed)
    except ImportError as exc:
        raise PillowMissingError(PILLOW_MISSING) from exc
    left, right = _colours(seed)
    # Two pixels stretched bilinearly make a gradient at the cost of one resize.
    image = Image.new("RGB", (2, 1))
    image.putpixel((0, 0), left)
    image.putpixel((1, 0), right)
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    if extension == "png":
        image.save(buffer, format="PNG", compress_level=1)
    else:
        image.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


class ImageCache:
    """A small least-recently-used cache of encoded images."""

    def __init__(self, size: int = 128) -> None:
        """Keep at most ``size`` images."""
        self.size = size
        self._items: OrderedDict[tuple[str, int], bytes] = OrderedDict()

    def get(self, key: tuple[str, int]) -> bytes | None:
        """The cached image, marked as recently used, or ``None``."""
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
        return data

    def put(self, key: tuple[str, int], data: bytes) -> None:
        """Cache an image, evicting the least recently used beyond ``size``."""
        self._items[key] = data
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        """Forget every image."""
        self._items.clear()
