"""``pixdex bench analyze-limit``: the analysis throughput against the sum of its parts, measured in one run.

Inputs: 12 MP JPEGs made from the scikit-image/scikit-learn photos (``pixdex.models.bench``). The whole:
per batch, decode (``imaging.decode`` with JPEG draft at the analyzer's decode side, as the analyze function
does) and ``ImageAnalyzer.analyze_batch`` with the default capabilities. The parts, on the same images in
the same process, each timed alone: decode; the classifier + image embedding (batched); OCR (per image);
safety (batched); the caption text embedding (batched); CLIP when a pair is installed. The sum of the parts
is the limit the whole could reach if orchestration cost nothing; the report gives whole / sum as a ratio.
Rounds alternate the two so that load from elsewhere hits both alike. Results go to the
``## analyze vs its model costs`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from PIL import Image

from pixdex import imaging
from pixdex.bench.report import publish
from pixdex.bench.stats import machine_note
from pixdex.settings import ImageLimits

SECTION: Final = "## analyze vs its model costs"
DEFAULT_OUTPUT: Final = Path("docs/benchmarks.md")


def _timed(totals: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    value = fn()
    totals[name] = totals.get(name, 0.0) + time.perf_counter() - start
    return value


def _read_all(reader: Any, images: Sequence[Image.Image]) -> list[str]:
    return [reader.read(im).text for im in images]


def run(args: argparse.Namespace) -> int:
    from pixdex.models.analysis import CaptionContext, ImageAnalyzer, ModelSettings, build_caption
    from pixdex.models.bench import make_jpeg_12mp, sample_photos

    machine = machine_note()
    photos = sample_photos()
    distinct = [make_jpeg_12mp(photos[n], i) for i, n in enumerate(sorted(photos))]
    jpegs = [distinct[i % len(distinct)] for i in range(args.images)]
    limits = ImageLimits(max_bytes=max(len(j) for j in jpegs) + 1)
    settings = ModelSettings(batch_size=args.batch)
    analyzer = ImageAnalyzer(settings)
    side = analyzer.decode_side
    batches = [jpegs[i:i + args.batch] for i in range(0, len(jpegs), args.batch)]
    contexts = [[CaptionContext(name_words=[f"IMG_{b:02d}{i:02d}"]) for i in range(len(chunk))]
                for b, chunk in enumerate(batches)]

    def decode(chunk: Sequence[bytes]) -> list[Image.Image]:
        return [imaging.decode(d, limits, target_size=side).image.convert("RGB") for d in chunk]

    def whole() -> float:
        start = time.perf_counter()
        for chunk, ctx in zip(batches, contexts, strict=True):
            docs = analyzer.analyze_batch(decode(chunk), ctx)
            errors = [d["model_errors"] for d in docs if d["model_errors"]]
            if errors:
                raise RuntimeError(f"model errors: {errors[0]}")
        return time.perf_counter() - start

    def parts() -> dict[str, float]:
        totals: dict[str, float] = {}
        classifier = analyzer._classifier.get()
        ocr = analyzer._ocr.get()
        safety = analyzer._safety.get()
        text = analyzer.text_embedder()
        clip = analyzer._clip.get() if analyzer.has_clip and analyzer._clip is not None else None
        for chunk, ctx in zip(batches, contexts, strict=True):
            images = _timed(totals, "decode (draft)", functools.partial(decode, chunk))
            found = _timed(totals, "classifier + image vector",
                           functools.partial(classifier.classify, images, settings.top_k))
            texts = _timed(totals, "OCR", functools.partial(_read_all, ocr, images))
            _timed(totals, "safety", functools.partial(safety.scores, images))
            if clip is not None:
                _timed(totals, "CLIP image", functools.partial(clip.embed_images, images))
            captions = [build_caption(c, t, x, settings.min_label_score)
                        for c, t, x in zip(found, texts, ctx, strict=True)]
            _timed(totals, "caption text embedding", functools.partial(text.embed, captions))
        return totals

    print(f"{len(jpegs)} 12 MP JPEGs, batch {args.batch}; warming up ...", file=sys.stderr)
    analyzer.analyze_batch(decode(batches[0][:2]), contexts[0][:2])
    parts()
    wholes: list[float] = []
    part_rounds: list[dict[str, float]] = []
    for r in range(args.rounds):
        wholes.append(whole())
        part_rounds.append(parts())
        print(f"round {r}: whole {wholes[-1]:.1f} s, parts {sum(part_rounds[-1].values()):.1f} s", file=sys.stderr)
    n = len(jpegs)
    whole_ms = statistics.median(wholes) / n * 1000
    names = list(part_rounds[0])
    part_ms = {k: statistics.median(p[k] for p in part_rounds) / n * 1000 for k in names}
    total = sum(part_ms.values())
    ran = [c for c in settings.enabled() if c != "clip" or analyzer.has_clip]
    lines = [SECTION, "",
             f"`pixdex bench analyze-limit --images {args.images} --batch {args.batch} --rounds {args.rounds}`, "
             f"{machine}. Default capabilities ({', '.join(ran)}"
             f"{'' if analyzer.has_clip else '; no CLIP pair installed'}); onnxruntime on all cores. "
             f"Median of {args.rounds} rounds per image; whole and parts alternate.", "",
             "| part | ms / image | share of the sum |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.1f} | {v / total:.0%} |" for k, v in part_ms.items()]
    lines += [f"| **sum of the parts** (the limit) | **{total:.1f}** | 100% |",
              f"| **whole** (decode + `analyze_batch`) | **{whole_ms:.1f}** | {whole_ms / total:.0%} |", "",
              f"Throughput {1000 / whole_ms:.1f} images/s against a limit of {1000 / total:.1f} images/s from the "
              f"parts: the whole runs at **{total / whole_ms:.2f}x of the limit** (1.00x: orchestration costs "
              "nothing; above 1: the whole overlaps work the parts do one after another).", "",
              f"Reproduce: `pixdex bench analyze-limit --images {args.images} --batch {args.batch}`.", ""]
    section = "\n".join(lines)
    publish(section, args.output, SECTION, write=args.write)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--no-write", dest="write", action="store_false", help="print the section only")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pixdex bench analyze-limit", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(list(argv) if argv is not None else None))


if __name__ == "__main__":
    raise SystemExit(main())
