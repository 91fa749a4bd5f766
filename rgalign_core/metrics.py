"""Ranking metrics, vectorised with numpy (sort + segment sums; no loop over users)."""
from __future__ import annotations

import numpy as np


def _segment_auc(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray):
    """Per-group AUC with ties counted as half (the Mann-Whitney U form that roc_auc_score uses).

    Returns (group ids, auc per group, impressions per group, positives per group); groups with
    only one class get auc = nan.
    """
    groups = np.asarray(groups)
    y = np.asarray(labels).astype(np.float64)
    s = np.asarray(scores).astype(np.float64)
    n = len(y)
    if n == 0:
        return np.array([]), np.array([]), np.array([]), np.array([])
    order = np.lexsort((s, groups))
    g, y, s = groups[order], y[order], s[order]
    new_group = np.empty(n, bool)
    new_group[0] = True
    new_group[1:] = g[1:] != g[:-1]
    new_tie = new_group.copy()
    new_tie[1:] |= s[1:] != s[:-1]
    group_idx = np.cumsum(new_group) - 1
    tie_idx = np.cumsum(new_tie) - 1
    pos = np.arange(n, dtype=np.float64)
    tie_first = np.minimum.reduceat(pos, np.flatnonzero(new_tie))
    tie_last = np.maximum.reduceat(pos, np.flatnonzero(new_tie))
    avg_pos = ((tie_first + tie_last) / 2.0)[tie_idx]
    group_start = pos[new_group][group_idx]
    rank = avg_pos - group_start + 1.0  # 1-based rank within the group, ties averaged
    count = np.bincount(group_idx).astype(np.float64)
    n_pos = np.bincount(group_idx, weights=y)
    rank_pos = np.bincount(group_idx, weights=rank * y)
    n_neg = count - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return g[new_group], auc, count, n_pos


def auc(labels, scores) -> float:
    _, a, _, _ = _segment_auc(np.zeros(len(labels), np.int8), labels, scores)
    return float(a[0]) if len(a) else float("nan")


def gauc(users, labels, scores, weighting: str = "impressions") -> tuple[float, int]:
    """Group AUC: per-user AUC averaged over users with both a click and a non-click.

    weighting: "impressions" (default, as in the paper), "clicks" or "uniform".
    Returns (gauc, number of users used).
    """
    _, a, count, n_pos = _segment_auc(users, labels, scores)
    ok = ~np.isnan(a)
    if not ok.any():
        return float("nan"), 0
    weights = {"impressions": count, "clicks": n_pos, "uniform": np.ones_like(count)}
    if weighting not in weights:
        raise ValueError(f"weighting must be one of {sorted(weights)}, got {weighting!r}")
    w = weights[weighting][ok]
    return float(np.sum(a[ok] * w) / np.sum(w)), int(ok.sum())
