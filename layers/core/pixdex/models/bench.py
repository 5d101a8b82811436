"""``pixdex bench analyze``: throughput, per-model shares, OCR/face costs and cold start of analysis.

Inputs are 12 MP JPEGs made from the real photos installed packages ship (scikit-image, scikit-learn),
upscaled with mild sensor noise so JPEG decoding costs what a camera file costs. Decoding uses Pillow's
JPEG draft mode (DCT scaling) down to the classifier's input scale, as the analyze function does.
Results go to the "## analyze" section of docs/benchmarks.md, leaving other sections alone.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pixdex.bench.report import write_section
from pixdex.models.analysis import DEFAULT_MODEL_DIR, CaptionContext, ImageAnalyzer, ModelSettings, build_caption
from pixdex.models.faces import FaceAnalyzer
from pixdex.models.manifest import Manifest
from pixdex.models.ocr import OcrOptions, TextReader
from pixdex.models.session import RuntimeOptions
from pixdex.packages import package_dir

SECTION = "## analyze"
PHOTO_SOURCES = (("skimage", "data", ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png",
                                      "motorcycle_left.png", "camera.png")),
                 ("sklearn", "datasets/images", ("china.jpg", "flower.jpg")))


def sample_photos() -> dict[str, Image.Image]:
    out: dict[str, Image.Image] = {}
    for package, folder, names in PHOTO_SOURCES:
        found = package_dir(package)
        if found is None:
            continue
        root = found / folder
        for name in names:
            if (root / name).is_file():
                with Image.open(root / name) as im:
                    out[name.rsplit(".", 1)[0]] = im.convert("RGB")
    if not out:
        raise SystemExit("bench analyze needs scikit-image or scikit-learn for its sample photos")
    return out


def make_jpeg_12mp(photo: Image.Image, seed: int) -> bytes:
    big = photo.resize((4000, 3000), Image.Resampling.BICUBIC)
    rng = np.random.default_rng(seed)
    noisy = np.asarray(big, dtype=np.int16) + rng.normal(0, 3, (3000, 4000, 3)).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def decode_draft(data: bytes, min_side: int) -> Image.Image:
    """Decode at the smallest DCT scale that keeps the shorter side >= min_side."""
    im = Image.open(io.BytesIO(data))
    im.draft("RGB", (min_side * im.width // min(im.size), min_side * im.height // min(im.size)))
    return im.convert("RGB")


class Timer:
    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        value = fn()
        self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start
        return value


def throughput(analyzer: ImageAnalyzer, jpegs: Sequence[bytes], batch: int, pipelined: bool) -> dict[str, Any]:
    """classify + image embedding + caption embedding, decode included, in batches.

    Pipelined: two threads decode and crop the next batch while onnxruntime runs the current one (Pillow
    and onnxruntime both release the GIL), which is how the analyze function should feed the models.
    Stage times are then CPU-overlapped wall times of the main thread, so they are reported only for
    the sequential run.
    """
    classifier = analyzer._classifier.get()
    embedder = analyzer.text_embedder()
    s = analyzer.settings
    timer = Timer()

    def prepare(chunk: Sequence[bytes]) -> np.ndarray[Any, Any]:
        images = timer("decode (draft)", lambda: [decode_draft(d, classifier.resize_size) for d in chunk])
        return np.stack(timer("resize + crop", lambda: [classifier.preprocess(im) for im in images]))

    def prepare_one(data: bytes) -> np.ndarray[Any, Any]:
        pixels: np.ndarray[Any, Any] = classifier.preprocess(decode_draft(data, classifier.resize_size))
        return pixels

    def infer(pixels: np.ndarray[Any, Any], first: int) -> None:
        results = timer("classifier (EfficientNet-Lite0)", lambda: classifier.classify_pixels(pixels, s.top_k))
        # A distinct file-name word per image keeps every caption unique, as in a real collection.
        captions = timer("caption text", lambda: [
            build_caption(c, "", CaptionContext(name_words=[f"IMG_{first + i:04d}", f"album{first + i}"]),
                          s.min_label_score) for i, c in enumerate(results)])
        timer("text embedder (MiniLM)", lambda: embedder.embed(captions))

    chunks = [jpegs[i:i + batch] for i in range(0, len(jpegs), batch)]
    cpu_start = time.process_time()
    start = time.perf_counter()
    if pipelined:
        with ThreadPoolExecutor(max_workers=2) as pool:
            pending = [pool.submit(prepare_one, d) for d in chunks[0]]
            for n, _chunk in enumerate(chunks):
                pixels = np.stack([f.result() for f in pending])
                if n + 1 < len(chunks):
                    pending = [pool.submit(prepare_one, d) for d in chunks[n + 1]]
                infer(pixels, n * batch)
    else:
        for n, chunk in enumerate(chunks):
            infer(prepare(chunk), n * batch)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    return {"images": len(jpegs), "seconds": elapsed, "per_second": len(jpegs) / elapsed, "stages": timer.totals,
            "cpu_ms_per_image": cpu / len(jpegs) * 1000}


def load_average() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _median_ms(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _long_side(image: Image.Image, side: int) -> Image.Image:
    scale = side / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)


def ocr_costs(photos: dict[str, Image.Image], page: Image.Image | None, jpeg: bytes, repeat: int) -> dict[str, Any]:
    runtime = RuntimeOptions()
    with_pre = TextReader(Manifest(), runtime, OcrOptions())
    without_pre = TextReader(Manifest(), runtime, OcrOptions(precheck_max_side=0))
    start = time.perf_counter()
    with_pre._load()
    load_det = time.perf_counter() - start
    # What the analyze function hands OCR: a photo drafted/resized to about 1024 px on the long side.
    names = [n for n in ("chelsea", "coffee", "astronaut", "china") if n in photos]
    candidates: dict[str, Image.Image] = {n: _long_side(photos[n], 1024) for n in names}
    candidates["12 MP photo (drafted)"] = _long_side(decode_draft(jpeg, 768), 1024)
    rows = []
    for name, im in candidates.items():
        with_pre.read(im)  # warm both engines (and load the recogniser if any path needs it)
        without_pre.read(im)
        pre = with_pre.read(im)
        full = without_pre.read(im)
        rows.append({
            "photo": name,
            "with_precheck_ms": _median_ms(functools.partial(with_pre.read, im), repeat),
            "without_precheck_ms": _median_ms(functools.partial(without_pre.read, im), repeat),
            "stopped_at_precheck": pre.prechecked_out,
            "text_found": pre.text or full.text,
        })
    out: dict[str, Any] = {"det_load_s": load_det, "rows": rows}
    if page is not None:
        fresh = TextReader(Manifest(), runtime, OcrOptions())
        fresh.precheck(page)
        start = time.perf_counter()
        result = fresh.read(page)
        out["text_page_first_ms"] = (time.perf_counter() - start) * 1000
        out["text_page_ms"] = _median_ms(lambda: fresh.read(page), repeat)
        out["text_page_lines"] = len(result.boxes)
    return out


def face_costs(photos: dict[str, Image.Image], jpeg: bytes, repeat: int) -> dict[str, Any]:
    faces = FaceAnalyzer(Manifest.load(DEFAULT_MODEL_DIR))
    start = time.perf_counter()
    faces._load()
    out: dict[str, Any] = {"load_s": time.perf_counter() - start}
    astronaut = photos.get("astronaut")
    if astronaut is not None:
        faces.analyze(astronaut)
        out["one_face_512px_ms"] = _median_ms(lambda: faces.analyze(astronaut), repeat)
        out["detect_only_512px_ms"] = _median_ms(lambda: faces.analyze(astronaut, embed=False), repeat)
    photo_12mp = decode_draft(jpeg, 1024)
    out["no_face_12mp_draft_ms"] = _median_ms(lambda: faces.analyze(photo_12mp), repeat)
    out["12mp_draft_size"] = f"{photo_12mp.width}x{photo_12mp.height}"
    return out


_COLD = """
import time, json, io, sys
t0 = time.perf_counter()
from PIL import Image
from pixdex.models.analysis import ImageAnalyzer, ModelSettings, CaptionContext
t1 = time.perf_counter()
settings = ModelSettings(**json.loads(sys.argv[1]))
analyzer = ImageAnalyzer(settings)
image = Image.open(sys.argv[2]); image.draft("RGB", (1365, 1024)); image = image.convert("RGB")
doc = analyzer.analyze_batch([image], [CaptionContext(name_words=["IMG_0001"])])[0]
t2 = time.perf_counter()
assert not doc["model_errors"], doc["model_errors"]
print(json.dumps({"import_s": t1 - t0, "first_result_s": t2 - t0}))
"""


def cold_start(jpeg: bytes, capabilities: dict[str, bool], tmp: Path) -> dict[str, float]:
    path = tmp / "cold.jpg"
    path.write_bytes(jpeg)
    out = subprocess.run([sys.executable, "-c", _COLD, json.dumps(capabilities), str(path)],
                         capture_output=True, text=True, check=True, env=dict(os.environ))
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def render(args: argparse.Namespace, tp: dict[str, Any], ocr: dict[str, Any] | None, faces: dict[str, Any] | None,
           cold: dict[str, dict[str, float]]) -> str:
    stages = tp["stages"]
    total = sum(stages.values())
    lines = [
        SECTION, "",
        f"`pixdex bench analyze` on {platform.machine()} with {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, onnxruntime CPU. {tp['images']} JPEGs of 4000x3000 (12 MP, q90) "
        "made from the scikit-image/scikit-learn sample photos (upscaled, with sensor noise), batch "
        f"{args.batch}. Timings depend on the machine's load (it is shared); ratios are from one run.",
        "",
        "### Classification + image embedding + caption embedding (no OCR, no faces)",
        "",
        f"**{tp['pipelined_per_second']:.1f} images/s pipelined** (median of {tp['rounds']} rounds, range "
        f"{tp['pipelined_range']}; two threads decode the next batch while onnxruntime runs the current one), "
        f"**{tp['sequential_per_second']:.1f} images/s sequential** (range {tp['sequential_range']}). "
        f"{tp['images']} images per round, decode included; target >= 25. Load average (1/5/15 min): "
        f"{tp['load']} on {os.cpu_count()} cores: other work was sharing the machine, which is why rounds vary.",
        "",
        f"CPU time, which the machine's load changes far less than wall time: **{tp['cpu_ms_per_image']:.0f} "
        f"CPU-ms per image** (median over all rounds, all threads of this process), so {os.cpu_count()} idle "
        f"cores bound the throughput at about {(os.cpu_count() or 1) * 1000 / tp['cpu_ms_per_image']:.0f} "
        "images/s.",
        "",
        "Median sequential round, per stage:",
        "",
        "| stage | ms / image | share |",
        "|---|---:|---:|",
    ]
    for name, seconds in stages.items():
        lines.append(f"| {name} | {seconds / tp['images'] * 1000:.1f} | {seconds / total:.0%} |")
    if ocr is not None:
        rows = ocr["rows"]
        lines += [
            "", "### OCR (rapidocr 3.10, PP-OCRv6 small det/rec)", "",
            "Photos at 1024 px on the long side, as the analyze function passes them. 'With pre-check': "
            "detection at 480 px first, full detection (960 px) and recognition only if it finds a text region. "
            "'Without': full detection every time, recognition where it finds regions.", "",
            "| photo | with pre-check, ms | without pre-check, ms | stopped at pre-check | text kept |",
            "|---|---:|---:|---|---|",
        ]
        for r in rows:
            lines.append(f"| {r['photo']} | {r['with_precheck_ms']:.0f} | {r['without_precheck_ms']:.0f} | "
                         f"{'yes' if r['stopped_at_precheck'] else 'no'} | {r['text_found'][:30] or '-'} |")
        total_with = sum(r["with_precheck_ms"] for r in rows)
        total_without = sum(r["without_precheck_ms"] for r in rows)
        lines += ["", f"On these photos without text the pre-check saves {1 - total_with / total_without:.0%} of "
                  f"OCR time ({total_with / len(rows):.0f} vs {total_without / len(rows):.0f} ms per photo); where "
                  "it stops, the recogniser never runs (and in a fresh process never loads). Detector load: "
                  f"{ocr['det_load_s'] * 1000:.0f} ms."]
        if "text_page_ms" in ocr:
            lines.append(f"Text page ({ocr['text_page_lines']} lines, scikit-image page.png): "
                         f"{ocr['text_page_ms']:.0f} ms per read; the first read, which loads the recogniser, "
                         f"{ocr['text_page_first_ms']:.0f} ms.")
    if faces is not None:
        lines += ["", "### Faces (dlib HOG detector, 5-point landmarks, ResNet 128-d embeddings)", "",
                  "| case | ms / image |", "|---|---:|"]
        if "one_face_512px_ms" in faces:
            lines.append(f"| astronaut 512x512, one face, detect + embed | {faces['one_face_512px_ms']:.0f} |")
            lines.append(f"| same, detect only | {faces['detect_only_512px_ms']:.0f} |")
        lines.append(f"| 12 MP photo drafted to {faces['12mp_draft_size']}, no face | "
                     f"{faces['no_face_12mp_draft_ms']:.0f} |")
        lines += ["", f"Model load: {faces['load_s'] * 1000:.0f} ms."]
    lines += ["", "### Cold start (new process: import to first analysed 12 MP JPEG)", "",
              "| capabilities | import s | first result s |", "|---|---:|---:|"]
    for name, c in cold.items():
        lines.append(f"| {name} | {c['import_s']:.2f} | {c['first_result_s']:.2f} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pixdex bench analyze", description=__doc__)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: all cores)")
    parser.add_argument("--skip-ocr", action="store_true")
    parser.add_argument("--skip-faces", action="store_true")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args(list(argv) if argv is not None else None)

    photos = sample_photos()
    names = sorted(photos)
    print(f"making {len(names)} 12 MP JPEGs...", file=sys.stderr)
    distinct = [make_jpeg_12mp(photos[n], i) for i, n in enumerate(names)]
    jpegs = [distinct[i % len(distinct)] for i in range(args.images)]
    settings = ModelSettings(ocr=False, safety=False, batch_size=args.batch, intra_op_threads=args.threads)
    analyzer = ImageAnalyzer(settings)
    throughput(analyzer, jpegs[: args.batch], args.batch, pipelined=False)  # warm sessions; not counted
    load_before = load_average()
    # Rounds alternate the two modes so that a burst of load from elsewhere hits both alike.
    sequential, pipelined = [], []
    for _ in range(args.rounds):
        sequential.append(throughput(analyzer, jpegs, args.batch, pipelined=False))
        pipelined.append(throughput(analyzer, jpegs, args.batch, pipelined=True))
    tp = sorted(sequential, key=lambda r: r["per_second"])[len(sequential) // 2]
    rates = sorted(r["per_second"] for r in pipelined)
    seq_rates = sorted(r["per_second"] for r in sequential)
    tp["pipelined_per_second"] = statistics.median(rates)
    tp["pipelined_range"] = f"{rates[0]:.1f}-{rates[-1]:.1f}"
    tp["sequential_per_second"] = statistics.median(seq_rates)
    tp["sequential_range"] = f"{seq_rates[0]:.1f}-{seq_rates[-1]:.1f}"
    tp["rounds"] = args.rounds
    tp["cpu_ms_per_image"] = statistics.median(r["cpu_ms_per_image"] for r in sequential + pipelined)
    tp["load"] = f"{load_before} before, {load_average()} after"
    print(f"throughput: {tp['sequential_per_second']:.1f} sequential, {tp['pipelined_per_second']:.1f} pipelined "
          "images/s (medians)", file=sys.stderr)

    page = None
    skimage = package_dir("skimage")
    if skimage is not None:
        page_path = skimage / "data" / "page.png"
        if page_path.is_file():
            with Image.open(page_path) as im:
                page = im.convert("RGB")
    ocr = None if args.skip_ocr else ocr_costs(photos, page, distinct[0], args.repeat)
    faces = None if args.skip_faces else face_costs(photos, distinct[0], args.repeat)
    cold = {
        "classify + embed + caption": cold_start(distinct[0], {"ocr": False, "safety": False}, args.tmp),
        "defaults (+ OCR, safety)": cold_start(distinct[0], {}, args.tmp),
    }
    section = render(args, tp, ocr, faces, cold)
    write_section(args.output, SECTION, section)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
