"""FolderStore keeps S3's whole key space: keys up to 1024 bytes, unicode, '+', '%', '~'."""

from __future__ import annotations

from pathlib import Path

from pixdex.storage import FolderStore


def test_long_and_odd_keys_round_trip(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    keys = [
        "long/" + "/".join(c * 240 for c in "abcd") + "/x.png",   # 1000+ characters
        "写真/" + "雪" * 300 + ".jpg",                              # 900+ bytes of UTF-8, 2700+ quoted
        "a b+c %2F d.png",
        "~tilde.png",
        "%%looks-hashed.png",
    ]
    for i, key in enumerate(keys):
        store.put("b", key, bytes([i]) * 10, content_type="image/png")
    assert store.list_keys("b") == sorted(keys)
    for i, key in enumerate(keys):
        data, head = store.get("b", key)
        assert data == bytes([i]) * 10 and head.key == key and head.content_type == "image/png"
    store.delete("b", keys[0])
    assert keys[0] not in store.list_keys("b")
    assert all(len(p.name) <= 255 for p in (tmp_path / "b").iterdir())
