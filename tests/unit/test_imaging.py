"""Safe decode: formats, modes, orientation, draft mode, limits and every typed error."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile

from pixdex import imaging
from pixdex.errors import BadImageError, ImageTooLargeError, UnsupportedFormatError
from pixdex.settings import ImageLimits
from tests import imagegen

LIMITS = ImageLimits()

# (label, bytes factory, reported format, lossless source?, alpha expected?)
FORMATS: list[tuple[str, Callable[[], bytes], str, bool, bool]] = [
    ("jpeg", lambda: imagegen.jpeg_bytes(64, 48), "jpeg", False, False),
    ("jpeg-progressive", lambda: imagegen.jpeg_bytes(64, 48, progressive=True), "jpeg", False, False),
    ("png", lambda: imagegen.png_bytes(64, 48), "png", True, False),
    ("webp-lossy", lambda: imagegen.webp_bytes(64, 48), "webp", False, False),
    ("webp-lossless", lambda: imagegen.webp_bytes(64, 48, lossless=True), "webp", True, False),
    ("webp-alpha", lambda: imagegen.webp_bytes(64, 48, alpha=True), "webp", False, True),
    ("gif", lambda: imagegen.gif_bytes(64, 48), "gif", True, False),
    ("bmp", lambda: imagegen.bmp_bytes(64, 48), "bmp", True, False),
    ("tiff", lambda: imagegen.tiff_bytes(64, 48), "tiff", True, False),
    ("tiff-lzw", lambda: imagegen.tiff_bytes(64, 48, compression="tiff_lzw"), "tiff", True, False),
    ("tiff-jpeg", lambda: imagegen.tiff_bytes(64, 48, compression="jpeg"), "tiff", False, False),
    ("avif", lambda: imagegen.avif_bytes(64, 48), "avif", False, False),
    ("avif-alpha", lambda: imagegen.avif_bytes(64, 48, alpha=True), "avif", False, True),
    ("heic", lambda: imagegen.heic_bytes(64, 48), "heic", False, False),
    ("heic-alpha", lambda: imagegen.heic_bytes(64, 48, alpha=True), "heic", False, True),
]


@pytest.mark.parametrize(("label", "make", "fmt", "lossless", "alpha"), FORMATS, ids=[f[0] for f in FORMATS])
def test_every_accepted_format_decodes(
    label: str, make: Callable[[], bytes], fmt: str, lossless: bool, alpha: bool,
) -> None:
    data = make()
    decoded = imaging.decode(data, LIMITS)
    assert decoded.format == fmt
    assert (decoded.width, decoded.height) == (64, 48)
    assert decoded.image.size == (64, 48)
    assert decoded.image.mode == ("RGBA" if alpha else "RGB")
    assert decoded.has_alpha is alpha
    assert decoded.lossless is lossless
    assert decoded.frames == 1
    # The pixels are the photo, not a blank canvas: lossy codecs stay close to the source.
    source = np.asarray(imagegen.photo_image(64, 48), dtype=np.float32)
    got = np.asarray(decoded.image.convert("RGB"), dtype=np.float32)
    if alpha:
        opaque = np.asarray(imagegen.alpha_ramp(64, 48)) == 255
        assert np.abs(got - source)[opaque].mean() < 12
    elif fmt != "gif":  # GIF quantises to 64 colours; the mean error is larger but bounded
        assert np.abs(got - source).mean() < 12
    info = imaging.probe(data, LIMITS)
    assert (info.format, info.width, info.height, info.lossless, info.frames) == (fmt, 64, 48, lossless, 1)


def test_avif_is_built_into_pillow() -> None:
    from PIL import features

    assert features.check("avif"), "Pillow was built without libavif; AVIF would be rejected"
    assert "AVIF" in imaging.allowed_pillow_formats()
    assert "HEIF" in imaging.allowed_pillow_formats()


def test_heif_opener_registration_is_idempotent() -> None:
    first = imaging.allowed_pillow_formats()
    second = imaging.allowed_pillow_formats()
    assert first == second
    assert Image.registered_extensions()[".heic"] == "HEIF"


# --- modes --------------------------------------------------------------------------------------------


def _luma(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.float32)


@pytest.mark.parametrize(
    ("label", "data", "source_mode", "alpha"),
    [
        ("png-L", lambda: imagegen.png_bytes(mode="L"), "L", False),
        ("jpeg-L", lambda: imagegen.jpeg_bytes(mode="L"), "L", False),
        ("png-LA", lambda: imagegen.png_bytes(mode="LA"), "LA", True),
        ("png-1", lambda: imagegen.png_bytes(mode="1"), "1", False),
        ("bmp-1", lambda: imagegen.bmp_bytes(mode="1"), "1", False),
        ("png-P", lambda: imagegen.png_bytes(mode="P"), "P", False),
        ("png-P-transparency", lambda: imagegen.png_bytes(mode="P+transparency"), "P", True),
        ("gif-transparency", lambda: imagegen.gif_bytes(transparency=True), "P", True),
        ("png-RGBA", lambda: imagegen.png_bytes(mode="RGBA"), "RGBA", True),
        ("png-I;16", lambda: imagegen.png_bytes(mode="I;16"), "I;16", False),
        ("tiff-I;16", lambda: imagegen.tiff_bytes(mode="I;16"), "I;16", False),
        ("tiff-I", lambda: imagegen.tiff_bytes(mode="I"), "I", False),
        ("tiff-F", lambda: imagegen.tiff_bytes(mode="F"), "F", False),
        ("tiff-CMYK", lambda: imagegen.tiff_bytes(mode="CMYK"), "CMYK", False),
        ("jpeg-CMYK", lambda: imagegen.jpeg_bytes(mode="CMYK", quality=95), "CMYK", False),
        ("tiff-premultiplied", lambda: imagegen.tiff_premultiplied_bytes(), "RGBA", True),
        ("tiff-LAB", lambda: imagegen.tiff_bytes(mode="LAB"), "LAB", False),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_modes_normalise_to_rgb_or_rgba(
    label: str, data: Callable[[], bytes], source_mode: str, alpha: bool,
) -> None:
    decoded = imaging.decode(data(), LIMITS)
    assert decoded.mode == source_mode
    assert decoded.image.mode == ("RGBA" if alpha else "RGB")
    assert decoded.has_alpha is alpha
    # Brightness is kept (in particular 16-bit, 32-bit and float data are scaled, not clipped to white).
    expected = _luma(imagegen.photo_image(64, 48))
    if source_mode == "1":
        expected = np.where(expected > 127, 255.0, 0.0).astype(np.float32)
    got = _luma(decoded.image.convert("RGB"))
    tolerance = 12 if source_mode == "P" else 10
    if alpha:
        opaque = np.asarray(decoded.image.getchannel("A")) == 255
        assert opaque.any()
        assert np.abs(got - expected)[opaque].mean() < tolerance
    else:
        assert np.abs(got - expected).mean() < tolerance


def test_one_bit_stays_black_and_white() -> None:
    decoded = imaging.decode(imagegen.png_bytes(mode="1"), LIMITS)
    assert set(np.unique(np.asarray(decoded.image))) <= {0, 255}


def test_palette_transparency_becomes_alpha() -> None:
    decoded = imaging.decode(imagegen.png_bytes(64, 48, mode="P+transparency"), LIMITS)
    alpha = np.asarray(decoded.image.getchannel("A"))
    assert (alpha[:, : 64 // 3] == 0).all()
    assert (alpha[:, 64 // 3 + 1:] == 255).any()


def test_opaque_alpha_is_dropped() -> None:
    img = imagegen.photo_image(32, 32).convert("RGBA")
    decoded = imaging.decode(imagegen.encode(img, "PNG"), LIMITS)
    assert decoded.image.mode == "RGB"
    assert decoded.has_alpha is False


@pytest.mark.parametrize("mode", ["RGBa", "La", "RGBX", "YCbCr", "HSV", "PA"])
def test_modes_no_format_produces_still_normalise(mode: str) -> None:
    # These modes reach pixdex only from Pillow conversions, never straight from a file we accept.
    source = imagegen.mode_image("RGBA", 32, 24)
    if mode == "La":
        image = source.convert("LA").convert("La")
    elif mode == "PA":
        image = source.convert("PA")
    elif mode == "RGBa":
        image = source.convert("RGBa")
    else:
        image = imagegen.photo_image(32, 24).convert(mode)
    out, icc = imaging.normalise_mode(image, None)
    assert out.mode in ("RGB", "RGBA")
    assert icc is None
    if mode in ("RGBa", "La", "PA"):
        assert out.mode == "RGBA"
        assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(source.getchannel("A")))


@pytest.mark.parametrize(
    ("mode", "values"),
    [("I", np.array([[-5000, 0], [100000, 250000]], dtype=np.int32)),
     ("F", np.array([[-3.5, 0.0], [10.0, 42.0]], dtype=np.float32))],
)
def test_out_of_range_data_is_stretched(mode: str, values: np.ndarray) -> None:
    image = Image.fromarray(values)
    assert image.mode == mode
    out, _ = imaging.normalise_mode(image, None)
    gray = np.asarray(out.convert("L"))
    assert gray.min() == 0
    assert gray.max() == 255
    assert gray[0, 0] < gray[0, 1] < gray[1, 0] < gray[1, 1]


def test_cmyk_uses_embedded_icc_profile() -> None:
    icc = imagegen.cmyk_icc()
    grey_ink = Image.new("CMYK", (16, 16), (0, 0, 0, 128))
    decoded = imaging.decode(imagegen.jpeg_bytes(image=grey_ink, icc_profile=icc, quality=100), LIMITS)
    managed = ImageCms.profileToProfile(
        grey_ink, ImageCms.ImageCmsProfile(io.BytesIO(icc)), ImageCms.createProfile("sRGB"), outputMode="RGB",
    )
    assert managed is not None
    naive = grey_ink.convert("RGB").getpixel((8, 8))
    got = decoded.image.getpixel((8, 8))
    want = managed.getpixel((8, 8))
    assert isinstance(got, tuple) and isinstance(want, tuple) and isinstance(naive, tuple)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 3
    assert max(abs(a - b) for a, b in zip(got, naive, strict=True)) > 10  # the profile changed the colour
    # The pixels are sRGB now; the CMYK profile no longer describes them.
    assert decoded.icc_profile is None


def test_rgb_icc_profile_is_kept() -> None:
    icc = imagegen.srgb_icc()
    decoded = imaging.decode(imagegen.jpeg_bytes(icc_profile=icc), LIMITS)
    assert decoded.icc_profile == icc


def test_animation_keeps_first_frame_and_counts_frames() -> None:
    gif = imagegen.gif_bytes(64, 48, frames=4)
    decoded = imaging.decode(gif, LIMITS)
    assert decoded.frames == 4
    first = Image.open(io.BytesIO(gif)).convert("RGB")
    assert np.array_equal(np.asarray(decoded.image), np.asarray(first))
    webp = imaging.decode(imagegen.webp_bytes(64, 48, frames=3), LIMITS)
    assert webp.frames == 3
    assert imaging.probe(gif, LIMITS).frames == 4


# --- orientation ----------------------------------------------------------------------------------------

# Where the red block (top-left of the stored pixels) must appear after each EXIF orientation.
_RED_CORNER = {1: "tl", 2: "tr", 3: "br", 4: "bl", 5: "tl", 6: "tr", 7: "br", 8: "bl"}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation: int) -> None:
    data = imagegen.oriented_jpeg(orientation, 80, 40)
    decoded = imaging.decode(data, LIMITS)
    expected_size = (40, 80) if orientation >= 5 else (80, 40)
    assert decoded.image.size == expected_size
    assert (decoded.width, decoded.height) == expected_size
    w, h = decoded.image.size
    corners = {"tl": (2, 2), "tr": (w - 3, 2), "bl": (2, h - 3), "br": (w - 3, h - 3)}
    for name, xy in corners.items():
        pixel = decoded.image.getpixel(xy)
        assert isinstance(pixel, tuple)
        is_red = pixel[0] > 200 and pixel[1] < 60
        assert is_red is (name == _RED_CORNER[orientation]), (name, pixel)
    info = imaging.probe(data, LIMITS)
    assert (info.width, info.height) == expected_size
    assert info.orientation == orientation


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF", "HEIF"])
def test_orientation_in_other_formats(fmt: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = imagegen.encode(imagegen.marked_image(80, 40), fmt, exif=exif.tobytes(),
                           **({"lossless": True} if fmt == "WEBP" else {}))
    # (HEIF: pillow-heif turns the EXIF orientation into the container's rotation, libheif applies it
    # and the EXIF value reads back as 1; the result must be the same.)
    decoded = imaging.decode(data, LIMITS)
    assert decoded.image.size == (40, 80)
    assert (decoded.width, decoded.height) == (40, 80)
    pixel = decoded.image.getpixel((37, 2))
    assert isinstance(pixel, tuple) and pixel[0] > 200 and pixel[1] < 60  # top-right after ROTATE_270


def test_invalid_orientation_value_is_ignored() -> None:
    exif = Image.Exif()
    exif[0x0112] = 42
    decoded = imaging.decode(imagegen.jpeg_bytes(80, 40, exif=exif), LIMITS)
    assert decoded.image.size == (80, 40)


# --- draft mode ---------------------------------------------------------------------------------------


def test_jpeg_draft_mode_shrinks_on_load() -> None:
    data = imagegen.jpeg_bytes(2400, 1800)
    decoded = imaging.decode(data, LIMITS, target_size=256)
    assert decoded.draft_scale == 8
    assert decoded.image.size == (300, 225)
    assert (decoded.width, decoded.height) == (2400, 1800)  # the full size is still reported
    assert max(decoded.image.size) >= 256


@pytest.mark.parametrize(
    ("size", "target", "scale"),
    [((2400, 1800), 1280, 1), ((2400, 1800), 1200, 2), ((2400, 1800), 600, 4), ((1000, 4000), 1000, 4),
     ((640, 480), 256, 2), ((300, 200), 256, 1)],
)
def test_draft_never_goes_below_target(size: tuple[int, int], target: int, scale: int) -> None:
    decoded = imaging.decode(imagegen.jpeg_bytes(*size, quality=75), LIMITS, target_size=target)
    assert decoded.draft_scale == scale
    assert max(decoded.image.size) >= min(target, max(size))


def test_draft_with_rotation_reports_oriented_full_size() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = imaging.decode(imagegen.jpeg_bytes(1600, 1200, exif=exif), LIMITS, target_size=256)
    assert decoded.draft_scale == 4
    assert decoded.image.size == (300, 400)
    assert (decoded.width, decoded.height) == (1200, 1600)


def test_no_draft_for_non_jpeg() -> None:
    decoded = imaging.decode(imagegen.png_bytes(1200, 900), LIMITS, target_size=128)
    assert decoded.draft_scale == 1
    assert decoded.image.size == (1200, 900)


# --- limits and errors ------------------------------------------------------------------------------------


def test_zero_bytes_is_bad_image() -> None:
    with pytest.raises(BadImageError) as err:
        imaging.decode(b"", LIMITS)
    assert type(err.value) is BadImageError
    assert "empty" in err.value.message


def test_byte_limit_is_checked_first() -> None:
    data = imagegen.jpeg_bytes(64, 48)
    with pytest.raises(ImageTooLargeError) as err:
        imaging.decode(data, ImageLimits(max_bytes=len(data) - 1))
    assert err.value.context["bytes"] == len(data)
    assert imaging.decode(data, ImageLimits(max_bytes=len(data))).width == 64
    # Even garbage over the byte limit is refused for its size before anyone parses it.
    with pytest.raises(ImageTooLargeError):
        imaging.probe(b"x" * 100, ImageLimits(max_bytes=10))


def test_pixel_limit_from_header() -> None:
    data = imagegen.png_bytes(100, 50)
    assert imaging.probe(data, ImageLimits(max_pixels=5000)).width == 100
    with pytest.raises(ImageTooLargeError) as err:
        imaging.decode(data, ImageLimits(max_pixels=4999))
    assert err.value.context == {"width": 100, "height": 50, "max_pixels": 4999}
    with pytest.raises(ImageTooLargeError):
        imaging.probe(data, ImageLimits(max_pixels=4999))


@pytest.mark.parametrize(
    ("label", "make"),
    [
        ("png 50000x50000", lambda: imagegen.png_bomb()),
        ("png 12000x9000 (under Pillow's cap, over ours)", lambda: imagegen.png_bomb(12000, 9000)),
        ("gif frame 40000x40000", lambda: imagegen.gif_bomb()),
    ],
)
# Pillow warns (it does not fail) between its soft and hard caps; pixdex's own limit fails it.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bombs_are_rejected_before_decoding(label: str, make: Callable[[], bytes]) -> None:
    data = make()
    assert len(data) < 100_000  # tiny files declaring huge images
    with pytest.raises(ImageTooLargeError):
        imaging.probe(data, LIMITS)
    with pytest.raises(ImageTooLargeError):
        imaging.decode(data, LIMITS)


def test_pillow_global_state_is_never_changed() -> None:
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    imaging.decode(imagegen.png_bytes(100, 50), ImageLimits(max_pixels=10**9))
    with pytest.raises(ImageTooLargeError):
        imaging.decode(imagegen.png_bytes(100, 50), ImageLimits(max_pixels=10))
    with pytest.raises(BadImageError):
        imaging.decode(imagegen.truncated_jpeg(), LIMITS)
    assert before == (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    assert before[1] is False


@pytest.mark.parametrize("make", [imagegen.truncated_jpeg, imagegen.truncated_png], ids=["jpeg", "png"])
def test_truncated_files_are_rejected(make: Callable[[], bytes]) -> None:
    data = make()
    with pytest.raises(BadImageError) as err:
        imaging.decode(data, LIMITS)
    assert type(err.value) is BadImageError
    assert "truncated" in err.value.message
    # The header is intact, so probing (which never decodes pixels) still works.
    assert imaging.probe(data, LIMITS).width == 256


def test_text_named_jpg_is_not_an_image() -> None:
    with pytest.raises(BadImageError) as err:
        imaging.decode(imagegen.text_as_jpg(), LIMITS)
    assert "text" in err.value.message


def test_garbage_is_bad_image() -> None:
    with pytest.raises(BadImageError) as err:
        imaging.decode(imagegen.garbage_bytes(), LIMITS)
    assert "not a recognised image" in err.value.message


def test_corrupt_header_of_an_accepted_format() -> None:
    data = b"\x89PNG\r\n\x1a\n" + imagegen.garbage_bytes(200)
    with pytest.raises(BadImageError) as err:
        imaging.decode(data, LIMITS)
    assert type(err.value) is BadImageError
    assert "corrupt png" in err.value.message


@pytest.mark.parametrize(
    ("label", "make", "pillow_can_open"),
    [
        ("pdf", imagegen.pdf_bytes, False),
        ("eps", imagegen.eps_bytes, True),
        ("psd", imagegen.psd_header, True),
        ("ico", imagegen.ico_bytes, True),
    ],
)
def test_formats_outside_the_allow_list_are_unsupported(
    label: str, make: Callable[[], bytes], pillow_can_open: bool,
) -> None:
    data = make()
    if pillow_can_open:
        # Proof that the allow-list, not Pillow's abilities, is what refuses these.
        Image.open(io.BytesIO(data))
    with pytest.raises(UnsupportedFormatError) as err:
        imaging.decode(data, LIMITS)
    assert "not a supported image format" in err.value.message
    with pytest.raises(UnsupportedFormatError):
        imaging.probe(data, LIMITS)


def test_tga_without_signature_is_refused() -> None:
    data = imagegen.tga_bytes()
    assert Image.open(io.BytesIO(data)).format == "TGA"
    with pytest.raises(BadImageError):
        imaging.decode(data, LIMITS)


def test_exif_is_returned_for_metadata_extraction() -> None:
    data = imagegen.jpeg_bytes(exif=imagegen.exif_with_gps(make="Canon"))
    decoded = imaging.decode(data, LIMITS)
    assert decoded.exif is not None
    assert decoded.exif.get(0x010F) == "Canon"
    assert decoded.exif.get_ifd(0x8825)  # GPS IFD present: extraction decides what to keep


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_malformed_exif_does_not_fail_decode() -> None:
    # A JPEG whose APP1 says Exif but holds junk after the TIFF header.
    broken = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff" + b"\x01" * 40
    decoded = imaging.decode(imagegen.jpeg_bytes(64, 48, exif=broken), LIMITS)
    assert decoded.image.size == (64, 48)
