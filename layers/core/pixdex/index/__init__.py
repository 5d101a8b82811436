"""Index backends behind one port (pixdex.index.base.ImageIndex), chosen by the index URL's scheme."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from pixdex.index.base import ImageIndex
from pixdex.settings import Settings


def open_index(settings: Settings) -> ImageIndex:
    """sqlite:///abs/path.db -> the embedded backend; http(s)://... -> a search cluster."""
    url = urlparse(settings.index_url)
    if url.scheme == "sqlite":
        from pixdex.index.sqlite import SqliteIndex

        path = Path(url.path) if url.netloc in ("", "localhost") else Path(url.netloc + url.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        index = SqliteIndex(path)
        index.ensure()
        return index
    if url.scheme in ("http", "https"):
        from pixdex.index.clusters import cluster_options, open_cluster_index

        return open_cluster_index(cluster_options(settings))
    raise ValueError(f"unsupported index URL scheme {url.scheme!r} in {settings.index_url!r}")
