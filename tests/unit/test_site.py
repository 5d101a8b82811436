"""The web page's files as pixdex serves them: only the packaged files, with their types and a strict policy."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pixdex.site import WEB_DIR, StaticSite, config


def test_serves_the_packaged_files_and_the_index_at_the_root() -> None:
    site = StaticSite(connect_origins=("http://127.0.0.1:4566",))
    root, index = site.get("/"), site.get("/index.html")
    assert root is not None and root is index and root.content_type.startswith("text/html")
    js, css = site.get("/app.js"), site.get("/app.css")
    assert js is not None and js.content_type.startswith("text/javascript")
    assert css is not None and css.content_type.startswith("text/css")
    cfg = site.get("/config.json")
    assert cfg is not None and json.loads(cfg.body) == {"api": "", "auth": None}
    headers = site.headers(root)
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "http://127.0.0.1:4566" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", ["/../site.py", "/web/app.js", "/%2e%2e/site.py", "/missing.js", "//app.js"])
def test_nothing_outside_the_folder_or_not_in_it_is_served(path: str) -> None:
    assert StaticSite().get(path) is None


def test_the_page_loads_nothing_from_elsewhere() -> None:
    # No CDN: every src/href in the page and every url() in the styles is a relative path of ours.
    html = (WEB_DIR / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"#]+)"', html)
    assert refs and all("//" not in r and (WEB_DIR / r).is_file() for r in refs), refs
    assert "url(" not in (WEB_DIR / "app.css").read_text()
    assert "import " not in (WEB_DIR / "app.js").read_text()


def test_site_config_carries_the_api_and_sign_in(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<!doctype html>")
    auth = {"type": "cognito", "region": "eu-west-1", "client_id": "abc"}
    site = StaticSite(tmp_path, site_config=config("https://api.example", auth))
    cfg = site.get("/config.json")
    assert cfg is not None and json.loads(cfg.body) == {"api": "https://api.example", "auth": auth}


def test_a_package_without_its_web_files_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="web files"):
        StaticSite(tmp_path)
