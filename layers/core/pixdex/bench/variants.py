"""Edited copies of a photo, as people make them: crops, resizes, recompression, small rotations, colour
tweaks, watermarks, and combinations of these. The near-duplicate benchmark indexes them beside their
originals; each is described by its kind and parameters so results can be reported per kind.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from PIL import Image, ImageDraw, ImageEnhance, ImageFont

# JPEG quality of every variant whose edit is not itself a recompression: what editors and phones save.
SAVE_QUALITY: Final = 90


@dataclass(frozen=True)
class Variant:
    """One edit: ``kind`` groups variants in reports (crop, resize, jpeg, ...), ``name`` is unique per photo."""

    kind: str
    name: str
    apply: Callable[[Image.Image], Image.Image]
    quality: int = SAVE_QUALITY

    def render(self, image: Image.Image) -> bytes:
        """The edited copy as the JPEG file a person would upload."""
        edited = self.apply(flatten(image))
        buf = io.BytesIO()
        edited.save(buf, "JPEG", quality=self.quality)
        return buf.getvalue()


def flatten(image: Image.Image) -> Image.Image:
    """RGB, with transparent areas over white, as the pipeline and viewers show them."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return image if image.mode == "RGB" else image.convert("RGB")


def crop(fraction: float, anchor: tuple[float, float] = (0.5, 0.5)) -> Callable[[Image.Image], Image.Image]:
    """Keep ``fraction`` of each side; ``anchor`` places the kept window (0.5, 0.5 = centred, 0, 0 = top left)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"crop fraction must be in (0, 1], got {fraction}")

    def apply(image: Image.Image) -> Image.Image:
        w, h = image.size
        cw, ch = max(1, round(w * fraction)), max(1, round(h * fraction))
        left, top = round((w - cw) * anchor[0]), round((h - ch) * anchor[1])
        return image.crop((left, top, left + cw, top + ch))
    return apply


def resize(scale: float) -> Callable[[Image.Image], Image.Image]:
    def apply(image: Image.Image) -> Image.Image:
        w, h = image.size
        return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    return apply


def rotate(degrees: float) -> Callable[[Image.Image], Image.Image]:
    """Rotate about the centre, keeping the frame; the corners that come into view are black, as most tools
    leave them unless the user crops them away (that is the rotate+crop combination)."""
    def apply(image: Image.Image) -> Image.Image:
        return image.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=False)
    return apply


def brightness(factor: float) -> Callable[[Image.Image], Image.Image]:
    def apply(image: Image.Image) -> Image.Image:
        return ImageEnhance.Brightness(image).enhance(factor)
    return apply


def saturation(factor: float) -> Callable[[Image.Image], Image.Image]:
    def apply(image: Image.Image) -> Image.Image:
        return ImageEnhance.Color(image).enhance(factor)
    return apply


def contrast(factor: float) -> Callable[[Image.Image], Image.Image]:
    def apply(image: Image.Image) -> Image.Image:
        return ImageEnhance.Contrast(image).enhance(factor)
    return apply


def watermark(text: str = "\u00a9 pixdex 2026", height: float = 0.06, opacity: int = 160,
              diagonal: bool = False) -> Callable[[Image.Image], Image.Image]:
    """Semi-transparent white text with a dark outline: bottom right, or large across the middle."""
    def apply(image: Image.Image) -> Image.Image:
        w, h = image.size
        size = max(8, round(h * height))
        font = ImageFont.load_default(size=size)
        layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=max(1, size // 12))
        tw, th = right - left, bottom - top
        if diagonal:
            pos = ((w - tw) // 2, (h - th) // 2)
        else:
            pos = (max(0, w - tw - size // 2), max(0, h - th - size // 2))
        draw.text(pos, text, font=font, fill=(255, 255, 255, opacity), stroke_width=max(1, size // 12),
                  stroke_fill=(0, 0, 0, opacity))
        if diagonal:
            layer = layer.rotate(30, resample=Image.Resampling.BICUBIC)
        out = image.convert("RGBA")
        out.alpha_composite(layer)
        return out.convert("RGB")
    return apply


def chain(*steps: Callable[[Image.Image], Image.Image]) -> Callable[[Image.Image], Image.Image]:
    def apply(image: Image.Image) -> Image.Image:
        for step in steps:
            image = step(image)
        return image
    return apply


def _identity(image: Image.Image) -> Image.Image:
    return image


def standard_variants() -> list[Variant]:
    """The benchmark's variant set: each kind over its whole range (crop 70-95 %, JPEG q 20-95, rotation
    ±5 degrees, ...), then combinations of the edits that defeat each signal separately."""
    v: list[Variant] = []
    for pct in (95, 90, 80, 70):
        v.append(Variant("crop", f"crop-{pct}", crop(pct / 100)))
    v.append(Variant("crop", "crop-85-corner", crop(0.85, anchor=(0.0, 0.0))))
    v.append(Variant("crop", "crop-75-side", crop(0.75, anchor=(1.0, 0.5))))
    for pct in (50, 25):
        v.append(Variant("resize", f"resize-{pct}", resize(pct / 100)))
    for q in (95, 50, 30, 20):
        v.append(Variant("jpeg", f"jpeg-q{q}", _identity, quality=q))
    for deg in (5, 2, -3, -5):
        v.append(Variant("rotate", f"rotate{deg:+d}", rotate(deg)))
    v.append(Variant("brightness", "brightness-130", brightness(1.3)))
    v.append(Variant("brightness", "brightness-70", brightness(0.7)))
    v.append(Variant("colour", "saturation-150", saturation(1.5)))
    v.append(Variant("colour", "grayscale", saturation(0.0)))
    v.append(Variant("colour", "contrast-70", contrast(0.7)))
    v.append(Variant("watermark", "watermark-corner", watermark()))
    v.append(Variant("watermark", "watermark-diagonal", watermark(height=0.12, opacity=110, diagonal=True)))
    v.append(Variant("combined", "crop-85+resize-50+jpeg-q40", chain(crop(0.85), resize(0.5)), quality=40))
    v.append(Variant("combined", "rotate+3+crop-90+brightness-120",
                     chain(rotate(3), crop(0.9), brightness(1.2))))
    v.append(Variant("combined", "crop-75+watermark+jpeg-q30", chain(crop(0.75), watermark()), quality=30))
    v.append(Variant("combined", "rotate-5+saturation-70+resize-50", chain(rotate(-5), saturation(0.7),
                                                                          resize(0.5))))
    return v


def kinds(variants: Sequence[Variant]) -> list[str]:
    return list(dict.fromkeys(v.kind for v in variants))
