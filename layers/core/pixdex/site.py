"""The web page's files (package data under pixdex/web/) and the config.json that tells the page where the API is.

The same files are served by `pixdex up` at the API's root and uploaded to the site bucket in AWS, where
CloudFront answers /config.json itself (template.yaml's SiteConfigFunction)."""

from __future__ import annotations

import json
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

WEB_DIR: Final = Path(__file__).resolve().parent / "web"
INDEX: Final = "index.html"
CONFIG: Final = "config.json"
# The page's own files change with the package; a browser should always ask again (they are small).
CACHE_CONTROL: Final = "no-cache"
# No inline script and nothing from another origin except the API and the buckets' presigned URLs.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; img-src 'self' {origins} blob: data:; connect-src 'self' {origins}; "
    "style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_TYPES: Final = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml", ".json": "application/json"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str


def config(api: str = "", auth: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the page reads from config.json: the API's base URL ('' for its own origin) and how to sign in
    (None: no sign-in; {"type": "cognito", "region", "client_id"}; {"type": "token"}: paste a JWT)."""
    return {"api": api, "auth": auth}


class StaticSite:
    """The page's files, read once: a request can only ever name one of them (no path is joined)."""

    def __init__(self, root: Path = WEB_DIR, *, site_config: dict[str, Any] | None = None,
                 connect_origins: tuple[str, ...] = ()) -> None:
        self.assets: dict[str, Asset] = {}
        for path in sorted(root.iterdir()):
            if path.is_file():
                ctype = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                self.assets["/" + path.name] = Asset(path.read_bytes(), ctype)
        if "/" + INDEX not in self.assets:
            raise FileNotFoundError(f"{root / INDEX} is missing: pixdex was installed without its web files")
        self.assets["/"] = self.assets["/" + INDEX]
        body = json.dumps(site_config if site_config is not None else config()).encode()
        self.assets["/" + CONFIG] = Asset(body, "application/json")
        self.csp = CONTENT_SECURITY_POLICY.format(origins=" ".join(connect_origins)).replace("  ", " ")

    def get(self, path: str) -> Asset | None:
        return self.assets.get(path)

    def headers(self, asset: Asset) -> dict[str, str]:
        return {
            "content-type": asset.content_type,
            "cache-control": CACHE_CONTROL,
            "x-content-type-options": "nosniff",
            "content-security-policy": self.csp,
            "referrer-policy": "no-referrer",
        }
