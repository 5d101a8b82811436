"""One typed settings object, built from the environment at the edge and passed in explicitly."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pixdex import constants as env_names
from pixdex.document import DEFAULT_TENANT

# What analyze runs. Faces are opt-in: face vectors are biometric data.
ALL_CAPABILITIES: tuple[str, ...] = ("classify", "embed", "caption", "ocr", "safety", "faces", "clip")
DEFAULT_CAPABILITIES: tuple[str, ...] = ("classify", "embed", "caption", "ocr", "safety", "clip")

DerivativeFormat = Literal["webp", "jpeg", "png", "avif"]
DERIVATIVE_FORMATS: tuple[DerivativeFormat, ...] = ("webp", "jpeg", "png", "avif")


@dataclass(frozen=True)
class ImageLimits:
    """Limits checked before a full decode, so decompression bombs never expand in memory."""

    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 100_000_000


@dataclass(frozen=True)
class DerivativeSettings:
    thumbnail_size: int = 256
    preview_size: int = 1280
    format: DerivativeFormat = "webp"
    quality: int = 80
    # Lossless sources (PNG, GIF, BMP, lossless WebP) at or under this many pixels keep a lossless
    # derivative: screenshots and line art blur badly under lossy codecs and stay small anyway.
    lossless_max_pixels: int = 4_000_000


@dataclass(frozen=True)
class ClusterSettings:
    """How to talk to an OpenSearch / Elasticsearch cluster (ignored by the embedded index)."""

    engine: str = "auto"               # auto | opensearch | elasticsearch
    aws_service: str | None = None     # es | aoss; None: from the host name
    timeout_s: float = 10.0
    max_retries: int = 3
    refresh: str | None = None         # wait_for | false; None: wait_for, false on Serverless
    update_mode: str = "script"        # script | merge (clusters with scripting off)
    verify_certs: bool = True
    ca_certs: str | None = None
    knn_m: int = 16
    knn_ef_construction: int = 128
    knn_ef_search: int = 128
    knn_hamming: bool = True
    # faiss (AWS domains) | lucene (pure Java: the local node, whose k-NN artifact has no faiss library)
    knn_engine: str = "faiss"


@dataclass(frozen=True)
class Settings:
    originals_bucket: str = "pixdex-originals"
    derivatives_bucket: str = "pixdex-derivatives"
    # sqlite:///abs/path.db (embedded) or http(s)://host (OpenSearch / Elasticsearch).
    index_url: str = "sqlite:///.pixdex/index.db"
    index_name: str = "pixdex-images"
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    data_dir: Path = Path(".pixdex")
    model_dir: Path | None = None
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    model_threads: int = 0  # 0: onnxruntime decides (all cores)
    model_providers: tuple[str, ...] = ("auto",)  # auto: CUDA when present, else CPU
    model_batch_size: int = 16
    # Images over this many pixels are analysed by the GPU batch task instead of in Lambda (0: never).
    gpu_pixel_threshold: int = 0
    batch_job_queue: str | None = None
    batch_job_definition: str | None = None
    limits: ImageLimits = field(default_factory=ImageLimits)
    derivatives: DerivativeSettings = field(default_factory=DerivativeSettings)
    presign_ttl_seconds: int = 900
    store_gps: bool = True
    # Multi-tenant: the API takes the tenant from the authorizer's JWT claim, object keys start with
    # "<tenant>/", and every read and write is scoped to it. Single-tenant: everything is DEFAULT_TENANT.
    multi_tenant: bool = False
    tenant_claim: str = "custom:tenant"
    max_upload_bytes: int = 50 * 1024 * 1024
    # Reciprocal-rank-fusion weights of the keyword and vector rankings in hybrid search.
    hybrid_keyword_weight: float = 1.0
    hybrid_vector_weight: float = 1.0
    # Near duplicates (pixdex.duplicates): a copy is within duplicate_max_distance pHash bits, or at least
    # duplicate_min_similarity image-vector cosine, or both within the joint pair. Calibrated by
    # `pixdex bench duplicates` (docs/quality.md).
    duplicate_max_distance: int = 10
    duplicate_min_similarity: float = 0.82
    duplicate_joint_max_distance: int = 20
    duplicate_joint_min_similarity: float = 0.69
    # Analyze also embeds the central crop_vector_fraction of each side (crop_vector), so a tight crop of a
    # photo meets the original's centre and the duplicate rule compares full and crop vectors both ways.
    # 0: no crop vector (half the classifier work per image; tight crops are then found less often).
    crop_vector_fraction: float = 0.75
    aws_endpoint_url: str | None = None
    aws_region: str = "us-east-1"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from an environment mapping (``os.environ`` at the edge, a dict in tests)."""
        base = cls()
        data_dir = Path(env.get(env_names.DATA_DIR, str(base.data_dir)))
        model_dir = env.get(env_names.MODEL_DIR)
        fmt = env.get(env_names.DERIVATIVE_FORMAT, base.derivatives.format).lower()
        if fmt not in DERIVATIVE_FORMATS:
            raise ValueError(f"{env_names.DERIVATIVE_FORMAT}={fmt!r}: expected one of {DERIVATIVE_FORMATS}")
        derivatives = DerivativeSettings(
            thumbnail_size=_int(env, env_names.THUMBNAIL_SIZE, base.derivatives.thumbnail_size),
            preview_size=_int(env, env_names.PREVIEW_SIZE, base.derivatives.preview_size),
            format=fmt,  # checked against DERIVATIVE_FORMATS above
            quality=_int(env, env_names.DERIVATIVE_QUALITY, base.derivatives.quality),
            lossless_max_pixels=_int(env, env_names.LOSSLESS_MAX_PIXELS, base.derivatives.lossless_max_pixels),
        )
        limits = ImageLimits(
            max_bytes=_int(env, env_names.MAX_IMAGE_BYTES, base.limits.max_bytes),
            max_pixels=_int(env, env_names.MAX_IMAGE_PIXELS, base.limits.max_pixels),
        )
        cb = base.cluster
        cluster = ClusterSettings(
            engine=_choice(env, env_names.INDEX_ENGINE, cb.engine, ("auto", "opensearch", "elasticsearch")),
            aws_service=env.get(env_names.INDEX_AWS_SERVICE) or None,
            timeout_s=_float(env, env_names.INDEX_TIMEOUT_S, cb.timeout_s),
            max_retries=_int(env, env_names.INDEX_MAX_RETRIES, cb.max_retries, minimum=0),
            refresh=env.get(env_names.INDEX_REFRESH) or None,
            update_mode=_choice(env, env_names.INDEX_UPDATE_MODE, cb.update_mode, ("script", "merge")),
            verify_certs=_bool(env, env_names.INDEX_VERIFY_CERTS, cb.verify_certs),
            ca_certs=env.get(env_names.INDEX_CA_CERTS) or None,
            knn_m=_int(env, env_names.KNN_M, cb.knn_m),
            knn_ef_construction=_int(env, env_names.KNN_EF_CONSTRUCTION, cb.knn_ef_construction),
            knn_ef_search=_int(env, env_names.KNN_EF_SEARCH, cb.knn_ef_search),
            knn_hamming=_bool(env, env_names.KNN_HAMMING, cb.knn_hamming),
            knn_engine=_choice(env, env_names.KNN_ENGINE, cb.knn_engine, ("faiss", "lucene")),
        )
        return cls(
            cluster=cluster,
            originals_bucket=env.get(env_names.ORIGINALS_BUCKET, base.originals_bucket),
            derivatives_bucket=env.get(env_names.DERIVATIVES_BUCKET, base.derivatives_bucket),
            index_url=env.get(env_names.INDEX_URL, f"sqlite:///{(data_dir / 'index.db').resolve()}"),
            index_name=env.get(env_names.INDEX_NAME, base.index_name),
            data_dir=data_dir,
            model_dir=Path(model_dir) if model_dir else None,
            capabilities=_capabilities(env.get(env_names.CAPABILITIES)),
            model_threads=_int(env, env_names.MODEL_THREADS, base.model_threads, minimum=0),
            model_providers=tuple(p.strip() for p in env.get(env_names.MODEL_PROVIDERS, "auto").split(",")
                                  if p.strip()) or base.model_providers,
            model_batch_size=_int(env, env_names.MODEL_BATCH_SIZE, base.model_batch_size),
            gpu_pixel_threshold=_int(env, env_names.GPU_PIXEL_THRESHOLD, base.gpu_pixel_threshold, minimum=0),
            batch_job_queue=env.get(env_names.BATCH_JOB_QUEUE) or None,
            batch_job_definition=env.get(env_names.BATCH_JOB_DEFINITION) or None,
            limits=limits,
            derivatives=derivatives,
            presign_ttl_seconds=_int(env, env_names.PRESIGN_TTL_SECONDS, base.presign_ttl_seconds),
            store_gps=_bool(env, env_names.STORE_GPS, base.store_gps),
            multi_tenant=_bool(env, env_names.MULTI_TENANT, base.multi_tenant),
            tenant_claim=env.get(env_names.TENANT_CLAIM, base.tenant_claim),
            max_upload_bytes=_int(env, env_names.MAX_UPLOAD_BYTES, base.max_upload_bytes),
            hybrid_keyword_weight=_float(env, env_names.HYBRID_KEYWORD_WEIGHT, base.hybrid_keyword_weight),
            hybrid_vector_weight=_float(env, env_names.HYBRID_VECTOR_WEIGHT, base.hybrid_vector_weight),
            # Bounded here, so a bad value stops the function at start-up instead of failing every request.
            duplicate_max_distance=_int(env, env_names.DUPLICATE_MAX_DISTANCE, base.duplicate_max_distance,
                                        minimum=0, maximum=64),
            duplicate_min_similarity=_similarity(env, env_names.DUPLICATE_MIN_SIMILARITY,
                                                 base.duplicate_min_similarity),
            duplicate_joint_max_distance=_int(env, env_names.DUPLICATE_JOINT_MAX_DISTANCE,
                                              base.duplicate_joint_max_distance, minimum=0, maximum=64),
            duplicate_joint_min_similarity=_similarity(env, env_names.DUPLICATE_JOINT_MIN_SIMILARITY,
                                                       base.duplicate_joint_min_similarity),
            crop_vector_fraction=_fraction(env, env_names.CROP_VECTOR_FRACTION, base.crop_vector_fraction),
            aws_endpoint_url=env.get(env_names.AWS_ENDPOINT_URL) or None,
            aws_region=env.get(env_names.AWS_REGION) or env.get(env_names.AWS_DEFAULT_REGION) or base.aws_region,
        )

    @property
    def routes_to_gpu(self) -> bool:
        return bool(self.gpu_pixel_threshold and self.batch_job_queue and self.batch_job_definition)

    def tenant_of_key(self, key: str) -> str:
        """Which tenant an object belongs to: its first key segment when multi-tenant."""
        if not self.multi_tenant:
            return DEFAULT_TENANT
        head, sep, _ = key.partition("/")
        return head if sep and head else DEFAULT_TENANT

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """The inverse of :meth:`from_env`, for handing settings to child processes and functions."""
        out = {
            env_names.ORIGINALS_BUCKET: self.originals_bucket,
            env_names.DERIVATIVES_BUCKET: self.derivatives_bucket,
            env_names.INDEX_URL: self.index_url,
            env_names.INDEX_NAME: self.index_name,
            env_names.INDEX_ENGINE: self.cluster.engine,
            env_names.INDEX_TIMEOUT_S: repr(self.cluster.timeout_s),
            env_names.INDEX_MAX_RETRIES: str(self.cluster.max_retries),
            env_names.INDEX_UPDATE_MODE: self.cluster.update_mode,
            env_names.INDEX_VERIFY_CERTS: "true" if self.cluster.verify_certs else "false",
            env_names.KNN_M: str(self.cluster.knn_m),
            env_names.KNN_EF_CONSTRUCTION: str(self.cluster.knn_ef_construction),
            env_names.KNN_EF_SEARCH: str(self.cluster.knn_ef_search),
            env_names.KNN_HAMMING: "true" if self.cluster.knn_hamming else "false",
            env_names.KNN_ENGINE: self.cluster.knn_engine,
            env_names.DATA_DIR: str(self.data_dir),
            env_names.MAX_IMAGE_BYTES: str(self.limits.max_bytes),
            env_names.MAX_IMAGE_PIXELS: str(self.limits.max_pixels),
            env_names.THUMBNAIL_SIZE: str(self.derivatives.thumbnail_size),
            env_names.PREVIEW_SIZE: str(self.derivatives.preview_size),
            env_names.DERIVATIVE_FORMAT: self.derivatives.format,
            env_names.DERIVATIVE_QUALITY: str(self.derivatives.quality),
            env_names.LOSSLESS_MAX_PIXELS: str(self.derivatives.lossless_max_pixels),
            env_names.PRESIGN_TTL_SECONDS: str(self.presign_ttl_seconds),
            env_names.STORE_GPS: "true" if self.store_gps else "false",
            env_names.MULTI_TENANT: "true" if self.multi_tenant else "false",
            env_names.TENANT_CLAIM: self.tenant_claim,
            env_names.MAX_UPLOAD_BYTES: str(self.max_upload_bytes),
            env_names.HYBRID_KEYWORD_WEIGHT: repr(self.hybrid_keyword_weight),
            env_names.HYBRID_VECTOR_WEIGHT: repr(self.hybrid_vector_weight),
            env_names.DUPLICATE_MAX_DISTANCE: str(self.duplicate_max_distance),
            env_names.DUPLICATE_MIN_SIMILARITY: repr(self.duplicate_min_similarity),
            env_names.DUPLICATE_JOINT_MAX_DISTANCE: str(self.duplicate_joint_max_distance),
            env_names.DUPLICATE_JOINT_MIN_SIMILARITY: repr(self.duplicate_joint_min_similarity),
            env_names.CROP_VECTOR_FRACTION: repr(self.crop_vector_fraction),
            env_names.AWS_REGION: self.aws_region,
        }
        for name, value in ((env_names.INDEX_AWS_SERVICE, self.cluster.aws_service),
                            (env_names.INDEX_REFRESH, self.cluster.refresh),
                            (env_names.INDEX_CA_CERTS, self.cluster.ca_certs)):
            if value:
                out[name] = value
        if self.model_dir is not None:
            out[env_names.MODEL_DIR] = str(self.model_dir)
        out[env_names.CAPABILITIES] = ",".join(self.capabilities) or "none"
        out[env_names.MODEL_THREADS] = str(self.model_threads)
        out[env_names.MODEL_PROVIDERS] = ",".join(self.model_providers)
        out[env_names.MODEL_BATCH_SIZE] = str(self.model_batch_size)
        out[env_names.GPU_PIXEL_THRESHOLD] = str(self.gpu_pixel_threshold)
        if self.batch_job_queue:
            out[env_names.BATCH_JOB_QUEUE] = self.batch_job_queue
        if self.batch_job_definition:
            out[env_names.BATCH_JOB_DEFINITION] = self.batch_job_definition
        if self.aws_endpoint_url:
            out[env_names.AWS_ENDPOINT_URL] = self.aws_endpoint_url
        return out


def _capabilities(raw: str | None) -> tuple[str, ...]:
    if raw is None or raw.strip() == "":
        return DEFAULT_CAPABILITIES
    if raw.strip().lower() == "none":
        return ()
    names = tuple(dict.fromkeys(p.strip().lower() for p in raw.split(",") if p.strip()))
    unknown = [n for n in names if n not in ALL_CAPABILITIES]
    if unknown:
        raise ValueError(f"{env_names.CAPABILITIES}: unknown {unknown[0]!r}; expected some of {ALL_CAPABILITIES} "
                         "or 'none'")
    return names


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 1, maximum: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected an integer") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r}: must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}={raw!r}: must be at most {maximum}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = (env.get(name) or default).strip().lower()
    if raw not in allowed:
        raise ValueError(f"{name}={raw!r}: expected one of {allowed}")
    return raw


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a number") from None
    if not 0.0 <= value < float("inf"):
        raise ValueError(f"{name}={raw!r}: must be zero or positive")
    return value


def _similarity(env: Mapping[str, str], name: str, default: float) -> float:
    """A cosine threshold: 0 to 1 (negative cosines never make two photos copies)."""
    value = _float(env, name, default)
    if value > 1.0:
        raise ValueError(f"{name}={value!r}: a cosine similarity is at most 1")
    return value


def _fraction(env: Mapping[str, str], name: str, default: float) -> float:
    value = _float(env, name, default)
    if value >= 1.0:
        raise ValueError(f"{name}={value!r}: expected a fraction below 1 (0: off)")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name}={raw!r}: expected true or false")
