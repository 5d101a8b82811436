"""``pixdex bench compare-compress``: pixdex's derivatives against sharp, pyvips and plain Pillow at equal SSIM.

Same inputs for every engine: 12 MP JPEGs (q90) made from the real photos that scikit-image and
scikit-learn ship, upscaled with sensor noise (``pixdex.models.bench.make_jpeg_12mp``). Same output
sizes (pixdex's ``fit_size`` for the thumbnail and the preview), WebP for all. Same quality measure for
all: SSIM of luma (``pixdex.derivatives.ssim``) of the decoded output against one reference per size, a
full-resolution decode resized with Lanczos (so an engine's resize and its encoder are judged together).

The target is what pixdex's own derivative reaches at its default settings. For every other engine the
quality knob is bisected (``stats.search_setting``) for the lowest setting that reaches that SSIM, per
derivative; bytes are compared there, and the time per image is then measured with those settings:
decode of the 12 MP JPEG from memory + both derivatives encoded, on one pinned core, median of
``--repeat`` runs (sharp runs in its own node process on the same core, timed inside node).

Engines: ``pixdex`` (the compress function's path), ``pillow`` (plain Pillow: full decode, Lanczos, WebP
method 4), ``pyvips`` and ``sharp`` (libvips: shrink-on-load thumbnail, WebP effort 4, their defaults),
and ``pyvips-e0`` / ``sharp-e0`` (the same with pixdex's encoder efforts: 0 for the preview, 4 for the
thumbnail). The comparators are optional: ``pip install -e '.[bench]'`` (pyvips + pyvips-binary) and
``npm install --prefix tools/bench-sharp`` (sharp); a missing one stops the run with that hint.

Results go to the ``## compress vs sharp, pyvips, Pillow`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Final, Protocol

import numpy as np
from PIL import Image, ImageOps

from pixdex import derivatives as dv
from pixdex import imaging
from pixdex.bench.compress import pinned
from pixdex.bench.report import publish
from pixdex.bench.stats import QualityHit, fmt_ratio, machine_note, ratio, search_setting
from pixdex.settings import DerivativeSettings, ImageLimits

SECTION: Final = "## compress vs sharp, pyvips, Pillow"
DEFAULT_OUTPUT: Final = Path("docs/benchmarks.md")
ENGINES: Final = ("pixdex-e4", "pillow", "pyvips", "pyvips-e0", "sharp", "sharp-e0")
SHARP_DIR: Final = Path(__file__).resolve().parents[4] / "tools" / "bench-sharp"
NAMES: Final = (dv.THUMBNAIL, dv.PREVIEW)


class MissingComparatorError(RuntimeError):
    """A comparison engine is not installed; the message says how to install it."""


@dataclass(frozen=True)
class Job:
    """One 12 MP input and the two output sizes every engine makes from it."""

    name: str
    data: bytes
    path: Path
    sizes: tuple[tuple[int, int], tuple[int, int]]  # thumbnail, preview


class Engine(Protocol):
    label: str
    note: str

    def encode(self, job: Job, index: int, quality: int) -> bytes:
        """One derivative (0 thumbnail, 1 preview) at a quality setting."""
        ...

    def time_ms(self, job: Job, qualities: tuple[int, int], repeat: int) -> list[float]:
        """Decode + both derivatives at these qualities, ``repeat`` times; wall ms each."""
        ...

    def close(self) -> None: ...


def _webp_pillow(image: Image.Image, quality: int, method: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "WEBP", quality=quality, method=method)
    return buf.getvalue()


class PillowEngine:
    label = "pillow"
    note = "plain Pillow: full decode, EXIF transpose, Lanczos from the full image, WebP method 4"

    def __init__(self) -> None:
        self._resized: dict[tuple[str, int], Image.Image] = {}

    def _resize(self, job: Job, index: int) -> Image.Image:
        key = (job.name, index)
        if key not in self._resized:
            self._resized[key] = _full_decode(job.data).resize(job.sizes[index], Image.Resampling.LANCZOS)
        return self._resized[key]

    def encode(self, job: Job, index: int, quality: int) -> bytes:
        return _webp_pillow(self._resize(job, index), quality, 4)

    def time_ms(self, job: Job, qualities: tuple[int, int], repeat: int) -> list[float]:
        out = []
        for _ in range(repeat):
            t = time.perf_counter()
            image = _full_decode(job.data)
            for size, quality in zip(job.sizes, qualities, strict=True):
                _webp_pillow(image.resize(size, Image.Resampling.LANCZOS), quality, 4)
            out.append((time.perf_counter() - t) * 1000)
        return out

    def close(self) -> None:
        self._resized.clear()


class PixdexEffortEngine:
    """pixdex's own path (draft decode, its bilinear resize, thumbnail from the preview) with WebP method 4 for
    both derivatives: separates what the encoder effort buys from what the engine does."""

    label = "pixdex-e4"
    note = "pixdex's decode and resize path with WebP method 4 for the preview too"

    def __init__(self, settings: DerivativeSettings) -> None:
        self.settings = settings
        self._resized: dict[str, tuple[Image.Image, Image.Image]] = {}

    def _derive(self, job: Job) -> tuple[Image.Image, Image.Image]:
        decoded = imaging.decode(job.data, ImageLimits(max_bytes=len(job.data) + 1),
                                 target_size=self.settings.preview_size)
        preview = decoded.image.resize(job.sizes[1], Image.Resampling.BILINEAR, reducing_gap=3.0)
        thumbnail = preview.resize(job.sizes[0], Image.Resampling.BILINEAR, reducing_gap=3.0)
        return thumbnail, preview

    def encode(self, job: Job, index: int, quality: int) -> bytes:
        if job.name not in self._resized:
            self._resized[job.name] = self._derive(job)
        return _webp_pillow(self._resized[job.name][index], quality, 4)

    def time_ms(self, job: Job, qualities: tuple[int, int], repeat: int) -> list[float]:
        out = []
        for _ in range(repeat):
            t = time.perf_counter()
            for image, quality in zip(self._derive(job), qualities, strict=True):
                _webp_pillow(image, quality, 4)
            out.append((time.perf_counter() - t) * 1000)
        return out

    def close(self) -> None:
        self._resized.clear()


def load_pyvips() -> ModuleType:
    try:
        module = importlib.import_module("pyvips")
    except (ImportError, OSError) as exc:
        raise MissingComparatorError(
            f"pyvips is not usable ({exc}); install it with: .venv/bin/pip install -e '.[bench]'") from exc
    return module


class PyvipsEngine:
    def __init__(self, efforts: tuple[int, int], label: str) -> None:
        self.vips = load_pyvips()
        # One thread, no operation cache: per-core cost, and every timed run does the whole work again.
        self.vips.concurrency_set(1)
        self.vips.cache_set_max(0)
        self.efforts = efforts
        self.label = label
        self.note = (f"pyvips {self.vips.__version__} on libvips {self.vips.version(0)}.{self.vips.version(1)}."
                     f"{self.vips.version(2)}: `thumbnail_buffer` (shrink-on-load, size=force), WebP effort "
                     f"{efforts[0]} thumbnail / {efforts[1]} preview")
        self._resized: dict[tuple[str, int], Any] = {}

    def _thumb(self, data: bytes, size: tuple[int, int]) -> Any:
        return self.vips.Image.thumbnail_buffer(data, size[0], height=size[1], size="force")

    def encode(self, job: Job, index: int, quality: int) -> bytes:
        key = (job.name, index)
        if key not in self._resized:
            self._resized[key] = self._thumb(job.data, job.sizes[index]).copy_memory()
        data: bytes = self._resized[key].webpsave_buffer(Q=quality, effort=self.efforts[index], strip=True)
        return data

    def time_ms(self, job: Job, qualities: tuple[int, int], repeat: int) -> list[float]:
        out = []
        for _ in range(repeat):
            t = time.perf_counter()
            for i, (size, quality) in enumerate(zip(job.sizes, qualities, strict=True)):
                self._thumb(job.data, size).webpsave_buffer(Q=quality, effort=self.efforts[i], strip=True)
            out.append((time.perf_counter() - t) * 1000)
        return out

    def close(self) -> None:
        self._resized.clear()


class SharpEngine:
    """sharp in a node process that answers one JSON line per request (tools/bench-sharp/derive.mjs)."""

    def __init__(self, efforts: tuple[int, int], label: str, folder: Path, workdir: Path) -> None:
        node = shutil.which("node")
        if node is None:
            raise MissingComparatorError("sharp needs node (>= 20.9) on PATH; install Node.js, then "
                                    f"npm install --prefix {folder}")
        if not (folder / "node_modules" / "sharp").is_dir():
            raise MissingComparatorError(f"sharp is not installed; run: npm install --prefix {folder}")
        self.efforts = efforts
        self.label = label
        self.workdir = workdir
        self._proc = subprocess.Popen([node, str(folder / "derive.mjs")], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, env={**os.environ, "UV_THREADPOOL_SIZE": "1"})
        versions = self._ask({"op": "version"})
        self.note = (f"sharp {versions['sharp']} on libvips {versions['vips']} (node {self._node_version(node)}): "
                     f"one pipeline per derivative (shrink-on-load, Lanczos3), `sharp.concurrency(1)`, WebP "
                     f"effort {efforts[0]} thumbnail / {efforts[1]} preview")

    @staticmethod
    def _node_version(node: str) -> str:
        return subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"sharp worker exited with {self._proc.wait()}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"sharp: {reply['error']}")
        return reply

    def encode(self, job: Job, index: int, quality: int) -> bytes:
        out = self.workdir / f"sharp-{job.name}-{index}-{quality}.webp"
        self._ask({"op": "encode", "input": str(job.path), "sizes": [job.sizes[index]], "quality": [quality],
                   "effort": self.efforts[index], "out": [str(out)]})
        data = out.read_bytes()
        out.unlink()
        return data

    def time_ms(self, job: Job, qualities: tuple[int, int], repeat: int) -> list[float]:
        # derive.mjs takes one effort per request; time each derivative with its own and add them up.
        totals = [0.0] * repeat
        for i in range(2):
            reply = self._ask({"op": "time", "input": str(job.path), "sizes": [job.sizes[i]],
                               "quality": [qualities[i]], "effort": self.efforts[i], "repeat": repeat})
            totals = [a + b for a, b in zip(totals, reply["ms"], strict=True)]
        return totals

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait(timeout=30)


def _full_decode(data: bytes) -> Image.Image:
    opened = Image.open(io.BytesIO(data))
    opened.load()
    return ImageOps.exif_transpose(opened).convert("RGB")


def _luma(data_or_image: bytes | Image.Image) -> np.ndarray:
    image = data_or_image if isinstance(data_or_image, Image.Image) else Image.open(io.BytesIO(data_or_image))
    return np.asarray(image.convert("L"), dtype=np.float32)


@dataclass
class EngineResult:
    label: str
    note: str
    hits: list[QualityHit] = field(default_factory=list)  # thumbnail, preview
    ms: list[float] = field(default_factory=list)


@dataclass
class JobResult:
    job: Job
    targets: tuple[float, float]
    pixdex_bytes: tuple[int, int]
    pixdex_ms: list[float]
    engines: dict[str, EngineResult]


def pixdex_derivatives(job: Job, settings: DerivativeSettings, limits: ImageLimits) -> list[dv.Derivative]:
    decoded = imaging.decode(job.data, limits, target_size=settings.preview_size)
    return dv.make_derivatives(decoded, settings, measure_quality=False)


def measure_job(job: Job, engines: Sequence[Engine], settings: DerivativeSettings, limits: ImageLimits,
                repeat: int) -> JobResult:
    reference = _full_decode(job.data)
    refs = [_luma(reference.resize(size, Image.Resampling.LANCZOS)) for size in job.sizes]

    def score(index: int, data: bytes) -> float:
        return dv.ssim(refs[index], _luma(data))

    made = pixdex_derivatives(job, settings, limits)
    by_name = {d.name: d for d in made}
    ordered = [by_name[n] for n in NAMES]
    if any((d.width, d.height) != size for d, size in zip(ordered, job.sizes, strict=True)):
        raise RuntimeError(f"{job.name}: pixdex made {[(d.width, d.height) for d in ordered]}, expected {job.sizes}")
    targets = (score(0, ordered[0].data), score(1, ordered[1].data))
    pixdex_ms = []
    for _ in range(repeat):
        t = time.perf_counter()
        pixdex_derivatives(job, settings, limits)
        pixdex_ms.append((time.perf_counter() - t) * 1000)
    results: dict[str, EngineResult] = {}
    for engine in engines:
        res = EngineResult(engine.label, engine.note)
        for index in range(2):
            def measure(quality: int, index: int = index, engine: Engine = engine) -> tuple[float, int]:
                data = engine.encode(job, index, quality)
                return score(index, data), len(data)
            res.hits.append(search_setting(measure, targets[index]))
        engine.time_ms(job, (res.hits[0].setting, res.hits[1].setting), 1)  # warm
        res.ms = engine.time_ms(job, (res.hits[0].setting, res.hits[1].setting), repeat)
        results[engine.label] = res
        print(f"{job.name:>12} {engine.label:>10}: q {res.hits[0].setting}/{res.hits[1].setting}, "
              f"bytes {res.hits[0].size}/{res.hits[1].size} (pixdex {ordered[0].bytes}/{ordered[1].bytes}), "
              f"{statistics.median(res.ms):.0f} ms (pixdex {statistics.median(pixdex_ms):.0f})", file=sys.stderr)
    return JobResult(job, targets, (ordered[0].bytes, ordered[1].bytes), pixdex_ms, results)


def make_engines(names: Sequence[str], sharp_dir: Path, workdir: Path) -> list[Engine]:
    pixdex_efforts = (4, 0)  # derivatives.py: method 4 for small images (thumbnails), 0 for previews
    factories: dict[str, Callable[[], Engine]] = {
        "pillow": PillowEngine,
        "pixdex-e4": lambda: PixdexEffortEngine(DerivativeSettings()),
        "pyvips": lambda: PyvipsEngine((4, 4), "pyvips"),
        "pyvips-e0": lambda: PyvipsEngine(pixdex_efforts, "pyvips-e0"),
        "sharp": lambda: SharpEngine((4, 4), "sharp", sharp_dir, workdir),
        "sharp-e0": lambda: SharpEngine(pixdex_efforts, "sharp-e0", sharp_dir, workdir),
    }
    unknown = [n for n in names if n not in factories]
    if unknown:
        raise MissingComparatorError(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    return [factories[n]() for n in names]


def build_jobs(count: int, workdir: Path, settings: DerivativeSettings) -> list[Job]:
    from pixdex.models.bench import make_jpeg_12mp, sample_photos

    photos = sample_photos()
    names = sorted(photos)[:count]
    jobs = []
    for i, name in enumerate(names):
        data = make_jpeg_12mp(photos[name], i)
        path = workdir / f"{name}.jpg"
        path.write_bytes(data)
        w, h = Image.open(io.BytesIO(data)).size
        sizes = (dv.fit_size(w, h, settings.thumbnail_size), dv.fit_size(w, h, settings.preview_size))
        jobs.append(Job(name, data, path, sizes))
    return jobs


def render(results: list[JobResult], notes: dict[str, str], args: argparse.Namespace, machine: str, pin: str,
           settings: DerivativeSettings) -> str:
    labels = list(notes)
    pixdex_ms = statistics.fmean(statistics.median(r.pixdex_ms) for r in results)
    t_thumb = statistics.fmean(r.targets[0] for r in results)
    t_prev = statistics.fmean(r.targets[1] for r in results)
    thumb_size, prev_size = results[0].job.sizes
    lines = [
        SECTION, "",
        f"`pixdex bench compare-compress --images {args.images} --repeat {args.repeat} --engines "
        f"{','.join(labels)}`, {machine}; {pin}. {len(results)} JPEGs of 4000x3000 (12 MP, q90) made from "
        f"the scikit-image sample photos ({', '.join(r.job.name for r in results)}; upscaled, sensor noise). "
        f"Outputs WebP, thumbnail {thumb_size[0]}x{thumb_size[1]} and preview {prev_size[0]}x{prev_size[1]} "
        "for every engine.", "",
        f"Equal SSIM: the target is pixdex's own derivative at its defaults (quality {settings.quality}; "
        f"mean SSIM {t_thumb:.4f} thumbnail, {t_prev:.4f} preview), measured like every other output: luma "
        "SSIM (`derivatives.ssim`) of the decoded WebP against a Lanczos resize of the full-resolution decode. "
        "Each comparator's quality knob is bisected per image and derivative for the lowest setting that "
        "reaches the target. Time: decode from memory + both derivatives at those settings, one pinned core, "
        f"median of {args.repeat} runs after a warm-up.", "",
        "| engine | time / image ms | time vs pixdex | thumbnail bytes vs pixdex | preview bytes vs pixdex "
        "| quality found (thumbnail / preview) | target missed |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| **pixdex** (Pillow, draft decode, bilinear, WebP method 4 / 0) | {pixdex_ms:.0f} | 1.00x | 1.00x | 1.00x "
        f"| {settings.quality} / {settings.quality} | - |",
    ]
    for label in labels:
        rows = [r.engines[label] for r in results]
        ms = statistics.fmean(statistics.median(e.ms) for e in rows)
        b_thumb = statistics.fmean(ratio(e.hits[0].size, r.pixdex_bytes[0]) for e, r in zip(rows, results, strict=True))
        b_prev = statistics.fmean(ratio(e.hits[1].size, r.pixdex_bytes[1]) for e, r in zip(rows, results, strict=True))
        q = " ".join(f"{e.hits[0].setting}/{e.hits[1].setting}" for e in rows)
        missed = sum(not h.reached for e in rows for h in e.hits)
        lines.append(f"| {label} | {ms:.0f} | {fmt_ratio(ratio(ms, pixdex_ms))} | {fmt_ratio(b_thumb)} | "
                     f"{fmt_ratio(b_prev)} | {q} | {missed} |")
    lines += ["", "Per engine: " + "; ".join(f"**{k}**: {v}" for k, v in notes.items()) + ".", "",
              "Bytes ratio < 1: smaller than pixdex at the same SSIM; time ratio < 1: faster. 'target missed' "
              "counts derivatives where even quality 100 stayed below pixdex's SSIM (then quality 100 is used).",
              "", "Reproduce: `.venv/bin/pip install -e '.[bench]' && npm install --prefix tools/bench-sharp && "
              f"pixdex bench compare-compress --images {args.images} --repeat {args.repeat}`.", ""]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=4, help="12 MP JPEGs (one per sample photo, default 4)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per image and engine (default 3)")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of {','.join(ENGINES)}")
    parser.add_argument("--sharp-dir", type=Path, default=SHARP_DIR, help="folder with sharp's node_modules")
    parser.add_argument("--core", type=int, default=None, help="CPU to pin to (default: the highest allowed)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--no-write", dest="write", action="store_false", help="print the section only")


def run(args: argparse.Namespace) -> int:
    names = [n.strip() for n in str(args.engines).split(",") if n.strip()]
    settings = DerivativeSettings()
    machine = machine_note()
    with tempfile.TemporaryDirectory(prefix="pixdex-cmp-") as tmp:
        workdir = Path(tmp)
        with pinned(args.core) as pin:  # before the node workers start: they inherit the one core
            try:
                engines = make_engines(names, args.sharp_dir, workdir)
            except MissingComparatorError as exc:
                print(f"pixdex bench compare-compress: {exc}", file=sys.stderr)
                return 2
            try:
                print("making the 12 MP inputs ...", file=sys.stderr)
                jobs = build_jobs(args.images, workdir, settings)
                limits = ImageLimits(max_bytes=max(len(j.data) for j in jobs) + 1)
                results = [measure_job(job, engines, settings, limits, args.repeat) for job in jobs]
            finally:
                for engine in engines:
                    engine.close()
    section = render(results, {e.label: e.note for e in engines}, args, machine, pin, settings)
    publish(section, args.output, SECTION, write=args.write)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pixdex bench compare-compress", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(list(argv) if argv is not None else None))


if __name__ == "__main__":
    raise SystemExit(main())
