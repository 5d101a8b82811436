"""One ONNX Runtime session wrapper shared by every model family.

Sessions load lazily (a capability that is switched off or never reached costs nothing) and are cached
per process, keyed by file and runtime options, so a warm Lambda container or a long-lived worker reuses
them across invocations instead of paying graph optimisation again.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pixdex.errors import PixdexError


class ModelUnavailableError(PixdexError):
    """A model file or runtime package is missing or cannot be loaded; the same call will fail again."""

    code = "model_unavailable"
    http_status = 503


class ModelRunError(PixdexError):
    """Inference itself failed (bad input shape, runtime error)."""

    code = "model_run_error"
    http_status = 500


# "auto" picks CUDA when this onnxruntime build has it (the GPU batch task), otherwise the CPU.
AUTO_PROVIDERS: tuple[str, ...] = ("auto",)


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions run. ``intra_op_threads`` 0 lets onnxruntime use every core."""

    providers: tuple[str, ...] = AUTO_PROVIDERS
    intra_op_threads: int = 0
    # Idle intra-op threads busy-wait by default; that steals the cores from image decoding running
    # beside inference (and from neighbours on a shared host), so pixdex turns it off unless asked.
    spin_wait: bool = False

    def resolved_providers(self) -> list[str]:
        available = _available_providers()
        if tuple(self.providers) == AUTO_PROVIDERS:
            preferred = ["CUDAExecutionProvider", "CPUExecutionProvider"]
            return [p for p in preferred if p in available] or ["CPUExecutionProvider"]
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise ModelUnavailableError(
                f"onnxruntime has no provider {missing[0]!r}", available=sorted(available)
            )
        return list(self.providers)

    @property
    def uses_cuda(self) -> bool:
        return "CUDAExecutionProvider" in self.resolved_providers()


def _available_providers() -> set[str]:
    import onnxruntime as ort

    return set(ort.get_available_providers())


class OnnxSession:
    """A lazily created ``onnxruntime.InferenceSession`` with batched, thread-safe runs.

    onnxruntime sessions are safe to call from several threads, but creation is not free, so creation is
    guarded by a lock and happens once.
    """

    def __init__(self, path: Path, options: RuntimeOptions | None = None) -> None:
        self.path = Path(path)
        self.options = options or RuntimeOptions()
        self._session: Any = None
        self._error: ModelUnavailableError | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def session(self) -> Any:
        if self._session is None:
            with self._lock:
                if self._error is not None:
                    # A file that failed to load fails again: do not re-parse it for every batch.
                    raise self._error
                if self._session is None:
                    try:
                        self._session = self._create()
                    except ModelUnavailableError as exc:
                        self._error = exc
                        raise
        return self._session

    def _create(self) -> Any:
        if not self.path.is_file():
            raise ModelUnavailableError(f"model file not found: {self.path}", path=str(self.path))
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a hard runtime dependency
            raise ModelUnavailableError("onnxruntime is not installed") from exc
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # One inference at a time per session: parallelism comes from intra-op threads; inter-op threads
        # would only oversubscribe the two cores a Lambda function gets.
        so.inter_op_num_threads = 1
        if self.options.intra_op_threads > 0:
            so.intra_op_num_threads = self.options.intra_op_threads
        so.log_severity_level = 3
        if not self.options.spin_wait:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            return ort.InferenceSession(
                str(self.path), sess_options=so, providers=self.options.resolved_providers()
            )
        except ModelUnavailableError:
            raise
        except Exception as exc:  # onnxruntime raises its own untyped exceptions for corrupt graphs
            raise ModelUnavailableError(f"cannot load {self.path.name}: {exc}", path=str(self.path)) from exc

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session().get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session().get_outputs()]

    def input_shape(self, index: int = 0) -> list[int | str | None]:
        return list(self.session().get_inputs()[index].shape)

    def input_type(self, index: int = 0) -> str:
        return str(self.session().get_inputs()[index].type)

    def run(
        self, feeds: Mapping[str, npt.NDArray[Any]], outputs: Sequence[str] | None = None
    ) -> dict[str, npt.NDArray[Any]]:
        session = self.session()
        names = list(outputs) if outputs is not None else self.output_names
        try:
            values = session.run(names, dict(feeds))
        except Exception as exc:
            raise ModelRunError(f"{self.path.name}: {exc}", path=str(self.path)) from exc
        return {name: np.asarray(value) for name, value in zip(names, values, strict=True)}

    def run_batched(
        self,
        feeds: Mapping[str, npt.NDArray[Any]],
        batch_size: int,
        outputs: Sequence[str] | None = None,
    ) -> dict[str, npt.NDArray[Any]]:
        """Run over the leading axis in chunks: bounds peak memory and keeps batches the size we tuned."""
        total = len(next(iter(feeds.values())))
        if total <= batch_size:
            return self.run(feeds, outputs)
        parts: list[dict[str, npt.NDArray[Any]]] = []
        for start in range(0, total, batch_size):
            chunk = {k: v[start:start + batch_size] for k, v in feeds.items()}
            parts.append(self.run(chunk, outputs))
        return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}


_CACHE: dict[tuple[str, RuntimeOptions], OnnxSession] = {}
_CACHE_LOCK = threading.Lock()


def shared_session(path: Path, options: RuntimeOptions) -> OnnxSession:
    """The process-wide session for this file and options (warm reuse across invocations)."""
    key = (str(Path(path).resolve()), options)
    with _CACHE_LOCK:
        found = _CACHE.get(key)
        if found is None:
            found = OnnxSession(Path(path), options)
            _CACHE[key] = found
        return found


def clear_session_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()
