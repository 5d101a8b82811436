"""The backend behaviour suite's fixtures: one ``index`` fixture, parametrised over every backend.

Backends register a factory in :data:`BACKENDS`. The embedded SQLite backend always runs; server backends
(OpenSearch, Elasticsearch) run when their URL is in the environment, and are skipped with a reason
otherwise. Tests in this folder talk to the index only through :class:`pixdex.index.base.ImageIndex`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pixdex.index.base import ImageIndex
from pixdex.index.sqlite import SqliteIndex


@dataclass(frozen=True)
class Backend:
    """How to make a fresh, empty index for one test.

    ``make(tmp_path, name)`` returns an index that :meth:`ImageIndex.ensure` has prepared; ``name`` is unique
    per test, so server backends can use it as the index name and drop it in ``drop``.
    """

    make: Callable[[Path, str], ImageIndex] | None = None
    requires_env: str | None = None
    drop: Callable[[ImageIndex], None] | None = None
    # Made from the URL of the session's real OpenSearch node (the ``opensearch_node`` fixture).
    make_on_node: Callable[[str, str], ImageIndex] | None = None


def _make_sqlite(tmp_path: Path, name: str) -> ImageIndex:
    index = SqliteIndex(tmp_path / f"{name}.db")
    index.ensure()
    return index


def _make_opensearch(tmp_path: Path, name: str) -> ImageIndex:
    from .backends_search import make_opensearch  # imported only when a cluster is configured

    return make_opensearch(tmp_path, name)


def _make_elasticsearch(tmp_path: Path, name: str) -> ImageIndex:
    from .backends_search import make_elasticsearch

    return make_elasticsearch(tmp_path, name)


def _make_on_node(url: str, name: str) -> ImageIndex:
    from .backends_search import make_on_node

    return make_on_node(url, name)


def _drop_cluster(index: ImageIndex) -> None:
    from .backends_search import drop_cluster_index

    drop_cluster_index(index)


BACKENDS: dict[str, Backend] = {
    "sqlite": Backend(make=_make_sqlite),
    "opensearch-node": Backend(make_on_node=_make_on_node, drop=_drop_cluster),
    "opensearch": Backend(make=_make_opensearch, requires_env="OPENSEARCH_URL", drop=_drop_cluster),
    "elasticsearch": Backend(make=_make_elasticsearch, requires_env="ELASTICSEARCH_URL", drop=_drop_cluster),
}


def _backend_params() -> list[Any]:
    params = []
    for name, backend in BACKENDS.items():
        marks = []
        if backend.requires_env and not os.environ.get(backend.requires_env):
            marks.append(pytest.mark.skip(reason=f"{name}: set {backend.requires_env} to run against a server"))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """Where the SQLite-specific tests keep their index file."""
    return tmp_path / "index.db"


@pytest.fixture
def ix(path: Path) -> Iterator[SqliteIndex]:
    """A fresh embedded index, for the tests of SQLite internals (the behaviour suite uses ``index``)."""
    index = SqliteIndex(path)
    index.ensure()
    yield index
    index.close()


def make_index(request: pytest.FixtureRequest, backend: Backend, tmp_path: Path, name: str) -> ImageIndex:
    """A fresh index of one backend; the node backend starts (once) the session's OpenSearch node."""
    if backend.make_on_node is not None:
        return backend.make_on_node(request.getfixturevalue("opensearch_node"), name)
    assert backend.make is not None
    return backend.make(tmp_path, name)


@pytest.fixture(params=_backend_params())
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ImageIndex]:
    backend = BACKENDS[request.param]
    ix = make_index(request, backend, tmp_path, f"pixdex-test-{uuid.uuid4().hex[:12]}")
    try:
        yield ix
    finally:
        if backend.drop is not None:
            backend.drop(ix)
        ix.close()
