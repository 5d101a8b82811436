"""EXIF -> document fields. EXIF is whatever the uploader's camera or editor wrote, so nothing is trusted:
every tag is type-checked and range-checked, and a bad tag becomes a missing field, never an exception.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final, TypeVar

from PIL import Image

# Tag ids (EXIF 2.32 / TIFF 6). Named here so the module does not depend on PIL.ExifTags spellings.
_MAKE: Final = 0x010F
_MODEL: Final = 0x0110
_ORIENTATION: Final = 0x0112
_SOFTWARE: Final = 0x0131
_EXIF_IFD: Final = 0x8769
_GPS_IFD: Final = 0x8825
_DATETIME_ORIGINAL: Final = 0x9003
_DATETIME_DIGITIZED: Final = 0x9004
_OFFSET_TIME_ORIGINAL: Final = 0x9011
_OFFSET_TIME_DIGITIZED: Final = 0x9012
_LENS_MAKE: Final = 0xA433
_LENS_MODEL: Final = 0xA434
_GPS_LAT_REF: Final = 1
_GPS_LAT: Final = 2
_GPS_LON_REF: Final = 3
_GPS_LON: Final = 4
_GPS_STATUS: Final = 9

_MAX_TEXT: Final = 200
_DATETIME_RE: Final = re.compile(r"^\s*(\d{4})[:-](\d{2})[:-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET_RE: Final = re.compile(r"^\s*([+-])(\d{2}):(\d{2})\s*$")

FIELDS: Final = ("camera_make", "camera_model", "camera", "taken_at", "gps", "orientation", "exif_text")

T = TypeVar("T")


def extract_exif(exif: Image.Exif | None, *, store_gps: bool) -> dict[str, Any]:
    """Document fields from an EXIF block; every key of FIELDS is present (None when unknown)."""
    out: dict[str, Any] = dict.fromkeys(FIELDS)
    if exif is None:
        return out
    empty: dict[int, Any] = {}
    base: dict[int, Any] = _safe(lambda: dict(exif.items()), empty)
    sub = _ifd(exif, _EXIF_IFD)
    make = _text(base.get(_MAKE))
    model = _text(base.get(_MODEL))
    out["camera_make"] = make
    out["camera_model"] = model
    out["camera"] = camera_name(make, model)
    out["taken_at"] = (_taken_at(sub.get(_DATETIME_ORIGINAL), sub.get(_OFFSET_TIME_ORIGINAL))
                       or _taken_at(sub.get(_DATETIME_DIGITIZED), sub.get(_OFFSET_TIME_DIGITIZED)))
    orientation = base.get(_ORIENTATION)
    out["orientation"] = orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else None
    if store_gps:
        out["gps"] = _gps(_ifd(exif, _GPS_IFD))
    words = [make, model, _text(sub.get(_LENS_MAKE)), _text(sub.get(_LENS_MODEL)), _text(base.get(_SOFTWARE))]
    out["exif_text"] = _words(words)
    return out


def camera_name(make: str | None, model: str | None) -> str | None:
    """'Canon' + 'Canon EOS 5D' -> 'Canon EOS 5D'; 'NIKON CORPORATION' + 'NIKON D750' -> 'NIKON D750'."""
    if not make:
        return model or None
    if not model:
        return make
    lower_model = model.lower()
    first_word = make.split()[0].lower()
    if lower_model.startswith(make.lower()) or lower_model.startswith(first_word):
        return model
    return f"{make} {model}"


def _safe(fn: Callable[[], T], default: T) -> T:
    try:
        return fn()
    except Exception:  # malformed EXIF can raise almost anything inside Pillow's parser
        return default


def _ifd(exif: Image.Exif, tag: int) -> dict[int, Any]:
    empty: dict[int, Any] = {}
    value: dict[int, Any] = _safe(lambda: exif.get_ifd(tag), empty)
    return value if isinstance(value, dict) else empty


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return None
    # NUL padding, tabs and control characters all become word breaks.
    cleaned = " ".join("".join(ch if ch.isprintable() else " " for ch in value).split())
    return cleaned[:_MAX_TEXT] or None


def _words(parts: list[str | None]) -> str | None:
    seen: set[str] = set()
    words: list[str] = []
    for part in parts:
        for word in (part or "").split():
            key = word.lower()
            if key not in seen:
                seen.add(key)
                words.append(word)
    return " ".join(words) or None


def _taken_at(value: object, offset: object) -> str | None:
    text = _text(value)
    if text is None:
        return None
    match = _DATETIME_RE.match(text)
    if match is None:
        return None
    try:
        year, month, day, hour, minute, second = (int(g) for g in match.groups())
        # EXIF times are the camera's local time; the offset, when recorded, is appended below.
        moment = datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None  # 0000:00:00 00:00:00 and other impossible dates
    iso = moment.isoformat()
    offset_text = _text(offset)
    if offset_text is not None:
        found = _OFFSET_RE.match(offset_text)
        if found is not None and int(found.group(2)) <= 14 and int(found.group(3)) < 60:
            iso += f"{found.group(1)}{found.group(2)}:{found.group(3)}"
    return iso


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]  # IFDRational, int, float, Fraction
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _degrees(value: object) -> float | None:
    """EXIF GPS coordinates are (degrees, minutes, seconds) rationals; some writers store one number."""
    if isinstance(value, (tuple, list)):
        if not 1 <= len(value) <= 3:
            return None
        parts = [_number(v) for v in value]
        if any(p is None or p < 0 for p in parts):
            return None
        total = 0.0
        for part, scale in zip(parts, (1.0, 60.0, 3600.0), strict=False):
            assert part is not None  # checked above; narrows the type
            total += part / scale
        return total
    number = _number(value)
    return abs(number) if number is not None else None


def _ref(value: object) -> str | None:
    text = _text(value)
    return text.upper()[:1] if text else None


def _gps(gps: dict[int, Any]) -> dict[str, float] | None:
    if not gps:
        return None
    if _ref(gps.get(_GPS_STATUS)) == "V":
        return None  # the receiver marked this fix void
    lat = _degrees(gps.get(_GPS_LAT))
    lon = _degrees(gps.get(_GPS_LON))
    if lat is None or lon is None:
        return None
    lat_ref = _ref(gps.get(_GPS_LAT_REF))
    lon_ref = _ref(gps.get(_GPS_LON_REF))
    if lat_ref not in (None, "N", "S") or lon_ref not in (None, "E", "W"):
        return None
    if lat_ref == "S":
        lat = -lat
    if lon_ref == "W":
        lon = -lon
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return None
    if lat == 0.0 and lon == 0.0:
        return None  # cameras without a fix write zeros; (0, 0) is open sea
    return {"lat": round(lat, 7), "lon": round(lon, 7)}
