"""The bad-input corpus: every kind of file a user (or an attacker) may drop into the originals bucket.

``python -m tests.corpus.generate OUT`` writes one file per kind under OUT (its key is its path) and
``OUT/manifest.json``: kind -> key and expected outcome, either ``ok`` with the document's properties
(format, size after EXIF orientation, frames) or ``error`` with the typed reason (``compress_state.error
.code`` and ``analyze_state.error.code`` on the document). Everything is synthesised here; no binary is
committed. Kinds are grouped by what they test; ``KINDS`` is the single list the tests iterate.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import features

from tests import imagegen


@dataclass(frozen=True)
class Kind:
    name: str
    key: str
    make: Callable[[], bytes]
    expect: str                      # "ok" | "error"
    code: str | None = None          # the typed reason when expect == "error"
    props: dict[str, Any] = field(default_factory=dict)   # document fields when expect == "ok"
    payload: str | None = None       # bytes smuggled in a polyglot that no derivative may carry

    def entry(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("make")
        return d


def _ok(name: str, key: str, make: Callable[[], bytes], payload: str | None = None, **props: Any) -> Kind:
    return Kind(name, key, make, "ok", None, props, payload)


def _err(name: str, key: str, make: Callable[[], bytes], code: str) -> Kind:
    return Kind(name, key, make, "error", code)


# -- builders for kinds imagegen does not have -------------------------------------------------------

def _cut(data: bytes, keep: float) -> bytes:
    return data[: int(len(data) * keep)]


def _png_chunk(tag: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))


def corrupt_jpeg_header() -> bytes:
    """A JPEG whose frame header (SOF0) declares 0 components: libjpeg refuses it."""
    data = bytearray(imagegen.jpeg_bytes(128, 96, seed=3))
    sof = data.find(b"\xff\xc0")
    data[sof + 9] = 0
    return bytes(data)


def corrupt_png_crc() -> bytes:
    """A PNG whose IHDR checksum is wrong."""
    data = bytearray(imagegen.png_bytes(64, 48, seed=4))
    data[29] ^= 0xFF   # last byte of IHDR's CRC
    return bytes(data)


def webp_bomb() -> bytes:
    """An extended WebP (VP8X) whose canvas claims 16384 x 16384 pixels (268 MP) around a tiny frame."""
    small = imagegen.webp_bytes(16, 16, seed=5)
    vp8 = small[12:]
    w, h = 16384 - 1, 16384 - 1
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + w.to_bytes(3, "little") + h.to_bytes(3, "little")
    body = b"WEBP" + vp8x + vp8
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tiff_bomb() -> bytes:
    """A 130-byte TIFF whose IFD claims 100000 x 100000 pixels."""
    entries = [(256, 4, 1, 100_000), (257, 4, 1, 100_000), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, 100_000), (279, 4, 1, 16)]
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        packed = struct.pack("<H", value) + b"\x00\x00" if typ == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, typ, count) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 24) + b"\x00" * 16 + ifd


def jpeg_huge_dimensions() -> bytes:
    """A real JPEG whose SOF0 is rewritten to claim 65500 x 65500 pixels."""
    data = bytearray(imagegen.jpeg_bytes(64, 48, seed=6))
    sof = data.find(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", 65500, 65500)
    return bytes(data)


def png_deflate_bomb() -> bytes:
    """Within the pixel limit but a deflate bomb: 8000 x 8000 RGB of one colour (192 MB decoded) in ~190 KB."""
    raw_row = b"\x00" + b"\x80\x80\x80" * 8000
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(raw_row) for _ in range(8000)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", 8000, 8000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def png_text_bomb() -> bytes:
    """A small PNG with a zTXt chunk that inflates to 64 MB of metadata."""
    png = imagegen.png_bytes(64, 48, seed=7)
    comp = zlib.compressobj(9)
    ztxt = b"Comment\x00\x00" + comp.compress(b"A" * (64 << 20)) + comp.flush()
    return png[:33] + _png_chunk(b"zTXt", ztxt) + png[33:]


def huge_exif_jpeg() -> bytes:
    """A JPEG carrying a 60 KB EXIF block (UserComment) and 40 XMP-like COM segments of 60 KB each."""
    exif = imagegen.exif_with_gps()
    exif.get_ifd(0x8769)[0x9286] = b"ASCII\x00\x00\x00" + b"x" * 60_000
    data = imagegen.jpeg_bytes(320, 240, seed=8, exif=exif)
    com = b"".join(b"\xff\xfe" + struct.pack(">H", 60_002) + b"c" * 60_000 for _ in range(40))
    return data[:2] + com + data[2:]


def malformed_exif_jpeg() -> bytes:
    """An APP1 Exif segment whose IFD offsets point past its end."""
    bad = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 0xFFFFFF00) + b"\x01\x00" + b"\x12\x01\x03\x00" * 3
    return imagegen.jpeg_bytes(160, 120, seed=9, exif=bad)


def exif_bad_orientation_jpeg() -> bytes:
    """EXIF Orientation = 9 (no such value): ignored, the image stays as stored."""
    return imagegen.jpeg_bytes(160, 120, seed=10, exif=_orientation_exif(9))


def _orientation_exif(value: int) -> bytes:
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, value, 0) + struct.pack("<I", 0)
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd


def malformed_icc_jpeg() -> bytes:
    """An ICC profile that claims to be CMYK but is 200 bytes of garbage, on an RGB JPEG."""
    icc = struct.pack(">I", 200) + b"lcms" + b"\x02\x10\x00\x00" + b"prtr" + b"CMYK" + b"Lab " + b"\x07" * 176
    return imagegen.jpeg_bytes(160, 120, seed=11, icc_profile=icc)


def malformed_icc_cmyk_jpeg() -> bytes:
    """A CMYK JPEG whose ICC profile is garbage: converted without colour management."""
    icc = struct.pack(">I", 200) + b"lcms" + b"\x02\x10\x00\x00" + b"prtr" + b"CMYK" + b"Lab " + b"\x07" * 176
    return imagegen.jpeg_bytes(160, 120, seed=12, mode="CMYK", icc_profile=icc)


def jpeg_zip_polyglot() -> bytes:
    """A JPEG with a ZIP archive appended (valid as both): the derivatives must not carry the archive."""
    buf = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("payload.sh", "#!/bin/sh\necho pwned\n")
    return imagegen.jpeg_bytes(200, 150, seed=13) + buf.getvalue()


def gif_js_polyglot() -> bytes:
    """GIF89a header whose screen size bytes spell '/*' so the file is also JavaScript ('GIFAR' style)."""
    gif = bytearray(imagegen.gif_bytes(32, 32, seed=14))
    gif[6:10] = b"/*\x00\x00"
    return bytes(gif) + b"*/=1;alert(document.domain);"


def html_jpeg_polyglot() -> bytes:
    """An HTML page with a JPEG inside it: starts as text, so it is not an image."""
    return (b"<!DOCTYPE html><html><body><script>alert(1)</script><!--"
            + imagegen.jpeg_bytes(32, 32, seed=15) + b"--></body></html>")


def pdf_jpeg_polyglot() -> bytes:
    """A PDF header followed by a JPEG."""
    return b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + imagegen.jpeg_bytes(32, 32, seed=16)


SVG_WITH_SCRIPT = (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">'
                   b'<script>alert(document.cookie)</script><rect width="100" height="100" fill="red"/></svg>\n')
HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>x</title></head><body onload=\"alert(1)\">hello</body></html>\n"


def _avif_expectation() -> tuple[str, str | None]:
    return ("ok", None) if features.check("avif") else ("error", "unsupported_format")


def _long_key() -> str:
    # S3 keys are at most 1024 bytes of UTF-8: 4 folders of 240 characters and a file name.
    return "long/" + "/".join(c * 240 for c in "abcd") + "/very-long-key.png"


def _kinds() -> list[Kind]:
    j = imagegen
    kinds: list[Kind] = [
        # --- good images in every format and mode the pipeline accepts
        _ok("jpeg_baseline", "ok/baseline.jpg", lambda: j.jpeg_bytes(640, 480, seed=1),
            format="jpeg", width=640, height=480),
        _ok("jpeg_progressive", "ok/progressive.jpg", lambda: j.jpeg_bytes(320, 240, progressive=True, seed=2),
            format="jpeg", width=320, height=240),
        _ok("jpeg_gray", "ok/gray.jpg", lambda: j.jpeg_bytes(200, 100, mode="L"), format="jpeg", mode="L"),
        _ok("jpeg_cmyk", "ok/cmyk.jpg", lambda: j.jpeg_bytes(200, 100, mode="CMYK"), format="jpeg", mode="CMYK"),
        _ok("jpeg_cmyk_icc", "ok/cmyk-icc.jpg", lambda: j.jpeg_bytes(200, 100, mode="CMYK", icc_profile=j.cmyk_icc()),
            format="jpeg", mode="CMYK"),
        _ok("png_rgba", "ok/alpha.png", lambda: j.png_bytes(120, 80, mode="RGBA"), format="png", mode="RGBA"),
        _ok("png_16bit", "ok/sixteen-bit.png", lambda: j.png_bytes(120, 80, mode="I;16"), format="png",
            width=120, height=80),
        _ok("png_palette", "ok/palette.png", lambda: j.png_bytes(120, 80, mode="P"), format="png", mode="P"),
        _ok("png_palette_transparency", "ok/palette-alpha.png", lambda: j.png_bytes(120, 80, mode="P+transparency"),
            format="png", mode="P"),
        _ok("png_1bit", "ok/one-bit.png", lambda: j.png_bytes(120, 80, mode="1"), format="png", mode="1"),
        _ok("png_gray_alpha", "ok/gray-alpha.png", lambda: j.png_bytes(120, 80, mode="LA"), format="png", mode="LA"),
        _ok("webp_lossy", "ok/lossy.webp", lambda: j.webp_bytes(300, 200), format="webp", width=300),
        _ok("webp_lossless_alpha", "ok/lossless-alpha.webp", lambda: j.webp_bytes(300, 200, lossless=True, alpha=True),
            format="webp", mode="RGBA"),
        _ok("webp_animated", "ok/animated.webp", lambda: j.webp_bytes(120, 80, frames=3), format="webp", frames=3),
        _ok("gif_static", "ok/static.gif", lambda: j.gif_bytes(120, 80), format="gif", frames=1),
        _ok("gif_animated", "ok/animated.gif", lambda: j.gif_bytes(120, 80, frames=4, transparency=True),
            format="gif", frames=4),
        _ok("tiff_lzw", "ok/lzw.tif", lambda: j.tiff_bytes(200, 100, compression="tiff_lzw"), format="tiff"),
        _ok("tiff_16bit", "ok/sixteen-bit.tif", lambda: j.tiff_bytes(200, 100, mode="I;16"), format="tiff",
            width=200, height=100),
        _ok("tiff_cmyk", "ok/cmyk.tif", lambda: j.tiff_bytes(200, 100, mode="CMYK"), format="tiff", mode="CMYK"),
        _ok("bmp", "ok/plain.bmp", lambda: j.bmp_bytes(200, 100), format="bmp", width=200),
        _ok("heic", "ok/phone.heic", lambda: j.heic_bytes(200, 100), format="heic", width=200, height=100),
    ]
    avif_expect, avif_code = _avif_expectation()
    kinds.append(Kind("avif", "ok/modern.avif", lambda: j.avif_bytes(200, 100), avif_expect, avif_code,
                      {"format": "avif", "width": 200, "height": 100} if avif_expect == "ok" else {}))
    # --- EXIF orientation 1-8: stored 80x40, reported as the viewer sees it
    for o in range(1, 9):
        w, h = (40, 80) if o >= 5 else (80, 40)
        kinds.append(_ok(f"exif_orientation_{o}", f"orientation/o{o}.jpg", lambda o=o: j.oriented_jpeg(o),  # type: ignore[misc]
                         format="jpeg", width=w, height=h))
    kinds += [
        # --- metadata that is broken or enormous: the image is still processed
        _ok("exif_malformed", "meta/bad-exif.jpg", malformed_exif_jpeg, format="jpeg", width=160),
        _ok("exif_bad_orientation", "meta/orientation-9.jpg", exif_bad_orientation_jpeg, width=160, height=120),
        _ok("icc_malformed", "meta/bad-icc.jpg", malformed_icc_jpeg, format="jpeg", width=160),
        _ok("icc_malformed_cmyk", "meta/bad-icc-cmyk.jpg", malformed_icc_cmyk_jpeg, format="jpeg", mode="CMYK"),
        _ok("huge_metadata", "meta/huge-exif.jpg", huge_exif_jpeg, format="jpeg", width=320),
        # --- keys: unicode, very long, spaces and '+', wrong extension
        _ok("unicode_key", "ключи/写真 ☃ café.jpg", lambda: j.jpeg_bytes(100, 80, seed=20), format="jpeg"),
        _ok("long_key", _long_key(), lambda: j.png_bytes(100, 80, seed=21), format="png"),
        _ok("key_spaces_plus", "keys/a b+c %2F d.png", lambda: j.png_bytes(100, 80, seed=22), format="png"),
        _ok("wrong_extension", "keys/really-a-png.jpg", lambda: j.png_bytes(100, 80, seed=23), format="png"),
        # --- polyglots that are still images: processed, derivatives re-encoded (the payload is dropped)
        _ok("polyglot_jpeg_zip", "poly/jpeg-zip.jpg", jpeg_zip_polyglot, payload="echo pwned", format="jpeg",
            width=200),
        # A GIF that is also JavaScript is a valid GIF (browsers show it): processed, the script dropped.
        _ok("polyglot_gif_js", "poly/gif-js.gif", gif_js_polyglot, payload="alert(document.domain)", format="gif",
            width=0x2A2F),
        # --- bombs within the limits: processed, memory bounded
        _ok("png_deflate_bomb_in_limits", "bomb/deflate-8000.png", png_deflate_bomb, format="png", width=8000),
        # --- empty, truncated, corrupt
        _err("zero_bytes", "bad/empty.jpg", lambda: b"", "bad_image"),
        _err("truncated_jpeg", "bad/truncated.jpg", lambda: j.truncated_jpeg(), "bad_image"),
        _err("truncated_png", "bad/truncated.png", lambda: j.truncated_png(), "bad_image"),
        _err("truncated_webp", "bad/truncated.webp", lambda: _cut(j.webp_bytes(300, 200), 0.5), "bad_image"),
        _err("truncated_gif", "bad/truncated.gif", lambda: _cut(j.gif_bytes(200, 150, frames=2), 0.3), "bad_image"),
        _err("truncated_tiff", "bad/truncated.tif", lambda: _cut(j.tiff_bytes(200, 150), 0.5), "bad_image"),
        _err("truncated_heic", "bad/truncated.heic", lambda: _cut(j.heic_bytes(200, 150), 0.5), "bad_image"),
        _err("corrupt_jpeg_header", "bad/corrupt-header.jpg", corrupt_jpeg_header, "bad_image"),
        _err("corrupt_png_crc", "bad/corrupt-crc.png", corrupt_png_crc, "bad_image"),
        _err("random_bytes", "bad/random.jpg", lambda: j.garbage_bytes(4096), "bad_image"),
        # --- not images
        _err("text_as_jpg", "bad/notes.jpg", j.text_as_jpg, "bad_image"),
        _err("html", "bad/page.png", lambda: HTML_PAGE, "bad_image"),
        _err("svg_with_script", "bad/vector.svg.png", lambda: SVG_WITH_SCRIPT, "unsupported_format"),
        _err("pdf", "bad/document.jpg", lambda: j.pdf_bytes(), "unsupported_format"),
        _err("psd", "bad/layers.png", j.psd_header, "unsupported_format"),
        _err("ico", "bad/favicon.png", lambda: j.ico_bytes(), "unsupported_format"),
        _err("polyglot_html_jpeg", "poly/html-jpeg.jpg", html_jpeg_polyglot, "bad_image"),
        _err("polyglot_pdf_jpeg", "poly/pdf-jpeg.jpg", pdf_jpeg_polyglot, "unsupported_format"),
        # --- decompression bombs and huge dimensions: refused from the header, before any pixel is decoded
        _err("png_bomb", "bomb/png-50000.png", lambda: j.png_bomb(), "image_too_large"),
        _err("gif_bomb", "bomb/gif-40000.gif", lambda: j.gif_bomb(), "image_too_large"),
        _err("webp_bomb", "bomb/webp-16384.webp", webp_bomb, "image_too_large"),
        _err("tiff_bomb", "bomb/tiff-100000.tif", tiff_bomb, "image_too_large"),
        _err("jpeg_huge_dimensions", "bomb/jpeg-65500.jpg", jpeg_huge_dimensions, "image_too_large"),
        _err("png_text_bomb", "bomb/ztxt-64mb.png", png_text_bomb, "bad_image"),
    ]
    return kinds


KINDS: list[Kind] = _kinds()


def write(out: Path, kinds: list[Kind] | None = None) -> dict[str, dict[str, Any]]:
    """Write the corpus under ``out`` (one file per kind at its key) and its manifest; return the manifest."""
    manifest: dict[str, dict[str, Any]] = {}
    for kind in kinds or KINDS:
        path = out.joinpath(*kind.key.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(kind.make())
        manifest[kind.name] = kind.entry()
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    manifest = write(args.out)
    print(f"{len(manifest)} kinds written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
