"""Small helpers the comparison benchmarks share: percentiles, ratios, the equal-quality search, machine notes."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    if not samples:
        raise ValueError("no samples")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Latency:
    count: int
    p50: float
    p95: float
    p99: float
    mean: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Latency:
        return cls(len(samples), percentile(samples, 50), percentile(samples, 95), percentile(samples, 99),
                   sum(samples) / len(samples))


def ratio(value: float, baseline: float) -> float:
    """value / baseline; infinite when the baseline is zero and the value is not (never a silent 0)."""
    if baseline == 0:
        return 1.0 if value == 0 else math.inf
    return value / baseline


def fmt_ratio(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.2f}x"


@dataclass(frozen=True)
class QualityHit:
    """The lowest encoder setting whose measured quality reaches the target, and what it gave."""

    setting: int
    score: float
    size: int
    reached: bool  # False: even the highest setting stayed below the target (then setting = highest)
    probes: int


def search_setting(measure: Callable[[int], tuple[float, int]], target: float, lo: int = 1,
                   hi: int = 100) -> QualityHit:
    """Bisect an integer encoder setting (a quality knob) for the lowest one whose score is >= target.

    ``measure(setting) -> (score, bytes)``: encode at the setting, decode, score against the reference.
    Encoders' quality knobs are monotone in the large but not step by step (a setting can score a hair
    below its neighbour); the bisection assumes monotony, and every probe is remembered so the answer is
    the lowest *probed* setting that reached the target, which is never a setting that missed it.
    """
    if lo > hi:
        raise ValueError(f"empty range {lo}..{hi}")
    seen: dict[int, tuple[float, int]] = {}

    def probe(setting: int) -> tuple[float, int]:
        if setting not in seen:
            seen[setting] = measure(setting)
        return seen[setting]

    if probe(hi)[0] < target:
        score, size = seen[hi]
        return QualityHit(hi, score, size, False, len(seen))
    left, right = lo, hi  # invariant: right reaches the target
    while left < right:
        mid = (left + right) // 2
        if probe(mid)[0] >= target:
            right = mid
        else:
            left = mid + 1
    best = min(s for s, (score, _) in seen.items() if score >= target)
    score, size = seen[best]
    return QualityHit(best, score, size, True, len(seen))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def machine_note() -> str:
    """One line for a report: processor, cores, Python, load average now."""
    return (f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, load average "
            f"(1/5/15 min) {load_average()} at the start")
