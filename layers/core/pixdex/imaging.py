"""Safe image decoding: limits before pixels, an allow-list of formats, one normalised RGB/RGBA result.

Order of checks, cheapest and safest first:

1. byte limit and empty input, before Pillow sees anything;
2. ``Image.open(fp, formats=ALLOWED)``: Pillow only tries the plugins we allow (no PDF, EPS, PSD, ...),
   and reads the header only;
3. the pixel limit from the header (``ImageLimits.max_pixels``), before a single pixel is decoded;
4. the full decode, with truncated files rejected (``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set).

About ``Image.MAX_IMAGE_PIXELS``: pixdex never writes it. It is a process-wide global, so setting it per
call would leak one caller's limit into every other thread that opens an image meanwhile. Our own limit
(step 3) is the authoritative one and is evaluated per call from the header. Pillow's global check stays
at its library default as a second net (it also guards GIF frame and TIFF tile sizes inside the plugins);
when it fires, its ``DecompressionBombError`` becomes our ``ImageTooLargeError``. A consequence: limits
configured above Pillow's hard cap (2 x ``MAX_IMAGE_PIXELS``, about 179 MP) are capped by Pillow unless
the process raises that global once at start-up.
"""

from __future__ import annotations

import io
import math
import struct
import threading
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image, ImageCms, ImageFile, UnidentifiedImageError, features

from pixdex.errors import BadImageError, ImageTooLargeError, UnsupportedFormatError
from pixdex.settings import ImageLimits

# Pillow's format ids we accept, in the order Image.open tries them. HEIF comes from pi-heif (the decode-only
# build of pillow-heif: pixdex never writes HEIF, and the encoders would cost 16-27 MB in the Lambda package).
_PILLOW_FORMATS: Final = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "HEIF")

# Pillow format id -> the name pixdex reports. MPO is what Pillow calls a multi-picture JPEG from cameras.
_FORMAT_NAMES: Final = {
    "JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp",
    "TIFF": "tiff", "AVIF": "avif", "HEIF": "heic",
}

SUPPORTED_FORMATS: Final = ("jpeg", "png", "webp", "gif", "bmp", "tiff", "avif", "heic")

_ORIENTATION_TAG: Final = 0x0112
_TRANSPOSE: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# TIFF compressions that keep every pixel exactly.
_LOSSLESS_TIFF: Final = frozenset({
    "raw", "tiff_ccitt", "group3", "group4", "tiff_lzw", "tiff_adobe_deflate", "tiff_deflate",
    "packbits", "tiff_raw_16", "tiff_sgilog", "tiff_sgilog24", "lzma", "zstd", "webp_lossless",
})

# Signatures of files we can name but do not accept, so the error says what the file is.
_FOREIGN_SIGNATURES: Final = (
    (b"%PDF", "PDF"),
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"8BPS", "Photoshop PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"\xff\x0a", "JPEG XL"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"v/1\x01", "OpenEXR"),
    (b"gimp xcf", "GIMP XCF"),
    (b"\x0a\x05\x01\x08", "PCX"),
    (b"\x59\xa6\x6a\x95", "Sun raster"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"\x1f\x8b", "gzip archive"),
    (b"<svg", "SVG"),
    (b"<?xml", "XML/SVG"),
)

_SNIFF_ALLOWED: Final = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),
    (b"MM\x00+", "tiff"),
)

_HEIF_BRANDS: Final = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs",
                                 b"mif1", b"msf1"})
_AVIF_BRANDS: Final = frozenset({b"avif", b"avis"})

_heif_lock = threading.Lock()
_heif_registered = False


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, read without decoding pixels. Width and height are after EXIF orientation."""

    format: str
    width: int
    height: int
    mode: str
    frames: int
    lossless: bool
    orientation: int | None


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image normalised to RGB or RGBA, with the facts about its source.

    ``width``/``height`` are the full source dimensions after orientation; ``image`` can be smaller when
    JPEG draft mode shrank it on load (``draft_scale`` says by how much: 1, 2, 4 or 8).
    """

    image: Image.Image
    format: str
    mode: str
    width: int
    height: int
    frames: int
    lossless: bool
    has_alpha: bool
    icc_profile: bytes | None
    exif: Image.Exif | None
    draft_scale: int = 1


def allowed_pillow_formats() -> tuple[str, ...]:
    """The Pillow format ids this build can open (AVIF only where Pillow was built with libavif)."""
    _register_heif()
    if features.check("avif"):
        return _PILLOW_FORMATS
    return tuple(f for f in _PILLOW_FORMATS if f != "AVIF")


def probe(data: bytes, limits: ImageLimits) -> ImageInfo:
    """Identify an image and check its limits from the header alone."""
    im = _open(data, limits)
    # PNG may keep its eXIf chunk after the pixel data; Pillow would decode every pixel to find it, so
    # probe only uses EXIF that the header already holds (decode always sees all of it).
    header_exif = im.format != "PNG" or "exif" in im.info
    orientation = _orientation(_read_exif(im)) if header_exif else None
    width, height = _oriented_size(im.size, orientation)
    return ImageInfo(
        format=_format_name(im),
        width=width,
        height=height,
        mode=im.mode,
        frames=_frame_count(im),
        lossless=_is_lossless(im, data),
        orientation=orientation,
    )


def decode(data: bytes, limits: ImageLimits, *, target_size: int | None = None) -> DecodedImage:
    """Decode the first frame into RGB/RGBA with orientation applied.

    ``target_size`` is the longest side the caller will shrink to; for JPEG it lets libjpeg decode at
    1/2, 1/4 or 1/8 scale (draft mode), never below ``target_size``.
    """
    # Reading from memory: there is no file handle to close, and closing would free the pixels that the
    # RGB fast path hands back without a copy.
    im = _open(data, limits)
    fmt = _format_name(im)
    source_mode = im.mode
    frames = _frame_count(im)
    lossless = _is_lossless(im, data)
    full_size = im.size
    draft_scale = _apply_draft(im, target_size)
    try:
        im.load()
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{fmt} frame over the pixel limit: {exc}", format=fmt) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as exc:
        raise BadImageError(f"{fmt} image is truncated or corrupt: {exc}", format=fmt) from None
    # After load: some formats (PNG) only find their EXIF once the pixel data has been read past.
    exif = _read_exif(im)
    orientation = _orientation(exif)
    width, height = _oriented_size(full_size, orientation)
    icc = im.info.get("icc_profile") or None
    image, icc_out = normalise_mode(im, icc if isinstance(icc, bytes) else None)
    method = _TRANSPOSE.get(orientation or 1)
    if method is not None:
        image = image.transpose(method)
    return DecodedImage(
        image=image,
        format=fmt,
        mode=source_mode,
        width=width,
        height=height,
        frames=frames,
        lossless=lossless,
        has_alpha=image.mode == "RGBA",
        icc_profile=icc_out,
        exif=exif,
        draft_scale=draft_scale,
    )


def _register_heif() -> None:
    global _heif_registered
    if _heif_registered:
        return
    with _heif_lock:
        if not _heif_registered:
            import pi_heif

            # Embedded thumbnails, depth maps and auxiliary images are never used: skip decoding them.
            pi_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
            _heif_registered = True


def _open(data: bytes, limits: ImageLimits) -> ImageFile.ImageFile:
    size = len(data)
    if size == 0:
        raise BadImageError("empty file: zero bytes", bytes=0)
    if size > limits.max_bytes:
        raise ImageTooLargeError(
            f"file is {size} bytes, over the limit of {limits.max_bytes}",
            bytes=size, max_bytes=limits.max_bytes,
        )
    formats = allowed_pillow_formats()
    try:
        im = Image.open(io.BytesIO(data), formats=list(formats))
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image header declares too many pixels: {exc}") from None
    except UnidentifiedImageError:
        raise _identify_failure(data, formats) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as exc:
        raise BadImageError(f"corrupt image header: {exc}") from None
    _check_pixels(im, limits)
    return im


def _check_pixels(im: ImageFile.ImageFile, limits: ImageLimits) -> None:
    width, height = im.size
    if width <= 0 or height <= 0:
        raise BadImageError(f"image declares an empty size {width}x{height}")
    pixels = width * height
    if pixels > limits.max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {pixels} pixels, over the limit of {limits.max_pixels}",
            width=width, height=height, max_pixels=limits.max_pixels,
        )


def _identify_failure(data: bytes, formats: tuple[str, ...]) -> BadImageError:
    head = data[:32]
    for signature, fmt in _SNIFF_ALLOWED:
        if head.startswith(signature):
            return BadImageError(f"corrupt {fmt} file: the header cannot be parsed", format=fmt)
    if head[8:12] == b"WEBP" and head.startswith(b"RIFF"):
        return BadImageError("corrupt webp file: the header cannot be parsed", format="webp")
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _AVIF_BRANDS:
            if "AVIF" not in formats:
                return UnsupportedFormatError("AVIF decoding is not available in this build", format="avif")
            return BadImageError("corrupt avif file: the header cannot be parsed", format="avif")
        if brand in _HEIF_BRANDS:
            return BadImageError("corrupt heic file: the header cannot be parsed", format="heic")
        return UnsupportedFormatError(
            f"unsupported ISO media file (brand {brand.decode('latin-1')!r}): not an image pixdex accepts",
        )
    if head.startswith(b"RIFF"):
        return UnsupportedFormatError(f"unsupported RIFF file ({head[8:12].decode('latin-1')!r})")
    stripped = head.lstrip()
    for signature, name in _FOREIGN_SIGNATURES:
        if stripped.startswith(signature):
            return UnsupportedFormatError(
                f"{name} is not a supported image format (accepted: {', '.join(SUPPORTED_FORMATS)})",
                detected=name,
            )
    if _looks_like_text(data[:4096]):
        return BadImageError("not an image: the file contains text")
    return BadImageError(f"not a recognised image (accepted formats: {', '.join(SUPPORTED_FORMATS)})")


def _looks_like_text(sample: bytes) -> bool:
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character cut at the sample's end is still text.
        try:
            text = sample[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    if not text:
        return False
    printable = sum(ch.isprintable() or ch in "\r\n\t\f" for ch in text)
    return printable / len(text) > 0.95


def _format_name(im: ImageFile.ImageFile) -> str:
    return _FORMAT_NAMES.get(im.format or "", (im.format or "unknown").lower())


def _frame_count(im: ImageFile.ImageFile) -> int:
    try:
        n = int(getattr(im, "n_frames", 1))
        # Counting frames may leave the file positioned on a later frame.
        if im.tell() != 0:
            im.seek(0)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"animation frame over the pixel limit: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as exc:
        raise BadImageError(f"corrupt animation: {exc}") from None
    return max(1, n)


def _is_lossless(im: ImageFile.ImageFile, data: bytes) -> bool:
    fmt = im.format
    if fmt in ("PNG", "GIF", "BMP"):
        return True
    if fmt == "TIFF":
        return str(im.info.get("compression", "raw")) in _LOSSLESS_TIFF
    if fmt == "WEBP":
        return _webp_is_lossless(data)
    return False


def _webp_is_lossless(data: bytes) -> bool:
    """True when the first image chunk of a WebP file is VP8L (lossless) rather than VP8 (lossy)."""
    pos = 12
    end = len(data)
    while pos + 8 <= end:
        tag = data[pos:pos + 4]
        (length,) = struct.unpack_from("<I", data, pos + 4)
        if tag == b"VP8L":
            return True
        if tag == b"VP8 ":
            return False
        if tag == b"ANMF":
            # An animation frame wraps its own image chunks after a 16-byte frame header.
            pos += 8 + 16
            continue
        pos += 8 + length + (length & 1)
    return False


def _read_exif(im: ImageFile.ImageFile) -> Image.Exif | None:
    # EXIF is attacker-controlled; a malformed block must not fail the whole decode.
    try:
        exif = im.getexif()
    except Exception:  # malformed EXIF can raise almost anything inside Pillow's parser
        return None
    return exif if len(exif) else None


def _orientation(exif: Image.Exif | None) -> int | None:
    if exif is None:
        return None
    try:
        value = exif.get(_ORIENTATION_TAG)
    except (ValueError, TypeError, struct.error):
        return None
    if isinstance(value, int) and 1 <= value <= 8:
        return value
    return None


def _oriented_size(size: tuple[int, int], orientation: int | None) -> tuple[int, int]:
    width, height = size
    if orientation is not None and orientation >= 5:
        return height, width
    return width, height


def _apply_draft(im: ImageFile.ImageFile, target_size: int | None) -> int:
    if target_size is None or im.format not in ("JPEG", "MPO"):
        return 1
    width, height = im.size
    longest = max(width, height)
    if target_size <= 0 or target_size * 2 > longest:
        return 1
    # Ask for the box the longest side will shrink to: libjpeg then picks the largest 1/2^n scale that
    # still covers it, so the later resize only ever goes down.
    ratio = target_size / longest
    box = (max(1, math.ceil(width * ratio)), max(1, math.ceil(height * ratio)))
    if im.draft(None, box) is None:
        return 1
    return max(1, round(width / im.size[0]))


def normalise_mode(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
    """Convert any Pillow mode to RGB or RGBA. Returns the image and the ICC profile that still describes it.

    Alpha that is fully opaque is dropped (RGB). ICC profiles survive only where they still describe the
    pixels: an RGB profile on RGB data; CMYK is converted through its profile to sRGB (profile dropped,
    sRGB being the default), gray profiles are dropped with the gray-to-RGB expansion.
    """
    mode = im.mode
    rgb_icc = icc if _icc_colour_space(icc) == b"RGB " else None
    if mode == "RGB":
        return im, rgb_icc
    if mode == "RGBA":
        return _drop_opaque_alpha(im), rgb_icc
    if mode == "CMYK":
        return _cmyk_to_rgb(im, icc)
    if mode in ("RGBa", "RGBX", "YCbCr", "HSV", "LAB"):
        target = "RGBA" if mode == "RGBa" else "RGB"
        try:
            return _drop_opaque_alpha(im.convert(target)), rgb_icc
        except ValueError as exc:
            raise UnsupportedFormatError(f"unsupported pixel mode {mode}: {exc}", mode=mode) from None
    if mode in ("P", "PA"):
        has_transparency = mode == "PA" or "transparency" in im.info
        if has_transparency:
            return _drop_opaque_alpha(im.convert("RGBA")), rgb_icc
        return im.convert("RGB"), rgb_icc
    if mode in ("LA", "La"):
        la = im if mode == "LA" else im.convert("LA")
        return _drop_opaque_alpha(la.convert("RGBA")), None
    if mode == "L":
        if "transparency" in im.info:
            return _drop_opaque_alpha(im.convert("RGBA")), None
        return im.convert("RGB"), None
    if mode == "1":
        return im.convert("L").convert("RGB"), None
    if mode in ("I", "F") or mode.startswith("I;16"):
        return Image.fromarray(_to_8bit(im)).convert("RGB"), None
    raise UnsupportedFormatError(f"unsupported pixel mode {mode}", mode=mode)


def _to_8bit(im: Image.Image) -> np.ndarray:
    """Map a 16-bit, 32-bit integer or float single-channel image onto 0..255.

    Pillow's own conversion clips these to 255, which turns most 16-bit images white. Values that fit a
    known range are scaled from it (8-bit, 16-bit, unit float); anything else is stretched min..max.
    """
    arr = np.asarray(im)
    if arr.dtype.byteorder not in ("=", "|"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    values = arr.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        values = np.where(finite, values, 0.0)
    lo = float(values.min())
    hi = float(values.max())
    if lo >= 0 and hi <= 255 and im.mode != "F":
        scaled = values
    elif lo >= 0 and hi <= 65535 and im.mode != "F":
        scaled = values / 257.0
    elif im.mode == "F" and lo >= 0 and hi <= 1.0:
        scaled = values * 255.0
    elif hi > lo:
        scaled = (values - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _drop_opaque_alpha(im: Image.Image) -> Image.Image:
    # A fully opaque alpha channel carries nothing; dropping it lets every output format take the image.
    if im.mode == "RGBA" and im.getchannel("A").getextrema() == (255, 255):
        return im.convert("RGB")
    return im


def _icc_colour_space(icc: bytes | None) -> bytes | None:
    if icc is None or len(icc) < 20:
        return None
    return icc[16:20]


_SRGB: ImageCms.ImageCmsProfile | None = None


def _srgb_profile() -> ImageCms.ImageCmsProfile:
    global _SRGB
    if _SRGB is None:
        _SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    return _SRGB


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
    if icc is not None and _icc_colour_space(icc) == b"CMYK":
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(im, source, _srgb_profile(), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            converted = None
        if converted is not None:
            # The pixels are sRGB now, which is what an image without a profile is taken to be.
            return converted, None
    return im.convert("RGB"), None
