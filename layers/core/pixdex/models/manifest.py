"""The model manifest: what each model is, where its weights came from, and how to feed it.

``layers/models/manifest.json`` is committed. Entries for files built by ``pixdex models build`` name
a ``file`` inside the model folder; entries for models that a runtime package carries (OCR, safety,
faces) name ``package`` and ``package_file`` instead and are resolved inside the installed package.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixdex.models.session import ModelUnavailableError
from pixdex.packages import package_dir

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1

# Task names. A CLIP-style pair is two entries, "clip-image" and "clip-text", sharing a "pair" value.
TASK_IMAGE_CLASSIFIER = "image-classifier"
TASK_TEXT_EMBEDDER = "text-embedder"
TASK_CLIP_IMAGE = "clip-image"
TASK_CLIP_TEXT = "clip-text"
TASK_OCR_DET = "ocr-detector"
TASK_OCR_CLS = "ocr-orientation"
TASK_OCR_REC = "ocr-recognizer"
TASK_FACE_DET = "face-detector"
TASK_FACE_LANDMARKS = "face-landmarks"
TASK_FACE_EMBED = "face-embedder"
TASK_NSFW = "nsfw-classifier"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    task: str
    version: str = "1"
    file: str | None = None
    package: str | None = None
    package_file: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    licence: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    tokenizer: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    pair: str | None = None
    notes: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelEntry:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"manifest entry {raw.get('name')!r}: unknown keys {sorted(unknown)}")
        if "name" not in raw or "task" not in raw:
            raise ValueError("manifest entry needs 'name' and 'task'")
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in self.__dataclass_fields__:
            value = getattr(self, key)
            if value is None or value == {} or value == []:
                continue
            out[key] = value
        return out

    @property
    def provenance(self) -> str:
        """A short version string stored on each document: which weights produced its fields."""
        digest = (self.sha256 or "")[:12]
        return f"{self.version}+{digest}" if digest else self.version

    def resolve(self, model_dir: Path) -> Path:
        """The weights file on disk, inside the model folder or inside the package that carries it."""
        if self.file is not None:
            path = model_dir / self.file
        elif self.package is not None and self.package_file is not None:
            path = package_path(self.package) / self.package_file
        else:
            raise ModelUnavailableError(f"manifest entry {self.name!r} names no file")
        if not path.is_file():
            raise ModelUnavailableError(f"{self.name}: weights not found at {path}", model=self.name)
        return path

    def resolve_tokenizer(self, model_dir: Path) -> Path:
        name = self.tokenizer.get("file")
        if not isinstance(name, str):
            raise ModelUnavailableError(f"{self.name}: manifest entry names no tokenizer file")
        path = model_dir / name
        if not path.is_file():
            raise ModelUnavailableError(f"{self.name}: tokenizer not found at {path}", model=self.name)
        return path


def package_path(package: str) -> Path:
    """The folder of an importable package, found without importing it (imports can be slow or noisy)."""
    found = package_dir(package)
    if found is None:
        raise ModelUnavailableError(f"package {package!r} is not installed", package=package)
    return found


def package_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass
class Manifest:
    models: list[ModelEntry] = field(default_factory=list)

    @classmethod
    def load(cls, model_dir: Path) -> Manifest:
        """The manifest of a model folder; a folder without one yields an empty manifest."""
        path = Path(model_dir) / MANIFEST_NAME
        if not path.is_file():
            return cls()
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{path}: unsupported manifest format {raw.get('format')!r}")
        return cls([ModelEntry.from_dict(m) for m in raw.get("models", [])])

    def save(self, model_dir: Path) -> Path:
        path = Path(model_dir) / MANIFEST_NAME
        body = {"format": MANIFEST_FORMAT, "models": [m.to_dict() for m in self.models]}
        path.write_text(json.dumps(body, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        return path

    def by_task(self, task: str) -> list[ModelEntry]:
        return [m for m in self.models if m.task == task]

    def first(self, task: str) -> ModelEntry | None:
        found = self.by_task(task)
        return found[0] if found else None

    def get(self, name: str) -> ModelEntry | None:
        return next((m for m in self.models if m.name == name), None)

    def upsert(self, entries: Iterable[ModelEntry]) -> None:
        """Replace entries by name, keep the rest in place: each build step owns only its own entries."""
        for entry in entries:
            for i, existing in enumerate(self.models):
                if existing.name == entry.name:
                    self.models[i] = entry
                    break
            else:
                self.models.append(entry)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(entry: ModelEntry, model_dir: Path) -> list[str]:
    """Problems with one entry's file (missing, size or sha256 mismatch); empty when it is intact."""
    try:
        path = entry.resolve(model_dir)
    except ModelUnavailableError as exc:
        return [exc.message]
    problems = []
    if entry.bytes is not None and path.stat().st_size != entry.bytes:
        problems.append(f"{entry.name}: {path.stat().st_size} bytes, manifest says {entry.bytes}")
    if entry.sha256 is not None and sha256_file(path) != entry.sha256:
        problems.append(f"{entry.name}: sha256 differs from the manifest")
    return problems
