from __future__ import annotations

from pathlib import Path

import pytest

from pixdex.settings import Settings


def test_defaults_and_round_trip(tmp_path: Path) -> None:
    s = Settings.from_env({"PIXDEX_DATA_DIR": str(tmp_path)})
    assert s.index_url == f"sqlite:///{(tmp_path / 'index.db').resolve()}"
    assert s.derivatives.thumbnail_size == 256 and s.derivatives.preview_size == 1280
    assert s.derivatives.format == "webp"
    assert Settings.from_env(s.to_env()) == s


def test_values_are_typed_and_checked() -> None:
    s = Settings.from_env({"PIXDEX_THUMBNAIL_SIZE": "128", "PIXDEX_DERIVATIVE_FORMAT": "AVIF",
                           "PIXDEX_STORE_GPS": "no", "AWS_ENDPOINT_URL": "http://127.0.0.1:4566"})
    assert s.derivatives.thumbnail_size == 128 and s.derivatives.format == "avif"
    assert s.store_gps is False and s.aws_endpoint_url == "http://127.0.0.1:4566"
    for bad in ({"PIXDEX_THUMBNAIL_SIZE": "big"}, {"PIXDEX_THUMBNAIL_SIZE": "-1"},
                {"PIXDEX_DERIVATIVE_FORMAT": "bmp"}, {"PIXDEX_STORE_GPS": "maybe"}):
        with pytest.raises(ValueError, match="PIXDEX_"):
            Settings.from_env(bad)


def test_pixdex_up_hands_its_environment_settings_to_the_functions() -> None:
    from pixdex.local.stack import inherited_settings

    environ = {"PIXDEX_INDEX_UPDATE_MODE": "merge", "PIXDEX_INDEX_URL": "http://127.0.0.1:9200",
               "PIXDEX_ORIGINALS_BUCKET": "mine", "PIXDEX_DATA_DIR": "/elsewhere", "HOME": "/root"}
    assert inherited_settings(environ) == {"PIXDEX_INDEX_UPDATE_MODE": "merge",
                                           "PIXDEX_INDEX_URL": "http://127.0.0.1:9200"}
    # --index-url on the command line wins over the environment's URL.
    assert inherited_settings(environ, index_url_given=True) == {"PIXDEX_INDEX_UPDATE_MODE": "merge"}


def test_the_crop_vector_fraction_is_a_fraction_and_reaches_the_models() -> None:
    from pixdex.runtime import model_settings

    assert Settings().crop_vector_fraction == 0.75
    off = Settings.from_env({"PIXDEX_CROP_VECTOR_FRACTION": "0"})
    assert off.crop_vector_fraction == 0.0 and model_settings(off).crop_vector_fraction == 0.0
    assert model_settings(Settings.from_env({"PIXDEX_CROP_VECTOR_FRACTION": "0.6"})).crop_vector_fraction == 0.6
    for bad in ("1", "1.5", "-0.1", "most"):
        with pytest.raises(ValueError, match="PIXDEX_CROP_VECTOR_FRACTION"):
            Settings.from_env({"PIXDEX_CROP_VECTOR_FRACTION": bad})
