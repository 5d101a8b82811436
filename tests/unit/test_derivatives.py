"""Derivatives: sizes, format choice, lossless vs lossy, alpha, metadata stripping, ICC, quality figures."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixdex import derivatives as dv
from pixdex import imaging
from pixdex.settings import DerivativeSettings, ImageLimits
from tests import imagegen

LIMITS = ImageLimits()
DEFAULT = DerivativeSettings()


def _make(data: bytes, settings: DerivativeSettings = DEFAULT) -> dict[str, dv.Derivative]:
    decoded = imaging.decode(data, LIMITS, target_size=settings.preview_size)
    return {d.name: d for d in dv.make_derivatives(decoded, settings)}


def _open(d: dv.Derivative) -> Image.Image:
    image = Image.open(io.BytesIO(d.data))
    image.load()
    return image


def test_photo_gets_lossy_webp_thumbnail_and_preview() -> None:
    source = imagegen.jpeg_bytes(1600, 1200, seed=3)
    made = _make(source)
    assert list(made) == [dv.THUMBNAIL, dv.PREVIEW]
    for name, size in ((dv.THUMBNAIL, (256, 192)), (dv.PREVIEW, (1280, 960))):
        d = made[name]
        image = _open(d)
        assert image.format == "WEBP"
        assert (d.width, d.height) == size == image.size
        assert d.format == "webp"
        assert d.content_type == "image/webp"
        assert d.extension == "webp"
        assert d.bytes == len(d.data)
        assert d.lossless is False
        assert not imaging.probe(d.data, LIMITS).lossless
        assert d.quality is not None and 0.85 < d.quality < 1.0
        assert d.psnr is not None and 28 < d.psnr < dv.PSNR_CAP
    assert made[dv.PREVIEW].bytes < len(source)
    assert made[dv.THUMBNAIL].bytes < made[dv.PREVIEW].bytes


def test_portrait_orientation_is_respected() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    made = _make(imagegen.jpeg_bytes(1600, 1200, exif=exif))
    assert (made[dv.PREVIEW].width, made[dv.PREVIEW].height) == (960, 1280)
    assert (made[dv.THUMBNAIL].width, made[dv.THUMBNAIL].height) == (192, 256)


@pytest.mark.parametrize(("size", "thumb", "preview"), [
    ((200, 100), (200, 100), (200, 100)),
    ((300, 150), (256, 128), (300, 150)),
    ((1, 1), (1, 1), (1, 1)),
    ((3000, 10), (256, 1), (1280, 4)),
])
def test_never_upscaled(size: tuple[int, int], thumb: tuple[int, int], preview: tuple[int, int]) -> None:
    made = _make(imagegen.jpeg_bytes(*size))
    assert (made[dv.THUMBNAIL].width, made[dv.THUMBNAIL].height) == thumb
    assert (made[dv.PREVIEW].width, made[dv.PREVIEW].height) == preview
    assert _open(made[dv.PREVIEW]).size == preview


def test_sizes_follow_settings() -> None:
    settings = DerivativeSettings(thumbnail_size=100, preview_size=400)
    made = _make(imagegen.jpeg_bytes(800, 600), settings)
    assert (made[dv.THUMBNAIL].width, made[dv.THUMBNAIL].height) == (100, 75)
    assert (made[dv.PREVIEW].width, made[dv.PREVIEW].height) == (400, 300)


def test_small_screenshot_png_stays_lossless() -> None:
    source = imagegen.png_bytes(1200, 800, screenshot=True)
    made = _make(source)
    for d in made.values():
        assert d.format == "webp"
        assert d.lossless is True
        assert imaging.probe(d.data, LIMITS).lossless  # a VP8L (lossless) bitstream
    # At full size, lossless means every pixel survives exactly.
    preview = made[dv.PREVIEW]
    assert (preview.width, preview.height) == (1200, 800)
    assert preview.quality == 1.0
    assert preview.psnr == dv.PSNR_CAP
    original = np.asarray(Image.open(io.BytesIO(source)).convert("RGB"))
    assert np.array_equal(np.asarray(_open(preview).convert("RGB")), original)
    # Flat UI content: lossless WebP is far smaller than the PNG.
    assert preview.bytes < len(source)


def test_lossless_source_over_the_pixel_threshold_goes_lossy() -> None:
    settings = DerivativeSettings(lossless_max_pixels=640 * 480 - 1)
    made = _make(imagegen.png_bytes(640, 480, seed=1), settings)
    assert all(not d.lossless for d in made.values())
    at_limit = _make(imagegen.png_bytes(640, 480, seed=1), DerivativeSettings(lossless_max_pixels=640 * 480))
    assert all(d.lossless for d in at_limit.values())


@pytest.mark.parametrize(
    ("fmt", "lossy_format", "lossless_format", "pil_format"),
    [("webp", "webp", "webp", "WEBP"), ("jpeg", "jpeg", "png", "JPEG"), ("png", "png", "png", "PNG"),
     ("avif", "avif", "webp", "AVIF")],
)
def test_configured_formats(fmt: str, lossy_format: str, lossless_format: str, pil_format: str) -> None:
    settings = DerivativeSettings(format=fmt)  # type: ignore[arg-type]
    photo = _make(imagegen.jpeg_bytes(640, 480), settings)
    for d in photo.values():
        assert d.format == lossy_format
        assert _open(d).format == pil_format
        assert d.content_type == dv.CONTENT_TYPES[lossy_format]
        assert d.lossless is (lossy_format == "png")
    screenshot = _make(imagegen.png_bytes(400, 300, screenshot=True), settings)
    for d in screenshot.values():
        assert d.format == lossless_format
        assert d.lossless is True


def test_alpha_is_kept_where_the_format_allows() -> None:
    made = _make(imagegen.png_bytes(320, 240, mode="RGBA"))
    preview = _open(made[dv.PREVIEW])
    assert preview.mode == "RGBA"
    alpha = np.asarray(preview.getchannel("A"))
    assert alpha[:, 0].max() < 10 and alpha[:, -1].min() > 245  # the ramp survived


def test_jpeg_flattens_alpha_onto_white() -> None:
    settings = DerivativeSettings(format="jpeg")
    made = _make(imagegen.webp_bytes(320, 240, alpha=True), settings)  # lossy source: JPEG output
    preview = _open(made[dv.PREVIEW])
    assert preview.mode == "RGB"
    left = np.asarray(preview)[:, :4].astype(int)
    assert left.min() > 235  # fully transparent on the left: white, not black or garbage


def test_jpeg_fallback_when_webp_cannot_carry_the_size() -> None:
    # WebP stops at 16383 px a side; a 17000 px wide panorama preview must still be made.
    settings = DerivativeSettings(preview_size=17000)
    image = Image.fromarray(imagegen.photo_array(17000, 12, seed=2))
    made = _make(imagegen.encode(image, "PNG"), settings)
    preview = made[dv.PREVIEW]
    assert preview.format == "jpeg"
    assert preview.lossless is False
    assert _open(preview).size == (17000, 12)
    assert made[dv.THUMBNAIL].format == "webp"  # the small one still fits


def test_gps_and_all_metadata_are_stripped() -> None:
    exif = imagegen.exif_with_gps(48.8584, 2.2945, make="Canon", model="Canon EOS 5D")
    source = imagegen.encode(
        imagegen.photo_image(800, 600), "JPEG", quality=90, exif=exif.tobytes(),
        comment=b"secret comment", xmp=b"<x:xmpmeta>secret xmp</x:xmpmeta>",
    )
    source_exif = imaging.decode(source, LIMITS).exif
    assert source_exif is not None and source_exif.get_ifd(0x8825)  # the source does carry GPS
    for fmt in ("webp", "jpeg", "png", "avif"):
        made = _make(source, DerivativeSettings(format=fmt))  # type: ignore[arg-type]
        for d in made.values():
            image = _open(d)
            assert len(image.getexif()) == 0, (fmt, d.name)
            assert not image.getexif().get_ifd(0x8825)
            for marker in (b"Exif", b"secret", b"xmpmeta", b"Canon"):
                assert marker not in d.data, (fmt, d.name, marker)


def test_gps_stripped_from_png_and_webp_sources_too() -> None:
    exif = imagegen.exif_with_gps()
    for source in (imagegen.png_bytes(300, 200, exif=exif), imagegen.webp_bytes(300, 200, exif=exif)):
        assert imaging.decode(source, LIMITS).exif is not None
        for d in _make(source).values():
            assert b"Exif" not in d.data
            assert len(_open(d).getexif()) == 0


@pytest.mark.parametrize("fmt", ["webp", "jpeg", "png", "avif"])
def test_icc_profile_is_kept(fmt: str) -> None:
    icc = imagegen.srgb_icc()
    made = _make(imagegen.jpeg_bytes(400, 300, icc_profile=icc), DerivativeSettings(format=fmt))  # type: ignore[arg-type]
    for d in made.values():
        assert _open(d).info.get("icc_profile") == icc, (fmt, d.name)


def test_no_icc_profile_when_source_has_none() -> None:
    for d in _make(imagegen.jpeg_bytes(400, 300)).values():
        assert not _open(d).info.get("icc_profile")


def test_animated_source_gives_single_frame_derivatives() -> None:
    made = _make(imagegen.gif_bytes(300, 200, frames=3))
    for d in made.values():
        assert getattr(_open(d), "n_frames", 1) == 1


def test_quality_figures_track_encoder_quality() -> None:
    data = imagegen.jpeg_bytes(800, 600, seed=5)
    low = _make(data, DerivativeSettings(quality=20))[dv.PREVIEW]
    high = _make(data, DerivativeSettings(quality=95))[dv.PREVIEW]
    assert low.quality is not None and high.quality is not None
    assert low.psnr is not None and high.psnr is not None
    assert low.quality < high.quality
    assert low.psnr < high.psnr
    assert low.bytes < high.bytes


def test_quality_can_be_skipped() -> None:
    decoded = imaging.decode(imagegen.jpeg_bytes(300, 200), LIMITS)
    for d in dv.make_derivatives(decoded, DEFAULT, measure_quality=False):
        assert d.quality is None and d.psnr is None


def test_ssim_and_psnr_reference_values() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (96, 128)).astype(np.float32)
    assert dv.ssim(a, a) == 1.0
    assert dv.psnr(a, a) == dv.PSNR_CAP
    noisy = np.clip(a + rng.normal(0, 10, a.shape), 0, 255).astype(np.float32)
    very_noisy = np.clip(a + rng.normal(0, 40, a.shape), 0, 255).astype(np.float32)
    assert 0 < dv.ssim(a, very_noisy) < dv.ssim(a, noisy) < 1
    assert dv.ssim(a, noisy) == dv.ssim(noisy, a)
    # MSE of 100 -> 10*log10(255^2/100) = 28.13 dB.
    assert dv.psnr(np.zeros((8, 8)), np.full((8, 8), 10.0)) == pytest.approx(28.131, abs=1e-3)
    # Mean shift on a flat image: luminance term only, (2*100*110+C1)/(100^2+110^2+C1).
    flat = dv.ssim(np.full((16, 16), 100.0), np.full((16, 16), 110.0))
    c1 = (0.01 * 255) ** 2
    assert flat == pytest.approx((2 * 100 * 110 + c1) / (100**2 + 110**2 + c1), abs=1e-6)
    # Tiny images use one window.
    assert dv.ssim(a[:5, :5], a[:5, :5]) == 1.0
    with pytest.raises(ValueError, match="equal"):
        dv.ssim(a, a[:10])


def test_summary_of_bytes() -> None:
    made = list(_make(imagegen.jpeg_bytes(1600, 1200, seed=9)).values())
    source = 1_000_000
    summary = dv.summarise(source, made)
    preview = next(d for d in made if d.name == dv.PREVIEW)
    assert summary.source_bytes == source
    assert summary.derivative_bytes == sum(d.bytes for d in made)
    assert summary.saved_bytes == source - preview.bytes
    assert summary.ratio == pytest.approx(preview.bytes / source, abs=1e-6)
    assert set(summary.per_derivative) == {dv.THUMBNAIL, dv.PREVIEW}
    assert summary.to_dict()["saved_bytes"] == summary.saved_bytes
    with pytest.raises(ValueError, match="positive"):
        dv.summarise(0, made)


def test_to_dict_has_no_pixel_data() -> None:
    d = _make(imagegen.jpeg_bytes(300, 200))[dv.PREVIEW]
    record = d.to_dict()
    assert "data" not in record
    assert record["bytes"] == d.bytes
    assert set(record) == {"name", "format", "content_type", "width", "height", "bytes", "lossless",
                           "quality", "psnr"}


def test_fit_size() -> None:
    assert dv.fit_size(4000, 3000, 1280) == (1280, 960)
    assert dv.fit_size(3000, 4000, 256) == (192, 256)
    assert dv.fit_size(100, 50, 256) == (100, 50)
    assert dv.fit_size(5000, 1, 256) == (256, 1)
    with pytest.raises(ValueError, match="bad size"):
        dv.fit_size(0, 10, 256)


# --- the compress benchmark's report (pixdex bench compress) --------------------------------------------


def test_benchmark_runs_and_replaces_only_its_section(tmp_path: Path) -> None:
    from pixdex.bench import compress as bench

    report = tmp_path / "benchmarks.md"
    report.write_text("# Benchmarks\n\n## index\n\nkeep me\n\n## compress\n\nold numbers\n\n## search\n\nkeep too\n")
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args([
        "--photos", "1", "--photo-size", "640x480", "--screen-sizes", "320x200", "--repeat", "1",
        "--no-package-photos", "--output", str(report),
    ])
    assert bench.run(args) == 0
    text = report.read_text()
    assert "old numbers" not in text
    assert text.count("## compress") == 1
    assert "keep me" in text and "keep too" in text
    assert text.index("## index") < text.index("## compress") < text.index("## search")
    assert "| 0.307 MP JPEG (synthetic) | 1 |" in text
    assert "PNG screenshot 320x200 (lossless path)" in text
    # Running again replaces the section instead of adding a second one.
    assert bench.run(args) == 0
    assert report.read_text().count("## compress") == 1
