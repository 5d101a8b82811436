"""Quality study behind docs/quality.md: labels, near-duplicates, text-to-image, labelled retrieval.

Data comes from registries only: scikit-image / scikit-learn sample photos (pip) and Fashion-MNIST
(Debian ``dataset-fashion-mnist``). Run: ``python -m pixdex.models.quality`` (writes docs/quality.md).
"""

from __future__ import annotations

import argparse
import gzip
import io
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

from pixdex.hashing import hamming, phash
from pixdex.models.analysis import CaptionContext, ImageAnalyzer, ModelSettings
from pixdex.packages import package_dir

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
SKIMAGE = ("chelsea", "coffee", "rocket", "astronaut", "motorcycle_left", "camera", "page", "coins",
           "hubble_deep_field", "retina", "moon", "clock_motion", "brick", "grass", "gravel", "ihc", "logo")
SKLEARN = ("china", "flower")
TEXT_QUERIES = (
    ("a cat", "chelsea", True), ("a cup of coffee", "coffee", True), ("rocket launch", "rocket", True),
    ("motorbike", "motorcycle_left", True), ("photographer with a camera on a tripod", "camera", True),
    ("chinese palace", "china", True), ("a flower", "flower", True), ("a pet", "chelsea", True),
    ("a drink", "coffee", True), ("vehicle", "motorcycle_left", True), ("animal", "chelsea", True),
    ("a page of text about segmentation", "page", False), ("coins", "coins", False),
    ("galaxies in space", "hubble_deep_field", False), ("brick wall", "brick", False), ("grass", "grass", False),
    ("the moon", "moon", False), ("astronaut in a space suit", "astronaut", False),
    ("clock", "clock_motion", False), ("retina eye scan", "retina", False), ("gravel stones", "gravel", False),
    ("python logo", "logo", False), ("cells under a microscope", "ihc", False),
)


def sample_photos() -> dict[str, Image.Image]:
    out: dict[str, Image.Image] = {}
    for package, folder, names in (("skimage", "data", SKIMAGE), ("sklearn", "datasets/images", SKLEARN)):
        root = package_dir(package)
        if root is None:
            continue
        for name in names:
            found = sorted((root / folder).glob(f"{name}.*"))
            if found:
                with Image.open(found[0]) as im:
                    out[name] = im.convert("RGB")
    return out


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return decoded.convert("RGB")


TRANSFORMS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "resized to 50%": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR),
    "JPEG quality 20": lambda im: _jpeg(im, 20),
    "cropped 10% (5% each side)": lambda im: im.crop((im.width // 20, im.height // 20,
                                                     im.width - im.width // 20, im.height - im.height // 20)),
    "mirrored": ImageOps.mirror,
}


def near_duplicates(analyzer: ImageAnalyzer, photos: dict[str, Image.Image]) -> list[str]:
    names = sorted(photos)

    def vectors(images: Sequence[Image.Image]) -> npt.NDArray[np.float32]:
        return np.stack([analyzer.image_vectors(im)["image_vector"] for im in images])

    base = vectors([photos[n] for n in names])
    cross = base @ base.T
    np.fill_diagonal(cross, -1)
    lines = ["| transform | copy vs its original: min / mean | copy vs other photos: max | pHash distance to "
             "original: max |", "|---|---:|---:|---:|"]
    for label, fn in TRANSFORMS.items():
        copies = [fn(photos[n]) for n in names]
        v = vectors(copies)
        sims = v @ base.T
        same = np.diag(sims).copy()
        np.fill_diagonal(sims, -1)
        dist = max(hamming(phash(c), phash(photos[n])) for c, n in zip(copies, names, strict=True))
        lines.append(f"| {label} | {same.min():.3f} / {same.mean():.3f} | {sims.max():.3f} | {dist} |")
    lines.append(f"| (originals against each other) | | {cross.max():.3f} | |")
    return lines


def top_labels(analyzer: ImageAnalyzer, photos: dict[str, Image.Image]) -> list[str]:
    lines = ["| photo | top 3 (probability) | labels added (first 8) |", "|---|---|---|"]
    for name in sorted(photos):
        result = analyzer.classify(photos[name], top_k=3)
        top = ", ".join(f"{s['label']} ({s['score']:.2f})" for s in result["label_scores"])
        lines.append(f"| {name} | {top} | {', '.join(result['labels'][:8])} |")
    return lines


def text_to_image(analyzer: ImageAnalyzer, photos: dict[str, Image.Image]) -> tuple[list[str], dict[str, str]]:
    names = sorted(photos)
    out: dict[str, str] = {}
    lines = ["| query | intended photo | ImageNet covers it | rank, pixels only | rank, + file name words |",
             "|---|---|---|---:|---:|"]
    vectors = {}
    for with_names in (False, True):
        contexts = [CaptionContext(name_words=[n] if with_names else []) for n in names]
        docs = analyzer.analyze_batch([photos[n] for n in names], contexts)
        vectors[with_names] = np.stack([d["caption_vector"] for d in docs])
    hits = {(False, True): 0, (False, False): 0, (True, True): 0, (True, False): 0}
    counts = {True: 0, False: 0}
    for query, want, covered in TEXT_QUERIES:
        q = analyzer.embed_query(query)["caption_vector"]
        ranks = []
        for with_names in (False, True):
            order = [names[i] for i in np.argsort(-(vectors[with_names] @ q))]
            rank = order.index(want) + 1
            ranks.append(rank)
            hits[(with_names, covered)] += rank == 1
        counts[covered] += 1
        lines.append(f"| {query} | {want} | {'yes' if covered else 'no'} | {ranks[0]} | {ranks[1]} |")
    for with_names, label in ((False, "pixels only"), (True, "with file name words")):
        out[label] = (f"{hits[(with_names, True)]}/{counts[True]} covered, "
                      f"{hits[(with_names, False)]}/{counts[False]} not covered, "
                      f"{hits[(with_names, True)] + hits[(with_names, False)]}/{len(TEXT_QUERIES)} overall")
    return lines, out


def _read_idx(path: Path) -> npt.NDArray[np.uint8]:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _average_precision(relevant: npt.NDArray[np.bool_]) -> float:
    hits = np.cumsum(relevant)
    if hits[-1] == 0:
        return 0.0
    precision = hits / np.arange(1, len(relevant) + 1)
    return float((precision * relevant).sum() / hits[-1])


def retrieval_scores(similarity: npt.NDArray[Any], labels: npt.NDArray[Any], k: int = 10) -> tuple[float, float]:
    """precision@k and mAP of every item as a query against all others (higher similarity = closer)."""
    sims = similarity.astype(np.float64).copy()
    np.fill_diagonal(sims, -np.inf)
    p_at_k, aps = [], []
    for i in range(len(labels)):
        order = np.argsort(-sims[i], kind="stable")[:-1]
        relevant = labels[order] == labels[i]
        p_at_k.append(relevant[:k].mean())
        aps.append(_average_precision(relevant))
    return float(np.mean(p_at_k)), float(np.mean(aps))


def fashion_retrieval(analyzer: ImageAnalyzer, per_class: int, seed: int) -> list[str] | None:
    images_path, labels_path = FASHION_DIR / "t10k-images-idx3-ubyte.gz", FASHION_DIR / "t10k-labels-idx1-ubyte.gz"
    if not images_path.is_file():
        return None
    images, labels = _read_idx(images_path), _read_idx(labels_path)
    rng = np.random.default_rng(seed)
    picked = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)])
    images, labels = images[picked], labels[picked]
    rgb = [Image.fromarray(im).convert("RGB") for im in images]
    started = time.perf_counter()
    classifier = analyzer._classifier.get()
    vectors = np.concatenate([
        np.stack([r.vector for r in classifier.classify(rgb[i:i + 64], 1)]) for i in range(0, len(rgb), 64)])
    cnn_seconds = time.perf_counter() - started
    pixels = images.reshape(len(images), -1).astype(np.float32)
    pixels -= pixels.mean(axis=1, keepdims=True)
    pixels /= np.maximum(np.linalg.norm(pixels, axis=1, keepdims=True), 1e-6)
    hashes = [int(phash(im), 16) for im in rgb]
    bits = np.array([[(h >> b) & 1 for b in range(64)] for h in hashes], dtype=np.int8)
    hamming_sim = -(bits[:, None, :] != bits[None, :, :]).sum(-1)
    rows = [
        ("EfficientNet-Lite0 features (image_vector, cosine)", vectors @ vectors.T),
        ("raw pixels (28x28, centred, cosine)", pixels @ pixels.T),
        ("pHash (64-bit DCT hash, Hamming)", hamming_sim),
    ]
    lines = [f"Fashion-MNIST test set (Debian `dataset-fashion-mnist`), {per_class} images per class x 10 classes "
             f"(seed {seed}); each image queries the other {len(labels) - 1}; relevant = same class. "
             f"Feature extraction: {cnn_seconds:.1f} s for {len(labels)} images.", "",
             "| method | precision@10 | mAP |", "|---|---:|---:|"]
    for name, sims in rows:
        p10, m_ap = retrieval_scores(sims, labels)
        lines.append(f"| {name} | {p10:.3f} | {m_ap:.3f} |")
    chance = 1 / 10
    lines += ["", f"Chance level: precision@10 = mAP ~ {chance:.2f}."]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pixdex.models.quality", description=__doc__)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("docs/quality.md"))
    args = parser.parse_args(list(argv) if argv is not None else None)
    photos = sample_photos()
    if not photos:
        print("needs scikit-image / scikit-learn for the sample photos", file=sys.stderr)
        return 2
    analyzer = ImageAnalyzer(ModelSettings(safety=False))
    sections = {
        "labels": top_labels(analyzer, photos),
        "near": near_duplicates(analyzer, photos),
    }
    t2i_lines, t2i_summary = text_to_image(analyzer, photos)
    fashion = fashion_retrieval(analyzer, args.per_class, args.seed)
    report = render(photos, sections, t2i_lines, t2i_summary, fashion)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(_keep_other_sections(report, args.output))
    print(report)
    return 0


def _keep_other_sections(report: str, path: Path) -> str:
    """This study rewrites its own sections; sections other benchmarks wrote into the file stay."""
    if not path.is_file():
        return report
    own = {line.strip() for line in report.splitlines() if line.startswith("## ")}
    kept: list[str] = []
    keep = False
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            keep = line.strip() not in own
        if keep:
            kept.append(line)
    return report.rstrip("\n") + ("\n\n" + "\n".join(kept).rstrip("\n") + "\n" if kept else "\n")


def render(photos: dict[str, Image.Image], sections: dict[str, list[str]], t2i: list[str], t2i_summary: dict[str, str],
           fashion: list[str] | None) -> str:
    out = [
        "# Model quality", "",
        "Measured with `python -m pixdex.models.quality` (regenerates this file) on data that registry packages",
        f"ship: {len(photos)} sample photos of scikit-image and scikit-learn, and Fashion-MNIST from Debian.",
        "Models: EfficientNet-Lite0 (ImageNet-1k) and all-MiniLM-L6-v2 as built by `pixdex models build`",
        "(see layers/models/manifest.json for their export checks).", "",
        "## Labels on the sample photos", "",
        "Top classes and the searchable labels they add (class name, synonyms, WordNet parents). The",
        "integration tests assert the expected class is in the top 5 for the photos whose subject ImageNet",
        "covers (cat, espresso, rocket, moped, tripod, palace, daisy). Textures, micrographs, the moon and",
        "logos are outside ImageNet's 1000 classes and get unrelated labels: that is the model's limit.", "",
        *sections["labels"], "",
        "## Near-duplicates (image_vector cosine)", "",
        "Each sample photo against a transformed copy of itself and against every other photo.", "",
        *sections["near"], "",
        "**Superseded** as a threshold: on these few photos (10 % crops only) every transformed copy scored",
        "above 0.6 and every different photo below it, but on the 65 evaluation photos different photos reach",
        "0.77, so 0.6 is no safe cut-off. The duplicate rule pixdex uses (pHash, image and crop vectors, fused)",
        "and its thresholds are measured in 'Near duplicates and query by image (fused signals)' below.",
        "",
        "## Text-to-image on the sample photos (caption_vector, no CLIP)", "",
        "Each query is embedded with MiniLM and ranked against the photos' caption vectors. 'Pixels only'",
        "captions come from the classifier (and OCR); '+ file name words' adds the photo's file name, as the",
        "pipeline does with object keys.", "",
        *t2i, "",
        f"Hit rate (intended photo ranked first): pixels only {t2i_summary['pixels only']}; with file name "
        f"words {t2i_summary['with file name words']}.",
        "",
        "Without a CLIP pair, semantic search reaches only what the classifier can name (ImageNet-1k plus",
        "WordNet parents), OCR text and the words of names/EXIF. Queries about subjects outside ImageNet",
        "(the moon, galaxies, cells) fail unless a name or OCR carries the word. A CLIP-style pair dropped",
        "into the model folder adds clip_vector for open-vocabulary queries (wiring tested with a generated",
        "pair; no CLIP weights exist in the registries available here, so its quality is not measured).",
        "",
        "## Image-to-image retrieval on a labelled set", "",
        *(fashion or ["Fashion-MNIST not installed (`apt-get install dataset-fashion-mnist`): not measured."]),
        "",
        "Fashion-MNIST is 28x28 grayscale product shots, far from the photos the classifier was trained on,",
        "so it is a hard test for ImageNet features (upscaled to 224 px); raw pixels are unusually strong here",
        "because every item is centred on a black background at the same scale. pHash is built to find copies,",
        "not similar items: it ranks lowest, though class silhouettes keep it well above chance.",
        "",
        "## Faces and OCR", "",
        "- Faces: on scikit-image's astronaut photo the HOG detector finds the one face (a badge on the suit",
        "  scored 0.12 and is dropped by the 0.3 score floor); its 128-d vector keeps cosine > 0.9 against",
        "  mirrored and 2x upscaled copies (tests). No registry ships a multi-person face set usable here,",
        "  so same-person vs different-person separation was not measured; dlib documents 99.38% on LFW with",
        "  Euclidean distance 0.6 on raw descriptors.",
        "- OCR: scikit-image's page.png (7 lines of printed text) is read word-perfect; photos without text",
        "  stop after the low-resolution pre-check (no spurious text on the sample photos at score >= 0.6",
        "  and >= 2 characters).",
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
