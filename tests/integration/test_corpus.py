"""The bad-input corpus through `pixdex ingest --in-process`: every kind gets its expected outcome, and the good
images of the same run complete. (The same corpus through the real stack: tests/e2e/test_corpus_stack.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pixdex.cli import main
from pixdex.document import document_id
from pixdex.index.sqlite import SqliteIndex
from pixdex.settings import Settings
from pixdex.storage import FolderStore
from tests.corpus import generate
from tests.corpus.outcomes import mismatches


def test_corpus_has_the_kinds_the_issue_names() -> None:
    names = {k.name for k in generate.KINDS}
    assert len(names) == len(generate.KINDS) >= 40
    for needed in ("zero_bytes", "truncated_jpeg", "truncated_png", "truncated_webp", "truncated_gif",
                   "truncated_tiff", "truncated_heic", "wrong_extension", "text_as_jpg", "html", "svg_with_script",
                   "png_bomb", "gif_bomb", "webp_bomb", "tiff_bomb", "jpeg_huge_dimensions", "jpeg_cmyk",
                   "png_16bit", "png_palette", "png_1bit", "png_rgba", "gif_animated", "webp_animated",
                   "exif_malformed", "icc_malformed", "huge_metadata", "unicode_key", "long_key", "key_spaces_plus",
                   *(f"exif_orientation_{o}" for o in range(1, 9))):
        assert needed in names, needed
    assert any(n.startswith("polyglot_") for n in names)
    assert len({k.key for k in generate.KINDS}) == len(generate.KINDS)


@pytest.mark.slow
def test_corpus_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus, data = tmp_path / "corpus", tmp_path / "data"
    manifest = generate.write(corpus)
    failing = sum(1 for e in manifest.values() if e["expect"] == "error")

    rc = main(["ingest", "--in-process", str(corpus), "--data", str(data)])

    out = capsys.readouterr()
    assert rc == 1  # some images failed, and said so; nothing crashed
    assert f"{len(manifest) - failing} of {len(manifest)} images indexed" in out.out
    settings = Settings.from_env({"PIXDEX_DATA_DIR": str(data)})
    store = FolderStore(data / "s3")
    with SqliteIndex(data / "index.db") as index:
        problems = mismatches(
            manifest,
            lambda key: index.get(document_id(settings.originals_bucket, key)),
            lambda key: store.get(settings.derivatives_bucket, key)[0],
        )
        assert problems == []
        assert index.count() == len(manifest)
    # Every original is kept under its exact key, however long or unusual.
    assert set(store.list_keys(settings.originals_bucket)) == {e["key"] for e in manifest.values()}
    assert json.loads((corpus / "manifest.json").read_text()) == manifest
