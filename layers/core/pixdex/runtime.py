"""What a Lambda container (or the local stack) builds once and reuses across invocations.

Parts are created on first use, so a cold start pays only for what its first request needs; tests and
benchmarks hand in their own parts instead."""

from __future__ import annotations

from collections.abc import Mapping

from pixdex.index import open_index
from pixdex.index.base import ImageIndex
from pixdex.pipeline import Pipeline
from pixdex.query import QueryEmbedder
from pixdex.settings import Settings
from pixdex.storage import ObjectStore, s3_store


class Runtime:
    def __init__(self, settings: Settings, *, store: ObjectStore | None = None,
                 index: ImageIndex | None = None, embedder: QueryEmbedder | None = None) -> None:
        self.settings = settings
        self._store = store
        self._index = index
        self._embedder = embedder
        self._pipeline: Pipeline | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Runtime:
        return cls(Settings.from_env(env))

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            self._store = s3_store(self.settings)
        return self._store

    @property
    def index(self) -> ImageIndex:
        if self._index is None:
            self._index = open_index(self.settings)
        return self._index

    @property
    def embedder(self) -> QueryEmbedder | None:
        """What turns query text into vectors; None where no text model is available (keyword search only)."""
        return self._embedder

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            self._pipeline = Pipeline(self.settings, self.store, self.index)
        return self._pipeline
