"""``pixdex bench compress``: derivative throughput on one core and bytes saved, against a plain-Pillow baseline.

The data set is generated (deterministic per seed) unless files are given: 12 MP photo-like JPEGs
(gradients, soft shapes, texture, sensor noise: they compress like photos), real photos from installed
packages tiled up to 12 MP when any are present, and big screenshot-like PNGs (flat panels, hard edges),
one under and one over the lossless pixel threshold.

Per image, three paths are timed on one pinned core, each repeated and the median kept:

- ``pixdex``: ``imaging.decode`` with draft mode at the preview size + ``make_derivatives`` without the
  quality measurement: the work the 150 ms target is about;
- ``pixdex + quality``: the same plus decoding each derivative back and computing SSIM/PSNR (what the
  ``compress`` function records);
- ``baseline``: the straightforward Pillow way: full decode (no draft), EXIF transpose, Lanczos resize of
  the full image to each size, WebP at Pillow's default effort (quality 80, method 4).

Results are written to the ``## compress`` section of docs/benchmarks.md (other sections are kept).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Final

import numpy as np
import PIL
from PIL import Image, ImageDraw, ImageFont, ImageOps, features

import pixdex
from pixdex import derivatives as dv
from pixdex import imaging
from pixdex.bench.report import publish
from pixdex.bench.stats import cpu_model
from pixdex.packages import package_dir
from pixdex.settings import DerivativeSettings, ImageLimits

SECTION: Final = "## compress"
TARGET_MS: Final = 150.0
DEFAULT_OUTPUT: Final = Path("docs/benchmarks.md")

# (package, resource path inside it): photographs some installed packages ship as sample data.
_PACKAGE_PHOTOS: Final = (
    ("sklearn", "datasets/images/china.jpg"),
    ("sklearn", "datasets/images/flower.jpg"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ("skimage", "data/astronaut.png"),
    ("skimage", "data/coffee.png"),
)


# ------------------------------------------------------------------------------------------------------
# Synthetic content (also used by tests/imagegen.py, so tests and benchmark see the same kind of pixels)


@lru_cache(maxsize=8)
def _photo_cached(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # A sky-to-ground style vertical gradient with a random tint.
    top = rng.uniform(40, 220, 3)
    bottom = rng.uniform(20, 200, 3)
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    img = (top[None, None, :] * (1 - t) + bottom[None, None, :] * t).astype(np.float32)
    img = np.broadcast_to(img, (h, w, 3)).copy()
    # Low-frequency colour blobs (lighting, large objects), upsampled smoothly.
    gh, gw = max(2, h // 96 + 2), max(2, w // 96 + 2)
    blobs = rng.normal(128, 45, (gh, gw, 3)).clip(0, 255).astype(np.uint8)
    img += np.asarray(Image.fromarray(blobs).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    img -= 128.0
    # Soft-edged shapes: objects with edges a codec has to keep.
    shapes = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(shapes)
    for _ in range(12):
        x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.2, 1.0) * h
        x1, y1 = x0 + rng.uniform(0.05, 0.5) * w, y0 + rng.uniform(0.05, 0.5) * h
        fill = int(rng.integers(40, 255))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
    shade = (np.asarray(shapes, dtype=np.float32) - 128.0) * 0.35
    img += shade[:, :, None] * rng.uniform(0.5, 1.2, 3).astype(np.float32)[None, None, :]
    # Mid-frequency texture (foliage, fabric): coarse noise upsampled bilinearly.
    th, tw = max(2, h // 3), max(2, w // 3)
    texture = rng.normal(128, 30, (th, tw)).clip(0, 255).astype(np.uint8)
    tex = np.asarray(Image.fromarray(texture).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    img += (tex[:, :, None] - 128.0) * 0.45
    # Sensor noise.
    img += rng.standard_normal((h, w, 3), dtype=np.float32) * 2.5
    out = np.clip(img, 0, 255).astype(np.uint8)
    out.setflags(write=False)
    return out


def synth_photo(w: int, h: int, seed: int = 0) -> np.ndarray:
    """An (h, w, 3) uint8 array that compresses like a photograph."""
    return _photo_cached(w, h, seed).copy()


_WORDS: Final = ("settings", "account", "search", "images", "upload", "share", "album", "holiday", "beach",
                  "camera", "export", "quality", "preview", "thumbnail", "delete", "cancel", "save", "the",
                  "and", "with", "from", "your", "photos", "folder", "sync", "status", "ready", "done")


def synth_screenshot(w: int, h: int, seed: int = 0) -> np.ndarray:
    """An (h, w, 3) uint8 array like a UI screenshot.

    Flat panels and buttons, a gradient title bar, antialiased text (Pillow's FreeType default font) and
    an embedded photo, as in a web page or a photo app: what a lossless codec meets in real screenshots.
    """
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (w, h), (246, 247, 249))
    bar = max(2, h // 14)
    ramp = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    title = (np.array([24, 32, 52], np.float32) * (1 - ramp) + np.array([48, 64, 110], np.float32) * ramp)
    img.paste(Image.fromarray(np.broadcast_to(title, (bar, w, 3)).astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(img)
    side = max(2, w // 5)
    draw.rectangle((0, bar, side, h), fill=(228, 231, 236))
    font_size = max(8, min(28, h // 60))
    font = ImageFont.load_default(size=font_size)
    draw.text((12, bar // 4), "pixdex  -  Library", fill=(240, 240, 245), font=font)
    # An embedded photo in the content area (a gallery item, a hero image).
    pw, ph = max(1, (w - side) // 3), max(1, h // 3)
    px, py = side + (w - side) // 2, bar + 16
    if px + pw <= w and py + ph <= h:
        img.paste(Image.fromarray(synth_photo(pw, ph, seed + 7)), (px, py))
    palette = [(37, 99, 235), (22, 163, 74), (220, 38, 38), (234, 179, 8), (100, 116, 139)]
    for _ in range(max(1, (w * h) // 120000)):
        x0 = int(rng.integers(side, max(side + 1, w - 20)))
        y0 = int(rng.integers(bar, max(bar + 1, h - 10)))
        colour = palette[int(rng.integers(len(palette)))]
        draw.rounded_rectangle((x0, y0, x0 + int(rng.integers(40, 140)), y0 + font_size + 10), radius=6,
                               fill=colour)
    line_h = font_size + 8
    for y in range(bar + 12, h - line_h, line_h):
        # Side menu entries, then body text left of the photo (wrapping under it when it ends).
        if rng.random() < 0.3:
            draw.text((12, y), str(rng.choice(_WORDS)).title(), fill=(40, 44, 52), font=font)
        right = px - 16 if py - line_h <= y <= py + ph else w - 16
        words = " ".join(str(rng.choice(_WORDS)) for _ in range(int(rng.integers(3, 40))))
        x = side + 16
        while words and x < right:
            if draw.textlength(words, font=font) <= right - x:
                break
            words = words.rsplit(" ", 1)[0] if " " in words else ""
        if words:
            draw.text((x, y), words, fill=(30, 30, 30), font=font)
    return np.asarray(img, dtype=np.uint8).copy()


# ------------------------------------------------------------------------------------------------------
# Data set


@dataclass(frozen=True)
class Sample:
    name: str
    group: str
    data: bytes
    width: int
    height: int


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def _package_photos() -> Iterator[tuple[str, Path]]:
    for package, resource in _PACKAGE_PHOTOS:
        found = package_dir(package)
        if found is not None and (found / resource).is_file():
            yield f"{package}/{(found / resource).name}", found / resource


def _tile_to(image: Image.Image, w: int, h: int) -> Image.Image:
    """Mirror-tile a small real photo up to w x h: keeps its native detail (upscaling would smooth it)."""
    tile = image.convert("RGB")
    flipped_h = ImageOps.mirror(tile)
    out = Image.new("RGB", (w, h))
    for row, y in enumerate(range(0, h, tile.height)):
        for col, x in enumerate(range(0, w, tile.width)):
            piece = flipped_h if col % 2 else tile
            out.paste(ImageOps.flip(piece) if row % 2 else piece, (x, y))
    return out


def build_samples(args: argparse.Namespace) -> list[Sample]:
    samples: list[Sample] = []
    w, h = args.photo_size
    for path in args.input or []:
        data = Path(path).read_bytes()
        info = imaging.probe(data, ImageLimits(max_bytes=max(len(data), 1)))
        samples.append(Sample(Path(path).name, f"input {info.format}", data, info.width, info.height))
    for i in range(args.photos):
        image = Image.fromarray(synth_photo(w, h, seed=args.seed + i), "RGB")
        samples.append(Sample(f"photo-{i}", f"{w * h / 1e6:.3g} MP JPEG (synthetic)",
                              _encode(image, "JPEG", quality=90), w, h))
    if args.package_photos:
        for name, path in _package_photos():
            with Image.open(path) as real:
                image = _tile_to(real, w, h)
            samples.append(Sample(name, f"{w * h / 1e6:.3g} MP JPEG (tiled real photos)",
                                  _encode(image, "JPEG", quality=90), w, h))
    for i, (sw, sh) in enumerate(args.screen_sizes):
        image = Image.fromarray(synth_screenshot(sw, sh, seed=args.seed + 100 + i), "RGB")
        lossless = sw * sh <= DerivativeSettings().lossless_max_pixels
        group = f"PNG screenshot {sw}x{sh} ({'lossless' if lossless else 'lossy'} path)"
        samples.append(Sample(f"screen-{sw}x{sh}", group, _encode(image, "PNG"), sw, sh))
    return samples


# ------------------------------------------------------------------------------------------------------
# Measurement


@dataclass
class Timing:
    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)

    def add(self, wall_s: float, cpu_s: float) -> None:
        self.wall_ms.append(wall_s * 1000)
        self.cpu_ms.append(cpu_s * 1000)

    @property
    def wall(self) -> float:
        return statistics.median(self.wall_ms)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpu_ms)


@dataclass
class Result:
    sample: Sample
    decode: Timing
    pixdex: Timing
    quality: Timing
    baseline: Timing
    made: list[dv.Derivative]
    baseline_bytes: dict[str, int]
    draft_scale: int


def _timed(fn: Callable[[], object], timing: Timing, repeat: int) -> None:
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        timing.add(time.perf_counter() - wall, time.process_time() - cpu)


def _baseline(data: bytes, settings: DerivativeSettings) -> dict[str, int]:
    opened = Image.open(io.BytesIO(data))
    opened.load()
    image = ImageOps.exif_transpose(opened).convert("RGBA" if opened.mode in ("RGBA", "LA", "P") else "RGB")
    out = {}
    for name, side in ((dv.THUMBNAIL, settings.thumbnail_size), (dv.PREVIEW, settings.preview_size)):
        size = dv.fit_size(image.width, image.height, side)
        resized = image.resize(size, Image.Resampling.LANCZOS)
        out[name] = len(_encode(resized, "WEBP", quality=80, method=4))
    return out


def measure(sample: Sample, settings: DerivativeSettings, limits: ImageLimits, repeat: int) -> Result:
    def pixdex_path(measure_quality: bool) -> list[dv.Derivative]:
        decoded = imaging.decode(sample.data, limits, target_size=settings.preview_size)
        return dv.make_derivatives(decoded, settings, measure_quality=measure_quality)

    pixdex_path(False)  # warm-up: plugin imports, codec tables
    decode_t, fast_t, quality_t, base_t = Timing(), Timing(), Timing(), Timing()
    _timed(lambda: imaging.decode(sample.data, limits, target_size=settings.preview_size), decode_t, repeat)
    _timed(lambda: pixdex_path(False), fast_t, repeat)
    _timed(lambda: pixdex_path(True), quality_t, repeat)
    _timed(lambda: _baseline(sample.data, settings), base_t, repeat)
    draft = imaging.decode(sample.data, limits, target_size=settings.preview_size).draft_scale
    return Result(sample, decode_t, fast_t, quality_t, base_t, pixdex_path(True),
                  _baseline(sample.data, settings), draft)


def effort_sweep(samples: list[Sample], settings: DerivativeSettings, limits: ImageLimits,
                 repeat: int) -> list[tuple[str, float, int]]:
    """Encoder efforts and resize filters on one photo preview and one screenshot preview.

    Rows are (setting, median CPU ms, bytes); bytes 0 for resize rows.
    """
    rows: list[tuple[str, float, int]] = []

    def row(label: str, fn: Callable[[], object], n: int, nbytes: int) -> None:
        timing = Timing()
        _timed(fn, timing, n)
        rows.append((label, timing.cpu, nbytes))

    photo = next((s for s in samples if s.name.startswith("photo-")), None)
    if photo is not None:
        decoded = imaging.decode(photo.data, limits, target_size=settings.preview_size)
        size = dv.fit_size(decoded.width, decoded.height, settings.preview_size)
        preview = decoded.image.resize(size, Image.Resampling.BILINEAR)
        where = f"photo preview {size[0]}x{size[1]}"
        for method in (0, 1, 2, 4, 6):
            params: dict[str, object] = {"quality": settings.quality, "method": method}
            nbytes = len(_encode(preview, "WEBP", **params))
            row(f"{where}: WebP q{settings.quality} method {method}",
                partial(_encode, preview, "WEBP", **params), repeat, nbytes)
        for optimize in (False, True):
            params = {"quality": settings.quality, "optimize": optimize}
            row(f"{where}: JPEG q{settings.quality} optimize={optimize}",
                partial(_encode, preview, "JPEG", **params), repeat, len(_encode(preview, "JPEG", **params)))
        if features.check("avif"):
            for speed in (6, 8, 10):
                params = {"quality": settings.quality, "speed": speed}
                row(f"{where}: AVIF q{settings.quality} speed {speed}",
                    partial(_encode, preview, "AVIF", **params), 1, len(_encode(preview, "AVIF", **params)))
        source = f"{decoded.image.width}x{decoded.image.height}"
        for resample in ("BILINEAR", "BICUBIC", "LANCZOS"):
            filt = Image.Resampling[resample]
            row(f"resize {source} (draft decode) -> {size[0]}x{size[1]} {resample}",
                partial(decoded.image.resize, size, filt), repeat, 0)
    screen = next((s for s in samples if s.name.startswith("screen-")), None)
    if screen is not None:
        decoded = imaging.decode(screen.data, limits)
        size = dv.fit_size(decoded.width, decoded.height, settings.preview_size)
        preview = decoded.image.resize(size, Image.Resampling.BILINEAR)
        where = f"screenshot preview {size[0]}x{size[1]}"
        for quality, method in ((75, 0), (100, 0), (25, 0), (40, 1), (80, 4)):
            params = {"lossless": True, "quality": quality, "method": method}
            row(f"{where}: WebP lossless quality {quality} method {method}",
                partial(_encode, preview, "WEBP", **params), repeat, len(_encode(preview, "WEBP", **params)))
        for level in (3, 6, 9):
            params = {"compress_level": level}
            row(f"{where}: PNG compress_level {level}",
                partial(_encode, preview, "PNG", **params), repeat, len(_encode(preview, "PNG", **params)))
    return rows


@contextmanager
def pinned(core: int | None) -> Iterator[str]:
    """Run on one CPU core (Linux); yields a description of what was done."""
    if not hasattr(os, "sched_setaffinity"):
        yield "not pinned (no sched_setaffinity on this platform)"
        return
    before = os.sched_getaffinity(0)
    chosen = core if core is not None else max(before)
    os.sched_setaffinity(0, {chosen})
    try:
        yield f"pinned to CPU {chosen} (os.sched_setaffinity)"
    finally:
        os.sched_setaffinity(0, before)


# ------------------------------------------------------------------------------------------------------
# Report


def _fmt_bytes(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.2f} MB"
    return f"{n / 1e3:.1f} kB"


def _group_rows(results: list[Result]) -> dict[str, list[Result]]:
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(r.sample.group, []).append(r)
    return groups


def render(results: list[Result], sweep: list[tuple[str, float, int]], args: argparse.Namespace,
           pin: str, load: str) -> str:
    settings = _settings(args)
    lines = [
        SECTION,
        "",
        f"Measured {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} on {cpu_model()}, {pin}; "
        f"load average before the run {load}. Python {platform.python_version()}, Pillow "
        f"{PIL.__version__} (libjpeg-turbo {features.version('libjpeg_turbo')}, libwebp {features.version('webp')}), "
        f"numpy {np.__version__}, pixdex {pixdex.__version__}. Each path is run {args.repeat} times per "
        "image; the median is kept and averaged over the images of a group. Derivative settings: "
        f"{settings.format}, quality {settings.quality}, thumbnail {settings.thumbnail_size} px, "
        f"preview {settings.preview_size} px.",
        "",
        "Paths: **pixdex** = `imaging.decode` (JPEG draft mode at the preview size) + `make_derivatives` "
        "(bilinear resize, thumbnail from the preview, WebP method 0 for previews, lossless WebP method 0 "
        "quality 75); **+ quality** = the same "
        "plus decoding each derivative back for SSIM/PSNR (what the `compress` function records); "
        "**baseline** = plain Pillow in the same run: full decode without draft, EXIF transpose, Lanczos "
        "resize of the full image to each size, WebP at Pillow's default effort (quality 80, method 4).",
        "",
        "### Time per image (one core)",
        "",
        "| group | n | pixdex ms | + quality ms | baseline ms | pixdex images/s | speed-up vs baseline "
        "| decode ms (draft scale) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups = _group_rows(results)
    for group, rows in groups.items():
        fast = statistics.fmean(r.pixdex.wall for r in rows)
        quality = statistics.fmean(r.quality.wall for r in rows)
        base = statistics.fmean(r.baseline.wall for r in rows)
        decode = statistics.fmean(r.decode.wall for r in rows)
        scales = sorted({r.draft_scale for r in rows})
        lines.append(
            f"| {group} | {len(rows)} | {fast:.0f} | {quality:.0f} | {base:.0f} | {1000 / fast:.1f} | "
            f"{base / fast:.2f}x | {decode:.0f} (1/{'/'.join(str(s) for s in scales)}) |"
        )
    lines += [
        "",
        "Wall-clock milliseconds; CPU time (`time.process_time`) per path, for comparison on a busy machine:",
        "",
        "| group | pixdex CPU ms | + quality CPU ms | baseline CPU ms |",
        "|---|---:|---:|---:|",
    ]
    for group, rows in groups.items():
        lines.append(
            f"| {group} | {statistics.fmean(r.pixdex.cpu for r in rows):.0f} | "
            f"{statistics.fmean(r.quality.cpu for r in rows):.0f} | "
            f"{statistics.fmean(r.baseline.cpu for r in rows):.0f} |"
        )
    lines += [
        "",
        "### Bytes and quality",
        "",
        "| group | source | preview | thumbnail | saved (source - preview) | preview / source "
        "| preview vs baseline bytes | lossless | SSIM preview | SSIM thumbnail | PSNR preview dB |",
        "|---|---:|---:|---:|---:|---:|---:|:---:|---:|---:|---:|",
    ]
    for group, rows in groups.items():
        src = statistics.fmean(len(r.sample.data) for r in rows)
        prev = [next(d for d in r.made if d.name == dv.PREVIEW) for r in rows]
        thumb = [next(d for d in r.made if d.name == dv.THUMBNAIL) for r in rows]
        prev_bytes = statistics.fmean(d.bytes for d in prev)
        thumb_bytes = statistics.fmean(d.bytes for d in thumb)
        base_prev = statistics.fmean(r.baseline_bytes[dv.PREVIEW] for r in rows)
        lines.append(
            f"| {group} | {_fmt_bytes(src)} | {_fmt_bytes(prev_bytes)} | {_fmt_bytes(thumb_bytes)} | "
            f"{_fmt_bytes(src - prev_bytes)} | {prev_bytes / src:.3f} | {prev_bytes / base_prev:.2f} | "
            f"{'yes' if all(d.lossless for d in prev) else 'no'} | "
            f"{statistics.fmean(d.quality or 0.0 for d in prev):.4f} | "
            f"{statistics.fmean(d.quality or 0.0 for d in thumb):.4f} | "
            f"{statistics.fmean(d.psnr or 0.0 for d in prev):.1f} |"
        )
    photo_rows = [r for r in results if "JPEG" in r.sample.group and r.sample.width * r.sample.height >= 11e6]
    if photo_rows:
        fast_cpu = statistics.fmean(r.pixdex.cpu for r in photo_rows)
        fast_wall = statistics.fmean(r.pixdex.wall for r in photo_rows)
        quality_cpu = statistics.fmean(r.quality.cpu for r in photo_rows)
        verdict = "met" if fast_cpu < TARGET_MS else "NOT met"
        lines += [
            "",
            f"**Target** (12 MP JPEG, decode + both derivatives, one core, < {TARGET_MS:.0f} ms): {verdict}: "
            f"{fast_cpu:.0f} ms of CPU time per image ({1000 / fast_cpu:.1f} images/s per core), "
            f"{fast_wall:.0f} ms wall-clock; with the quality measurement {quality_cpu:.0f} ms CPU. Judged on "
            "CPU time because the process runs pinned to one core that it may share: CPU time is the work "
            "done on that core, wall time adds waiting for it.",
        ]
    if sweep:
        lines += [
            "",
            "### Encoder effort and resize filter (why the defaults are what they are)",
            "",
            "| setting | CPU ms | bytes |",
            "|---|---:|---:|",
        ]
        lines += [f"| {name} | {ms:.1f} | {(_fmt_bytes(n) if n else '-')} |" for name, ms, n in sweep]
    lines += [
        "",
        "### Reproduce",
        "",
        "```",
        "pixdex bench compress            # this table; add --input FILE... to include your own photos",
        f"pixdex bench compress --photos {args.photos} --repeat {args.repeat} --seed {args.seed}",
        "```",
        "",
        "Photos are synthesised (gradients, soft shapes, texture, sensor noise; JPEG quality 90) because no "
        "12 MP photo ships with the dependencies; sample photos from installed packages (scikit-learn, "
        "matplotlib, scikit-image) are mirror-tiled to 12 MP and added when present. Timings depend on the "
        "machine and on its load; compare the ratios, which are measured in the same run.",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------
# CLI


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return w, h


def _settings(args: argparse.Namespace) -> DerivativeSettings:
    return DerivativeSettings(format=args.format, quality=args.quality)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--photos", type=int, default=4, help="synthetic 12 MP JPEGs to generate (default 4)")
    parser.add_argument("--photo-size", type=_size, default=(4000, 3000), help="photo size (default 4000x3000)")
    parser.add_argument("--screen-sizes", type=_size, nargs="*", default=[(1920, 1080), (3840, 2160)],
                        help="screenshot PNG sizes (default 1920x1080 3840x2160)")
    parser.add_argument("--no-package-photos", dest="package_photos", action="store_false",
                        help="do not add sample photos found in installed packages")
    parser.add_argument("--input", nargs="*", type=Path, help="image files to add to the data set")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per image and path (default 3)")
    parser.add_argument("--core", type=int, default=None, help="CPU to pin to (default: the highest allowed)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--format", choices=["webp", "jpeg", "png", "avif"], default="webp")
    parser.add_argument("--quality", type=int, default=DerivativeSettings().quality)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="report to update (default docs/benchmarks.md, relative to the current folder)")
    parser.add_argument("--no-write", dest="write", action="store_false", help="print the section only")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false",
                        help="skip the encoder-effort and resize-filter sweep")


def run(args: argparse.Namespace) -> int:
    if args.repeat < 1 or args.photos < 0:
        print("--repeat must be >= 1 and --photos >= 0", file=sys.stderr)
        return 2
    settings = _settings(args)
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print("generating the data set ...", file=sys.stderr)
    samples = build_samples(args)
    if not samples:
        print("nothing to measure", file=sys.stderr)
        return 2
    limits = ImageLimits(max_bytes=max(len(s.data) for s in samples) + 1)
    results = []
    with pinned(args.core) as pin:
        for sample in samples:
            result = measure(sample, settings, limits, args.repeat)
            results.append(result)
            print(f"{sample.name:>24}: pixdex {result.pixdex.wall:6.1f} ms, + quality {result.quality.wall:6.1f} ms,"
                  f" baseline {result.baseline.wall:6.1f} ms", file=sys.stderr)
        sweep = effort_sweep(samples, settings, limits, args.repeat) if args.sweep else []
    section = render(results, sweep, args, pin, load)
    publish(section, args.output, SECTION, write=args.write)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pixdex bench compress", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
