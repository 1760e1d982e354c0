"""Distribution shift between stable and canary: PSI and total variation, with numpy.

Population stability index of a candidate distribution p against a reference q over the same k bins::

    PSI = sum_i (p_i - q_i) * ln(p_i / q_i)

where p_i, q_i are the shares of each bin (counts / total). It is the symmetrised KL divergence
KL(p||q) + KL(q||p), so it is >= 0, 0 only for identical shares, and does not care which side is the reference.
Rule of thumb: < 0.1 no real shift, 0.1-0.25 moderate, > 0.25 large.

Empty bins. ln(p/q) is infinite when a bin is empty on one side only. Each side's shares are floored at
`eps` (default 1e-4, i.e. "at most one in ten thousand") and renormalised to sum to 1 before the sum, so an
empty bin contributes a large but finite term (a share of 5% against an empty bin adds about 0.30). Bins empty on
both sides contribute exactly 0. With n samples per side, sampling noise alone gives a PSI of about
(k - 1) * (1/n_p + 1/n_q), which is why the gates demand minimum sample counts.

Total variation distance: TV = 0.5 * sum_i |p_i - q_i|, in [0, 1]: the share of traffic whose label would have to
change to turn one distribution into the other. No epsilon needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

DEFAULT_EPS = 1e-4


def _shares(counts: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(counts, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected one count per bin, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"{name}: counts must be finite and non-negative")
    total = a.sum()
    if total <= 0:
        raise ValueError(f"{name}: no samples (all counts are zero)")
    return a / total


def psi(
    candidate: Sequence[float] | np.ndarray, reference: Sequence[float] | np.ndarray, eps: float = DEFAULT_EPS
):
    """PSI of `candidate` bin counts against `reference` bin counts (same bins, same order)."""
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    p, q = _shares(candidate, "candidate"), _shares(reference, "reference")
    if p.shape != q.shape:
        raise ValueError(f"bin counts differ: candidate has {p.size} bins, reference {q.size}")
    both_empty = (p == 0) & (q == 0)
    p, q = p[~both_empty], q[~both_empty]
    p = np.maximum(p, eps)
    q = np.maximum(q, eps)
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum((p - q) * np.log(p / q)))


def total_variation(
    candidate: Sequence[float] | np.ndarray, reference: Sequence[float] | np.ndarray
) -> float:
    """Total variation distance (0..1) between two count vectors over the same bins."""
    p, q = _shares(candidate, "candidate"), _shares(reference, "reference")
    if p.shape != q.shape:
        raise ValueError(f"bin counts differ: candidate has {p.size} bins, reference {q.size}")
    return float(0.5 * np.abs(p - q).sum())


def align(
    candidate: Mapping[str, float], reference: Mapping[str, float]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Two label->count maps as count vectors over the union of their labels (missing = 0), sorted by label."""
    keys = sorted(set(candidate) | set(reference))
    return (
        keys,
        np.array([float(candidate.get(k, 0.0)) for k in keys]),
        np.array([float(reference.get(k, 0.0)) for k in keys]),
    )


def histogram_bins(cumulative: Mapping[float, float]) -> tuple[list[float], np.ndarray]:
    """Per-bin counts from Prometheus cumulative buckets {le: count} (`+Inf` = float('inf') included).

    Bin i holds the samples in (le_{i-1}, le_i]. Counter resets and rate() extrapolation can make a cumulative
    series dip slightly; negative differences are clipped to 0.
    """
    if not cumulative:
        return [], np.zeros(0)
    edges = sorted(cumulative)
    cum = np.array([float(cumulative[le]) for le in edges])
    counts = np.diff(cum, prepend=0.0)
    return edges, np.clip(counts, 0.0, None)
