"""Images made on the fly for tests and benchmarks: every format and mode pixdex accepts, and bad inputs.

Everything is synthesised with numpy and Pillow (no files on disk, no downloads), deterministic per seed.
Photo-like content has smooth gradients, soft shapes, texture and sensor noise, so codecs behave as
they do on photos (lossy wins); screenshot-like content has flat areas and hard edges (lossless wins).
The pixel generators are the benchmark's (pixdex.bench.compress), so tests and benchmark agree.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np
from PIL import Image, ImageCms, ImageDraw

from pixdex.bench.compress import synth_photo, synth_screenshot

# ---------------------------------------------------------------------------------------------------------
# Pixel content


def photo_array(w: int, h: int, seed: int = 0) -> np.ndarray:
    """An (h, w, 3) uint8 array that compresses like a photograph (the benchmark's generator)."""
    return synth_photo(w, h, seed)


def screenshot_array(w: int, h: int, seed: int = 0) -> np.ndarray:
    """An (h, w, 3) uint8 array like a UI screenshot: flat panels, buttons, lines of 'text'."""
    return synth_screenshot(w, h, seed)


def photo_image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(photo_array(w, h, seed), "RGB")


def alpha_ramp(w: int, h: int) -> Image.Image:
    """An alpha channel that goes from transparent (left) to opaque (right)."""
    ramp = np.tile(np.linspace(0, 255, w, dtype=np.float32), (h, 1))
    return Image.fromarray(ramp.astype(np.uint8), "L")


def mode_image(mode: str, w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    """A photo-like image in any Pillow mode pixdex must normalise."""
    rgb = photo_image(w, h, seed)
    gray = rgb.convert("L")
    if mode == "RGB":
        return rgb
    if mode == "RGBA":
        out = rgb.copy()
        out.putalpha(alpha_ramp(w, h))
        return out
    if mode == "RGBa":
        rgba = mode_image("RGBA", w, h, seed)
        return rgba.convert("RGBa")
    if mode == "L":
        return gray
    if mode == "LA":
        out = gray.copy()
        out.putalpha(alpha_ramp(w, h))
        return out.convert("LA") if out.mode != "LA" else out
    if mode == "1":
        return gray.point(lambda v: 255 if v > 127 else 0).convert("1")
    if mode == "P":
        return rgb.quantize(64)
    if mode == "P+transparency":
        pal = rgb.quantize(64)
        arr = np.asarray(pal).copy()
        arr[:, : w // 3] = 0  # the left third uses palette index 0, which is declared transparent
        out = Image.fromarray(arr, "P")
        out.putpalette(pal.getpalette() or [])
        out.info["transparency"] = 0
        return out
    if mode == "CMYK":
        return rgb.convert("CMYK")
    if mode == "LAB":
        srgb, lab = ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB")
        out_lab = ImageCms.applyTransform(rgb, ImageCms.buildTransform(srgb, lab, "RGB", "LAB"))
        assert out_lab is not None
        return out_lab
    if mode == "I;16":
        arr16 = (np.asarray(gray, dtype=np.uint16) * 257).astype("<u2")
        return Image.fromarray(arr16)
    if mode == "I":
        # 16-bit data in a 32-bit container, as scientific and older 16-bit PNG readers produce.
        arr32 = np.asarray(gray, dtype=np.int32) * 257
        return Image.fromarray(arr32)
    if mode == "F":
        return Image.fromarray(np.asarray(gray, dtype=np.float32) / 255.0)
    raise ValueError(f"no generator for mode {mode}")


# ---------------------------------------------------------------------------------------------------------
# Encoders


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    """Save with Pillow into bytes. HEIF needs pillow-heif's plugin, registered here on first use."""
    if fmt.upper() in ("HEIF", "HEIC"):
        import pillow_heif

        pillow_heif.register_heif_opener()
        fmt = "HEIF"
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _params(exif: Image.Exif | bytes | None, icc_profile: bytes | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if exif is not None:
        params["exif"] = exif.tobytes() if isinstance(exif, Image.Exif) else exif
    if icc_profile is not None:
        params["icc_profile"] = icc_profile
    return params


def jpeg_bytes(
    w: int = 64, h: int = 48, *, exif: Image.Exif | bytes | None = None, quality: int = 90, seed: int = 0,
    icc_profile: bytes | None = None, mode: str = "RGB", progressive: bool = False,
    image: Image.Image | None = None,
) -> bytes:
    img = image if image is not None else mode_image(mode, w, h, seed)
    return encode(img, "JPEG", quality=quality, progressive=progressive, **_params(exif, icc_profile))


def png_bytes(
    w: int = 64, h: int = 48, *, mode: str = "RGB", seed: int = 0, screenshot: bool = False,
    exif: Image.Exif | bytes | None = None, icc_profile: bytes | None = None, compress_level: int = 6,
) -> bytes:
    img = Image.fromarray(screenshot_array(w, h, seed), "RGB") if screenshot else mode_image(mode, w, h, seed)
    params = _params(exif, icc_profile)
    if img.mode == "P" and "transparency" in img.info:
        params["transparency"] = img.info["transparency"]
    return encode(img, "PNG", compress_level=compress_level, **params)


def webp_bytes(
    w: int = 64, h: int = 48, *, lossless: bool = False, alpha: bool = False, seed: int = 0, frames: int = 1,
    exif: Image.Exif | bytes | None = None,
) -> bytes:
    img = mode_image("RGBA" if alpha else "RGB", w, h, seed)
    params = _params(exif, None)
    if frames > 1:
        rest = [mode_image(img.mode, w, h, seed + i) for i in range(1, frames)]
        return encode(img, "WEBP", lossless=lossless, save_all=True, append_images=rest, duration=100,
                      **params)
    return encode(img, "WEBP", lossless=lossless, quality=90, **params)


def gif_bytes(
    w: int = 64, h: int = 48, *, frames: int = 1, transparency: bool = False, seed: int = 0,
) -> bytes:
    first = mode_image("P+transparency" if transparency else "P", w, h, seed)
    params: dict[str, Any] = {}
    if transparency:
        params["transparency"] = 0
    if frames > 1:
        rest = [mode_image("P", w, h, seed + i) for i in range(1, frames)]
        return encode(first, "GIF", save_all=True, append_images=rest, duration=80, loop=0, **params)
    return encode(first, "GIF", **params)


def bmp_bytes(w: int = 64, h: int = 48, *, mode: str = "RGB", seed: int = 0) -> bytes:
    return encode(mode_image(mode, w, h, seed), "BMP")


def tiff_bytes(
    w: int = 64, h: int = 48, *, mode: str = "RGB", seed: int = 0, compression: str | None = None,
    exif: Image.Exif | bytes | None = None, icc_profile: bytes | None = None,
) -> bytes:
    params = _params(exif, icc_profile)
    if compression is not None:
        params["compression"] = compression
    return encode(mode_image(mode, w, h, seed), "TIFF", **params)


def tiff_premultiplied_bytes(w: int = 64, h: int = 48, seed: int = 0) -> bytes:
    """An uncompressed RGBA TIFF with *associated* (premultiplied) alpha, which Pillow opens as mode RGBa.

    Pillow cannot write RGBa, so the file is laid out by hand: header, pixel strip, one IFD.
    """
    rgba = np.asarray(mode_image("RGBA", w, h, seed), dtype=np.uint16)
    premultiplied = rgba.copy()
    premultiplied[..., :3] = (rgba[..., :3] * rgba[..., 3:4] + 127) // 255
    pixels = premultiplied.astype(np.uint8).tobytes()
    pixel_offset = 8
    bits_offset = pixel_offset + len(pixels)
    ifd_offset = bits_offset + 8
    entries = [
        (256, 4, 1, w),  # ImageWidth
        (257, 4, 1, h),  # ImageLength
        (258, 3, 4, bits_offset),  # BitsPerSample -> 8,8,8,8 stored out of line
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 2),  # PhotometricInterpretation: RGB
        (273, 4, 1, pixel_offset),  # StripOffsets
        (277, 3, 1, 4),  # SamplesPerPixel
        (278, 4, 1, h),  # RowsPerStrip
        (279, 4, 1, len(pixels)),  # StripByteCounts
        (284, 3, 1, 1),  # PlanarConfiguration: chunky
        (338, 3, 1, 1),  # ExtraSamples: associated alpha
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        packed = struct.pack("<H", value) + b"\x00\x00" if typ == 3 and count == 1 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, typ, count) + packed
    ifd += struct.pack("<I", 0)
    header = b"II*\x00" + struct.pack("<I", ifd_offset)
    return header + pixels + struct.pack("<4H", 8, 8, 8, 8) + ifd


def avif_bytes(w: int = 64, h: int = 48, *, alpha: bool = False, seed: int = 0, quality: int = 80) -> bytes:
    return encode(mode_image("RGBA" if alpha else "RGB", w, h, seed), "AVIF", quality=quality, speed=10)


def heic_bytes(
    w: int = 64, h: int = 48, *, alpha: bool = False, seed: int = 0, exif: Image.Exif | bytes | None = None,
) -> bytes:
    image = mode_image("RGBA" if alpha else "RGB", w, h, seed)
    return encode(image, "HEIF", quality=85, **_params(exif, None))


def marked_image(w: int = 80, h: int = 40) -> Image.Image:
    """Grey image with a pure red block in the top-left corner of the stored pixels.

    After an EXIF rotation the block lands in a known corner, which is how orientation tests check it.
    """
    img = Image.new("RGB", (w, h), (128, 128, 128))
    ImageDraw.Draw(img).rectangle((0, 0, w // 4 - 1, h // 4 - 1), fill=(255, 0, 0))
    return img


def oriented_jpeg(orientation: int, w: int = 80, h: int = 40) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(image=marked_image(w, h), exif=exif, quality=95)


# ---------------------------------------------------------------------------------------------------------
# EXIF


def _rational_dms(value: float) -> tuple[float, float, float]:
    value = abs(value)
    degrees = int(value)
    minutes_full = (value - degrees) * 60
    minutes = int(minutes_full)
    seconds = round((minutes_full - minutes) * 60, 4)
    return (float(degrees), float(minutes), seconds)


def exif_with_gps(
    lat: float | None = 48.8584, lon: float | None = 2.2945, *, make: str | None = "Canon",
    model: str | None = "Canon EOS 5D", taken_at: str | None = "2023:07:14 18:22:05",
    offset: str | None = "+02:00", orientation: int | None = None, lens: str | None = None,
    software: str | None = None,
) -> Image.Exif:
    """An EXIF block with camera, capture time and (unless lat/lon are None) a GPS position."""
    exif = Image.Exif()
    if make is not None:
        exif[0x010F] = make
    if model is not None:
        exif[0x0110] = model
    if software is not None:
        exif[0x0131] = software
    if orientation is not None:
        exif[0x0112] = orientation
    sub = exif.get_ifd(0x8769)
    if taken_at is not None:
        sub[0x9003] = taken_at
    if offset is not None:
        sub[0x9011] = offset
    if lens is not None:
        sub[0xA434] = lens
    if lat is not None and lon is not None:
        gps = exif.get_ifd(0x8825)
        gps[0] = b"\x02\x02\x00\x00"
        gps[1] = "N" if lat >= 0 else "S"
        gps[2] = _rational_dms(lat)
        gps[3] = "E" if lon >= 0 else "W"
        gps[4] = _rational_dms(lon)
    return exif


def exif_bytes(exif: Image.Exif) -> bytes:
    return exif.tobytes()


# ---------------------------------------------------------------------------------------------------------
# Colour profiles


def srgb_icc() -> bytes:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    return bytes(profile.tobytes())


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _srgb_to_lab(rgb: Iterable[float]) -> tuple[float, float, float]:
    lin = [((c / 255) / 12.92) if c / 255 <= 0.04045 else (((c / 255) + 0.055) / 1.055) ** 2.4 for c in rgb]
    r, g, b = lin
    # sRGB -> XYZ (D50, Bradford-adapted), then XYZ -> Lab relative to D50.
    x = 0.4360747 * r + 0.3850649 * g + 0.1430804 * b
    y = 0.2225045 * r + 0.7168786 * g + 0.0606169 * b
    z = 0.0139322 * r + 0.0971045 * g + 0.7141733 * b
    white = (0.9642, 1.0, 0.8249)

    def f(t: float) -> float:
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    fx, fy, fz = f(x / white[0]), f(y / white[1]), f(z / white[2])
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def cmyk_icc(paper_lab: tuple[float, float, float] = (88.0, 0.0, 25.0)) -> bytes:
    """A small but valid ICC v2 CMYK printer profile (lut8 A2B0/B2A0, Lab PCS).

    Inks behave like the naive CMYK->RGB formula, except that bare paper (no ink) maps to
    ``paper_lab`` (a yellowish paper by default), so a test can tell a colour-managed conversion from
    Pillow's naive one by looking at white.
    """
    grid = 2
    clut = bytearray()
    for c in range(grid):
        for m in range(grid):
            for y in range(grid):
                for k in range(grid):
                    if c == m == y == k == 0:
                        lab = paper_lab
                    else:
                        rgb = [255 * (1 - ink) * (1 - k) for ink in (c, m, y)]
                        lab = _srgb_to_lab(rgb)
                    clut += bytes((
                        round(max(0.0, min(100.0, lab[0])) * 255 / 100),
                        round(max(-128.0, min(127.0, lab[1])) + 128),
                        round(max(-128.0, min(127.0, lab[2])) + 128),
                    ))
    identity_curve = bytes(range(256))
    matrix = b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))

    def lut8(n_in: int, n_out: int, table: bytes) -> bytes:
        return (b"mft1" + b"\x00" * 4 + bytes((n_in, n_out, grid, 0)) + matrix
                + identity_curve * n_in + table + identity_curve * n_out)

    b2a = bytearray()
    for lab_l in range(grid):
        for _a in range(grid):
            for _b in range(grid):
                b2a += bytes((0, 0, 0, 255 - lab_l * 255))
    desc_text = b"pixdex test CMYK\x00"
    desc = (b"desc" + b"\x00" * 4 + struct.pack(">I", len(desc_text)) + desc_text
            + b"\x00" * 8 + b"\x00\x00" + b"\x00" + b"\x00" * 67)
    tags = [
        (b"desc", desc),
        (b"wtpt", b"XYZ " + b"\x00" * 4 + _s15(0.9642) + _s15(1.0) + _s15(0.8249)),
        (b"cprt", b"text" + b"\x00" * 4 + b"public domain\x00"),
        (b"A2B0", lut8(4, 3, bytes(clut))),
        (b"B2A0", lut8(3, 4, bytes(b2a))),
    ]
    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    entries = b""
    body = b""
    for sig, data in tags:
        while (offset + len(body)) % 4:
            body += b"\x00"
        entries += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    while len(body) % 4:
        body += b"\x00"
    size = 128 + table_size + len(body)
    header = (struct.pack(">I", size) + b"\x00" * 4 + b"\x02\x10\x00\x00" + b"prtr" + b"CMYK" + b"Lab "
              + struct.pack(">6H", 2024, 1, 1, 0, 0, 0) + b"acsp" + b"\x00" * 4 + b"\x00" * 4
              + b"\x00" * 8 + b"\x00" * 8 + struct.pack(">I", 0)
              + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + b"\x00" * 4 + b"\x00" * 16 + b"\x00" * 28)
    assert len(header) == 128, len(header)
    return header + struct.pack(">I", len(tags)) + entries + body


# ---------------------------------------------------------------------------------------------------------
# Bad inputs


def truncated_jpeg(w: int = 256, h: int = 192, keep: float = 0.5, seed: int = 0) -> bytes:
    """A real JPEG cut off part-way through its entropy-coded data."""
    data = jpeg_bytes(w, h, seed=seed, quality=90)
    return data[: int(len(data) * keep)]


def truncated_png(w: int = 256, h: int = 192, keep: float = 0.6, seed: int = 0) -> bytes:
    data = png_bytes(w, h, seed=seed)
    return data[: int(len(data) * keep)]


def _png_chunk(tag: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))


def png_bomb(width: int = 50000, height: int = 50000) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb's shape).

    The IDAT holds a little zlib data of zeros; a decoder that trusted the header would try to allocate
    width*height*3 bytes (7.5 GB at the default size).
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 65536, 9)
    chunks = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def gif_bomb(width: int = 40000, height: int = 40000) -> bytes:
    """A GIF with a tiny logical screen whose first frame claims ``width`` x ``height`` pixels."""
    header = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0, 0, 0)
    descriptor = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    # A 2-colour table would be needed to decode; the bomb never gets that far.
    return header + descriptor + b"\x02\x02\x44\x01\x00" + b"\x3b"


def text_as_jpg() -> bytes:
    """What a text file renamed to photo.jpg contains."""
    return b"Meeting notes\n- buy milk\n- call Anna about the holiday photos\n" * 4


def garbage_bytes(n: int = 2048, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def pdf_bytes(w: int = 32, h: int = 32) -> bytes:
    return encode(photo_image(w, h), "PDF")


def eps_bytes(w: int = 32, h: int = 32) -> bytes:
    return encode(photo_image(w, h), "EPS")


def ico_bytes(w: int = 32, h: int = 32) -> bytes:
    return encode(photo_image(w, h), "ICO")


def tga_bytes(w: int = 32, h: int = 32) -> bytes:
    return encode(photo_image(w, h), "TGA")


def psd_header() -> bytes:
    """The start of a Photoshop file: Pillow could read PSD, pixdex must not try."""
    return b"8BPS\x00\x01" + b"\x00" * 6 + struct.pack(">HIIHH", 3, 32, 32, 8, 3) + b"\x00" * 64
