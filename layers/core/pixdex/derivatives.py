"""Thumbnail and preview derivatives: size, format choice, metadata stripping, and a quality figure.

Speed: the decoder is asked for the preview size (JPEG draft mode decodes at 1/2..1/8 scale), the preview
is resized once from that, and the thumbnail is made from the preview, never from the full source.

Encoder effort (CPU ms on one core of the development machine; the sweep is in docs/benchmarks.md):

- WebP lossy ``method=0`` for previews: on a 1280x960 photo, method 1 costs 1.3x, method 4 3.3x the time
  for 1-5 % fewer bytes; method 0 is what keeps a 12 MP JPEG inside the one-core budget. Thumbnails use
  ``method=4`` (5 ms instead of 2 ms at 256 px, 16 % smaller).
- WebP lossless ``method=0, quality=75`` for previews: on a 1280x720 screenshot with text and a photo,
  10x faster than Pillow's default (method 4, quality 80) for 15 % more bytes, 7x faster than
  method 1 for the same size; below quality 50 the size jumps by half. Thumbnails: quality 100.
- PNG ``compress_level=6`` (zlib's default): on flat UI content level 3 is half again as big; on
  screenshots with text and photos the levels give the same size.
- JPEG ``optimize=True``: Huffman tables fitted to the image, 2 % smaller for about 4 ms per preview.
- AVIF ``speed=8`` for previews: libavif's default (6) is 3.8x slower for 14 % fewer bytes; 6 for
  thumbnails, where it costs little.
"""

from __future__ import annotations

import builtins
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from PIL import Image, features

from pixdex.imaging import DecodedImage
from pixdex.settings import DerivativeSettings

THUMBNAIL: Final = "thumbnail"
PREVIEW: Final = "preview"

CONTENT_TYPES: Final = {
    "webp": "image/webp",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "avif": "image/avif",
}
EXTENSIONS: Final = {"webp": "webp", "jpeg": "jpg", "png": "png", "avif": "avif"}

# WebP cannot store images larger than this on either side.
_WEBP_MAX_SIDE: Final = 16383
_JPEG_MAX_SIDE: Final = 65500
# Derivatives at or under this many pixels are "small" and get the higher-effort encoder settings.
_SMALL_PIXELS: Final = 300_000
# PSNR of identical images is infinite; JSON cannot carry that, so it is capped here.
PSNR_CAP: Final = 100.0
_WHITE: Final = (255, 255, 255)
# Pillow's bilinear filter widens its support with the reduction, so it is antialiased (a triangle
# filter); on the 1.56x step from a half-scale JPEG decode to the preview it is 35 % cheaper than bicubic
# and 2.5x cheaper than Lanczos, slightly softer, and that difference is what keeps the one-core budget.
_RESAMPLE: Final = Image.Resampling.BILINEAR


@dataclass(frozen=True)
class Derivative:
    """One encoded derivative and the facts recorded about it (everything except ``data`` is indexed)."""

    name: str
    data: builtins.bytes
    format: str
    content_type: str
    width: int
    height: int
    lossless: bool
    quality: float | None  # SSIM of luma against the resized source, 0..1
    psnr: float | None  # dB, capped at PSNR_CAP

    @property
    def bytes(self) -> int:
        return len(self.data)

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]

    def to_dict(self) -> dict[str, Any]:
        """The document's view of this derivative (no pixel data)."""
        return {
            "name": self.name,
            "format": self.format,
            "content_type": self.content_type,
            "width": self.width,
            "height": self.height,
            "bytes": self.bytes,
            "lossless": self.lossless,
            "quality": self.quality,
            "psnr": self.psnr,
        }


@dataclass(frozen=True)
class CompressionSummary:
    source_bytes: int
    derivative_bytes: int  # all derivatives together
    saved_bytes: int  # source_bytes - preview bytes: what serving the preview instead of the original saves
    ratio: float  # preview bytes / source bytes (lower is better)
    per_derivative: dict[str, float]  # name -> derivative bytes / source bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "source_bytes": self.source_bytes,
            "derivative_bytes": self.derivative_bytes,
            "saved_bytes": self.saved_bytes,
            "ratio": self.ratio,
            "per_derivative": dict(self.per_derivative),
        }


def summarise(source_bytes: int, derivatives: Sequence[Derivative]) -> CompressionSummary:
    """Source bytes against derivative bytes. The preview is what replaces the original in a viewer."""
    if source_bytes <= 0:
        raise ValueError("source_bytes must be positive")
    by_name = {d.name: d for d in derivatives}
    main = by_name.get(PREVIEW) or max(derivatives, key=lambda d: d.bytes, default=None)
    main_bytes = main.bytes if main is not None else 0
    return CompressionSummary(
        source_bytes=source_bytes,
        derivative_bytes=sum(d.bytes for d in derivatives),
        saved_bytes=source_bytes - main_bytes,
        ratio=round(main_bytes / source_bytes, 6),
        per_derivative={d.name: round(d.bytes / source_bytes, 6) for d in derivatives},
    )


def fit_size(width: int, height: int, longest: int) -> tuple[int, int]:
    """Size that fits ``longest`` on the longer side, keeping aspect ratio; never larger than the source."""
    if width <= 0 or height <= 0:
        raise ValueError(f"bad size {width}x{height}")
    side = max(width, height)
    if side <= longest:
        return width, height
    scale = longest / side
    return max(1, round(width * scale)), max(1, round(height * scale))


def make_derivatives(
    decoded: DecodedImage, settings: DerivativeSettings, *, measure_quality: bool = True,
) -> list[Derivative]:
    """Encode the preview and the thumbnail (in that order in the result: thumbnail first)."""
    lossless = decoded.lossless and decoded.width * decoded.height <= settings.lossless_max_pixels
    preview_size = fit_size(decoded.width, decoded.height, settings.preview_size)
    thumb_size = fit_size(decoded.width, decoded.height, settings.thumbnail_size)

    preview = _resize(decoded.image, preview_size)
    # The thumbnail comes from the preview (already small), unless the preview box is the smaller one.
    covers = preview.width >= thumb_size[0] and preview.height >= thumb_size[1]
    thumb_source = preview if covers else decoded.image
    thumbnail = _resize(thumb_source, thumb_size)

    out = []
    for name, image in ((THUMBNAIL, thumbnail), (PREVIEW, preview)):
        out.append(_encode(name, image, settings, lossless=lossless, icc=decoded.icc_profile,
                           measure_quality=measure_quality))
    return out


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if image.size == size:
        return image
    return image.resize(size, _RESAMPLE, reducing_gap=3.0)


def _choose_format(settings: DerivativeSettings, *, lossless: bool) -> tuple[str, bool]:
    """(format, lossless) for this source before any fallback."""
    fmt = settings.format
    if lossless:
        # JPEG cannot be lossless and AVIF's lossless mode is not exposed by Pillow: use PNG / WebP.
        if fmt in ("png", "jpeg"):
            return "png", True
        return "webp", True
    if fmt == "png":
        return "png", True
    return fmt, False


def _can_carry(fmt: str, image: Image.Image) -> bool:
    if fmt == "webp":
        return max(image.size) <= _WEBP_MAX_SIDE
    if fmt == "avif":
        return bool(features.check("avif"))
    if fmt == "jpeg":
        return max(image.size) <= _JPEG_MAX_SIDE
    return True


def _encode(
    name: str, image: Image.Image, settings: DerivativeSettings, *, lossless: bool, icc: bytes | None,
    measure_quality: bool,
) -> Derivative:
    fmt, is_lossless = _choose_format(settings, lossless=lossless)
    small = image.width * image.height <= _SMALL_PIXELS
    data: bytes | None = None
    reference = image
    if _can_carry(fmt, image):
        try:
            data = _save(image, fmt, quality=settings.quality, lossless=is_lossless, icc=icc, small=small)
        except (OSError, ValueError):
            data = None
    if data is None:
        # JPEG fallback: every viewer can show it and it can carry any size we make.
        fmt, is_lossless = "jpeg", False
        reference = _flatten(image)
        data = _save(reference, fmt, quality=settings.quality, lossless=False, icc=icc, small=small)
    elif fmt == "jpeg":
        reference = _flatten(image)
    ssim_value: float | None = None
    psnr_value: float | None = None
    if measure_quality:
        ssim_value, psnr_value = _measure(reference, data)
    return Derivative(
        name=name,
        data=data,
        format=fmt,
        content_type=CONTENT_TYPES[fmt],
        width=image.width,
        height=image.height,
        lossless=is_lossless,
        quality=ssim_value,
        psnr=psnr_value,
    )


def _flatten(image: Image.Image) -> Image.Image:
    if image.mode != "RGBA":
        return image
    background = Image.new("RGB", image.size, _WHITE)
    background.paste(image, mask=image.getchannel("A"))
    return background


def _save(
    image: Image.Image, fmt: str, *, quality: int, lossless: bool, icc: bytes | None, small: bool,
) -> bytes:
    # Only what we pass reaches the file: an empty info dict means no EXIF, GPS, XMP, comments or text
    # chunks can ride along from the source (Pillow's savers fall back to image.info for some of them).
    clean = image.copy() if image.info else image
    clean.info = {}
    params: dict[str, Any] = {"icc_profile": icc or None}
    if fmt == "webp":
        if lossless:
            params.update(lossless=True, quality=100 if small else 75, method=0)
        else:
            params.update(quality=quality, method=4 if small else 0)
        pil_format = "WEBP"
    elif fmt == "jpeg":
        if clean.mode != "RGB":
            clean = _flatten(clean).convert("RGB")
        params.update(quality=quality, optimize=True, subsampling="4:2:0")
        pil_format = "JPEG"
    elif fmt == "png":
        params.update(compress_level=6)
        pil_format = "PNG"
    elif fmt == "avif":
        params.update(quality=quality, speed=6 if small else 8)
        pil_format = "AVIF"
    else:
        raise ValueError(f"unknown derivative format {fmt!r}")
    if params["icc_profile"] is None:
        del params["icc_profile"]
    buf = io.BytesIO()
    clean.save(buf, pil_format, **params)
    return buf.getvalue()


def _luma(image: Image.Image) -> np.ndarray:
    luma: np.ndarray = np.asarray(_flatten(image).convert("L"), dtype=np.float32)
    return luma


def _measure(reference: Image.Image, data: bytes) -> tuple[float, float]:
    decoded = Image.open(io.BytesIO(data))
    decoded.load()
    a = _luma(reference)
    b = _luma(decoded)
    if a.shape != b.shape:
        raise ValueError(f"decoded derivative is {b.shape}, expected {a.shape}")
    return ssim(a, b), psnr(a, b)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB for 8-bit data, capped at PSNR_CAP for identical inputs."""
    diff = a.astype(np.float32) - b.astype(np.float32)
    mse = float(np.mean(diff * diff))
    if mse <= 0:
        return PSNR_CAP
    return round(min(PSNR_CAP, 10.0 * math.log10(255.0 * 255.0 / mse)), 3)


_C1: Final = (0.01 * 255) ** 2
_C2: Final = (0.03 * 255) ** 2


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004) of two 8-bit single-channel images.

    Windows are 8x8 pixels at a stride of 4, built from 4x4 block sums, so every pixel is seen twice and
    JPEG/WebP block boundaries fall inside windows (non-overlapping 8x8 windows aligned with the codec's
    blocks would miss blocking artefacts). Fully vectorised: about 1/10 of the time of a sliding 7x7
    window at full resolution, so measuring quality stays inside the per-image budget.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"ssim needs two equal 2-D arrays, got {a.shape} and {b.shape}")
    x = a.astype(np.float32)
    y = b.astype(np.float32)
    h, w = x.shape
    if h < 8 or w < 8:
        return _ssim_window(x, y)
    bh, bw = h // 4, w // 4
    x = np.ascontiguousarray(x[: bh * 4, : bw * 4])
    y = np.ascontiguousarray(y[: bh * 4, : bw * 4])

    def window_sums(v: np.ndarray) -> np.ndarray:
        # 4x4 block sums by adding strided slices (10x faster than reshape(...).sum(axis=(1, 3))); sums
        # of 8-bit values and their products stay exact in float32 at these counts.
        r = v.reshape(bh * 4, bw, 4)
        cols = r[:, :, 0] + r[:, :, 1] + r[:, :, 2] + r[:, :, 3]
        c = cols.reshape(bh, 4, bw)
        blocks = (c[:, 0] + c[:, 1] + c[:, 2] + c[:, 3]).astype(np.float64)
        sums: np.ndarray = blocks[:-1, :-1] + blocks[1:, :-1] + blocks[:-1, 1:] + blocks[1:, 1:]
        return sums

    n = 64.0
    mx = window_sums(x) / n
    my = window_sums(y) / n
    vx = window_sums(x * x) / n - mx * mx
    vy = window_sums(y * y) / n - my * my
    cxy = window_sums(x * y) / n - mx * my
    num = (2 * mx * my + _C1) * (2 * cxy + _C2)
    den = (mx * mx + my * my + _C1) * (vx + vy + _C2)
    return round(float(np.mean(num / den)), 6)


def _ssim_window(x: np.ndarray, y: np.ndarray) -> float:
    mx, my = float(x.mean()), float(y.mean())
    vx, vy = float(x.var()), float(y.var())
    cxy = float(((x - mx) * (y - my)).mean())
    value = ((2 * mx * my + _C1) * (2 * cxy + _C2)) / ((mx * mx + my * my + _C1) * (vx + vy + _C2))
    return round(value, 6)
