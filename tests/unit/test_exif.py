"""EXIF -> document fields, with hostile and malformed input."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, TiffImagePlugin

from pixdex import imaging
from pixdex.exif import FIELDS, camera_name, extract_exif
from pixdex.settings import ImageLimits
from tests import imagegen


def _through_jpeg(exif: Image.Exif) -> Image.Exif:
    """Write the EXIF into a real JPEG and read it back, as the pipeline sees it."""
    decoded = imaging.decode(imagegen.jpeg_bytes(32, 24, exif=exif), ImageLimits())
    assert decoded.exif is not None
    return decoded.exif


def test_all_fields_from_a_camera_jpeg() -> None:
    exif = imagegen.exif_with_gps(
        -33.8568, 151.2153, make="NIKON CORPORATION", model="NIKON D750", taken_at="2023:07:14 18:22:05",
        offset="+10:00", orientation=6, lens="24.0-120.0 mm f/4.0", software="Adobe Lightroom 13.0",
    )
    fields = extract_exif(_through_jpeg(exif), store_gps=True)
    assert fields == {
        "camera_make": "NIKON CORPORATION",
        "camera_model": "NIKON D750",
        "camera": "NIKON D750",
        "taken_at": "2023-07-14T18:22:05+10:00",
        "gps": {"lat": pytest.approx(-33.8568, abs=1e-6), "lon": pytest.approx(151.2153, abs=1e-6)},
        "orientation": 6,
        "exif_text": "NIKON CORPORATION D750 24.0-120.0 mm f/4.0 Adobe Lightroom 13.0",
    }


def test_gps_is_dropped_when_not_stored() -> None:
    fields = extract_exif(_through_jpeg(imagegen.exif_with_gps()), store_gps=False)
    assert fields["gps"] is None
    assert fields["camera"] == "Canon EOS 5D"


def test_no_exif_gives_every_field_as_none() -> None:
    assert extract_exif(None, store_gps=True) == dict.fromkeys(FIELDS)
    assert extract_exif(Image.Exif(), store_gps=True) == dict.fromkeys(FIELDS)


@pytest.mark.parametrize(("make", "model", "expected"), [
    ("Canon", "Canon EOS 5D", "Canon EOS 5D"),
    ("NIKON CORPORATION", "NIKON D750", "NIKON D750"),
    ("Apple", "iPhone 15 Pro", "Apple iPhone 15 Pro"),
    ("SONY", "ILCE-7M3", "SONY ILCE-7M3"),
    ("FUJIFILM", "X-T4", "FUJIFILM X-T4"),
    ("OLYMPUS IMAGING CORP.", "E-M10", "OLYMPUS IMAGING CORP. E-M10"),
    ("canon", "Canon PowerShot G7 X", "Canon PowerShot G7 X"),
    ("Canon", None, "Canon"),
    (None, "EOS R5", "EOS R5"),
    (None, None, None),
])
def test_camera_name_deduplicates_make(make: str | None, model: str | None, expected: str | None) -> None:
    assert camera_name(make, model) == expected


@pytest.mark.parametrize(("original", "offset", "expected"), [
    ("2023:07:14 18:22:05", "+02:00", "2023-07-14T18:22:05+02:00"),
    ("2023:07:14 18:22:05", "-05:30", "2023-07-14T18:22:05-05:30"),
    ("2023:07:14 18:22:05", None, "2023-07-14T18:22:05"),
    ("2023:07:14 18:22:05", "garbage", "2023-07-14T18:22:05"),
    ("2023:07:14 18:22:05", "+25:00", "2023-07-14T18:22:05"),
    ("2023-07-14 18:22:05", None, "2023-07-14T18:22:05"),
    ("2023:07:14 18:22:05.123", None, "2023-07-14T18:22:05"),
    ("0000:00:00 00:00:00", None, None),
    ("2023:13:45 25:61:61", None, None),
    ("    :  :     :  :  ", None, None),
    ("yesterday", None, None),
])
def test_taken_at(original: str, offset: str | None, expected: str | None) -> None:
    exif = imagegen.exif_with_gps(None, None, taken_at=original, offset=offset)
    assert extract_exif(_through_jpeg(exif), store_gps=True)["taken_at"] == expected


def test_taken_at_falls_back_to_digitized() -> None:
    exif = imagegen.exif_with_gps(None, None, taken_at=None, offset=None)
    sub = exif.get_ifd(0x8769)
    sub[0x9004] = "2020:02:29 07:00:00"
    sub[0x9012] = "+01:00"
    assert extract_exif(_through_jpeg(exif), store_gps=True)["taken_at"] == "2020-02-29T07:00:00+01:00"


@pytest.mark.parametrize(("lat", "lon"), [(48.8584, 2.2945), (-33.8568, 151.2153), (40.6892, -74.0445),
                                          (-22.9519, -43.2105), (89.9999, 179.9999)])
def test_gps_signs_from_refs(lat: float, lon: float) -> None:
    gps = extract_exif(_through_jpeg(imagegen.exif_with_gps(lat, lon)), store_gps=True)["gps"]
    assert gps == {"lat": pytest.approx(lat, abs=1e-6), "lon": pytest.approx(lon, abs=1e-6)}


def _gps_exif(**tags: object) -> Image.Exif:
    exif = Image.Exif()
    gps = exif.get_ifd(0x8825)
    gps.update({int(k.removeprefix("t")): v for k, v in tags.items()})
    return exif


R = TiffImagePlugin.IFDRational


@pytest.mark.parametrize(("label", "tags", "expected"), [
    ("no refs: positive", {"t2": (R(10), R(30), R(0)), "t4": (R(20), R(15), R(0))}, {"lat": 10.5, "lon": 20.25}),
    ("bad ref", {"t1": "X", "t2": (R(10), R(0), R(0)), "t3": "E", "t4": (R(20), R(0), R(0))}, None),
    ("latitude over 90", {"t1": "N", "t2": (R(91), R(0), R(0)), "t3": "E", "t4": (R(20), R(0), R(0))}, None),
    ("longitude over 180", {"t1": "N", "t2": (R(1), R(0), R(0)), "t3": "E", "t4": (R(181), R(0), R(0))}, None),
    ("zero denominator", {"t1": "N", "t2": (R(1, 0), R(0), R(0)), "t3": "E", "t4": (R(2), R(0), R(0))}, None),
    ("null island", {"t1": "N", "t2": (R(0), R(0), R(0)), "t3": "E", "t4": (R(0), R(0), R(0))}, None),
    ("void fix", {"t9": "V", "t1": "N", "t2": (R(1), R(0), R(0)), "t3": "E", "t4": (R(2), R(0), R(0))}, None),
    ("missing longitude", {"t1": "N", "t2": (R(1), R(0), R(0))}, None),
    ("negative minutes", {"t1": "N", "t2": (R(1), R(-5), R(0)), "t3": "E", "t4": (R(2), R(0), R(0))}, None),
    ("strings instead of numbers", {"t1": "N", "t2": ("a", "b", "c"), "t3": "E", "t4": (R(2), R(0), R(0))}, None),
    ("too many parts", {"t1": "N", "t2": (1, 2, 3, 4), "t3": "E", "t4": (R(2), R(0), R(0))}, None),
    ("single decimal number", {"t1": "S", "t2": 12.5, "t3": "W", "t4": Fraction(1, 4)}, {"lat": -12.5, "lon": -0.25}),
    ("bytes refs", {"t1": b"S\x00", "t2": (R(1), R(0), R(0)), "t3": b"W", "t4": (R(2), R(0), R(0))},
     {"lat": -1.0, "lon": -2.0}),
])
def test_gps_validation(label: str, tags: dict[str, object], expected: dict[str, float] | None) -> None:
    assert extract_exif(_gps_exif(**tags), store_gps=True)["gps"] == expected


@pytest.mark.parametrize(("value", "expected"), [(1, 1), (8, 8), (0, None), (9, None), ("6", None), (None, None)])
def test_orientation(value: object, expected: int | None) -> None:
    exif = Image.Exif()
    if value is not None:
        exif[0x0112] = value
    assert extract_exif(exif, store_gps=True)["orientation"] == expected


def test_odd_types_and_padding_are_tolerated() -> None:
    exif = Image.Exif()
    exif[0x010F] = b"Canon\x00\x00\x00   "
    exif[0x0110] = 12345  # a number where text belongs
    exif[0x0131] = "GIMP\x002.10"
    sub = exif.get_ifd(0x8769)
    sub[0x9003] = (2023, 7, 14)
    sub[0xA434] = "EF 50mm\tf/1.8 \x07II"
    fields = extract_exif(exif, store_gps=True)
    assert fields["camera_make"] == "Canon"
    assert fields["camera_model"] is None
    assert fields["camera"] == "Canon"
    assert fields["taken_at"] is None
    assert fields["exif_text"] == "Canon EF 50mm f/1.8 II GIMP 2.10"


def test_exif_text_deduplicates_words() -> None:
    exif = imagegen.exif_with_gps(None, None, make="Canon", model="Canon EOS 5D", lens="Canon EF 24-70mm",
                                  software="Canon DPP")
    assert extract_exif(exif, store_gps=True)["exif_text"] == "Canon EOS 5D EF 24-70mm DPP"


def test_long_values_are_cut() -> None:
    exif = Image.Exif()
    exif[0x010F] = "A" * 5000
    assert len(extract_exif(exif, store_gps=True)["camera_make"]) == 200


def _valid_exif_bytes() -> bytes:
    exif = imagegen.exif_with_gps(make="Canon", model="Canon EOS 5D", lens="EF 50mm", orientation=3)
    return bytes(exif.tobytes())


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about every corrupt tag it skips
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_corrupted_exif_never_raises(data: st.DataObject) -> None:
    raw = bytearray(_valid_exif_bytes())
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)), max_size=12))
    for pos, value in flips:
        raw[pos] = value
    cut = data.draw(st.integers(8, len(raw)))
    exif = Image.Exif()
    try:
        exif.load(bytes(raw[:cut]))
    except Exception:
        return  # Pillow itself refused the block; extraction only ever sees what loads
    fields = extract_exif(exif, store_gps=True)
    assert set(fields) == set(FIELDS)
    gps = fields["gps"]
    if gps is not None:
        assert -90 <= gps["lat"] <= 90 and -180 <= gps["lon"] <= 180
    assert fields["orientation"] in (None, *range(1, 9))
