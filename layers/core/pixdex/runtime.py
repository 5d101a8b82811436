"""What a Lambda container (or the local stack) builds once and reuses across invocations."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

from pixdex.index import open_index
from pixdex.index.base import ImageIndex
from pixdex.pipeline import Pipeline
from pixdex.settings import Settings
from pixdex.storage import ObjectStore, S3Store, s3_client


@dataclass
class Runtime:
    settings: Settings

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Runtime:
        return cls(Settings.from_env(env))

    @cached_property
    def store(self) -> ObjectStore:
        return S3Store(s3_client(self.settings))

    @cached_property
    def index(self) -> ImageIndex:
        return open_index(self.settings)

    @cached_property
    def pipeline(self) -> Pipeline:
        return Pipeline(self.settings, self.store, self.index)
