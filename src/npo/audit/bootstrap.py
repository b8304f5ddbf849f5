"""Percentile bootstrap intervals over items: pure numpy.

A statistic is a function of item indices, one index array per *group* (the forget items, the
holdout items, ...). Each resample draws, for every group in sorted name order, n indices with
replacement from that group's n items (`Generator.integers(0, n, size=n)`). Statistics computed on
several arrays of the same group (two models on the same forget items) see the same indices: the
resampling is paired. The interval is the (1 - level)/2 and (1 + level)/2 percentiles of the
resampled values (numpy's default linear interpolation); resamples where the statistic is not
finite (e.g. 0/0) are left out and counted.

Each interval has its own generator, seeded from the audit seed and the statistic's name, so adding
a statistic never moves the others: `numpy.random.default_rng([seed, zlib.crc32(name)])`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

Indices = dict[str, np.ndarray]


@dataclass(frozen=True)
class Interval:
    value: float  # the statistic on all items
    lo: float
    hi: float
    level: float
    n_resamples: int
    n_finite: int  # resamples that gave a finite value

    def to_dict(self) -> dict:
        return asdict(self)

    def contains(self, x: float) -> bool:
        return self.lo <= x <= self.hi


def rng_for(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


def resampled(stat: Callable[[Indices], float], sizes: dict[str, int], n_resamples: int,
              rng: np.random.Generator) -> np.ndarray:
    """The statistic on each of n_resamples resamples."""
    out = np.empty(n_resamples)
    groups = sorted(sizes)
    for b in range(n_resamples):
        out[b] = stat({g: rng.integers(0, sizes[g], size=sizes[g]) for g in groups})
    return out


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(finite, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def bootstrap(stat: Callable[[Indices], float], sizes: dict[str, int], *, name: str, seed: int,
              n_resamples: int = 1000, level: float = 0.95) -> Interval:
    if any(n < 1 for n in sizes.values()):
        raise ValueError(f"bootstrap '{name}': every group needs at least one item, got {sizes}")
    value = float(stat({g: np.arange(n) for g, n in sizes.items()}))
    values = resampled(stat, sizes, n_resamples, rng_for(seed, name))
    lo, hi = percentile_interval(values, level)
    return Interval(value, lo, hi, level, n_resamples, int(np.isfinite(values).sum()))


def nanmean(x: np.ndarray) -> float:
    """Mean over the finite entries (items a probe could not be built for are NaN); NaN when none."""
    x = np.asarray(x, dtype=np.float64)
    keep = np.isfinite(x)
    return float(x[keep].mean()) if keep.any() else float("nan")
