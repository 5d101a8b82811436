"""What a Lambda container (or the local stack) builds once and reuses across invocations.

Parts are created on first use, so a cold start pays only for what its first request needs (the query
function that answers a keyword search never loads a model); tests and benchmarks hand in their own parts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pixdex.index import open_index
from pixdex.index.base import ImageIndex
from pixdex.jobs import BatchJobs, JobSubmitter
from pixdex.pipeline import Pipeline
from pixdex.query import QueryEmbedder
from pixdex.requeue import Requeuer, SqsRequeuer
from pixdex.settings import Settings
from pixdex.storage import ObjectStore, s3_store

if TYPE_CHECKING:
    from pixdex.models.analysis import ImageAnalyzer, ModelSettings

_UNSET = object()


class Runtime:
    def __init__(self, settings: Settings, *, store: ObjectStore | None = None,
                 index: ImageIndex | None = None, embedder: QueryEmbedder | object | None = _UNSET,
                 route_heavy: bool = True, requeuer: Requeuer | None = None) -> None:
        self.settings = settings
        # The GPU task builds its runtime with route_heavy=False: it is where heavy work goes.
        self.route_heavy = route_heavy
        self._store = store
        self._index = index
        self._embedder = embedder
        self._analyzer: ImageAnalyzer | object | None = _UNSET
        self._pipeline: Pipeline | None = None
        self._requeuer = requeuer

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
    def analyzer(self) -> ImageAnalyzer | None:
        """The models, or None when every capability is switched off."""
        if self._analyzer is _UNSET:
            self._analyzer = None
            if self.settings.capabilities:
                from pixdex.models.analysis import ImageAnalyzer

                self._analyzer = ImageAnalyzer(model_settings(self.settings))
        return self._analyzer  # type: ignore[return-value]

    @property
    def embedder(self) -> QueryEmbedder | None:
        """Turns query text into vectors: the caption text model (and CLIP's text tower when present).
        None when captions are switched off, which leaves keyword search only."""
        if self._embedder is _UNSET:
            self._embedder = self.analyzer if "caption" in self.settings.capabilities else None
        return self._embedder  # type: ignore[return-value]

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            self._pipeline = Pipeline(self.settings, self.store, self.index, analyzer=lambda: self.analyzer,
                                      jobs=self._jobs())
        return self._pipeline


    @property
    def requeuer(self) -> Requeuer:
        """Puts a message back on its queue during an outage (built on the first outage)."""
        if self._requeuer is None:
            import boto3

            self._requeuer = SqsRequeuer(boto3.client("sqs", region_name=self.settings.aws_region,
                                                      endpoint_url=self.settings.aws_endpoint_url))
        return self._requeuer

    def _jobs(self) -> JobSubmitter | None:
        s = self.settings
        if not (self.route_heavy and s.routes_to_gpu and s.batch_job_queue and s.batch_job_definition):
            return None
        import boto3

        client = boto3.client("batch", region_name=s.aws_region, endpoint_url=s.aws_endpoint_url)
        return BatchJobs(client, queue=s.batch_job_queue, definition=s.batch_job_definition)


def model_settings(settings: Settings) -> ModelSettings:
    from pixdex.models.analysis import ModelSettings

    caps = set(settings.capabilities)
    base = ModelSettings()
    return ModelSettings(
        model_dir=settings.model_dir or base.model_dir,
        classify="classify" in caps, embed="embed" in caps, caption="caption" in caps, ocr="ocr" in caps,
        faces="faces" in caps, safety="safety" in caps, clip="clip" in caps,
        intra_op_threads=settings.model_threads, providers=settings.model_providers,
        batch_size=settings.model_batch_size, crop_vector_fraction=settings.crop_vector_fraction,
    )
