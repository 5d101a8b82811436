"""Model families over one ONNX session wrapper: classifier, text embedder, CLIP pair, OCR, faces, safety.

Import :mod:`pixdex.models.analysis` for the orchestrator; submodules load their runtimes lazily.
"""
