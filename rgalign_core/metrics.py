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


def logloss(labels, probs, eps: float = 1e-7) -> float:
    y = np.asarray(labels, np.float64)
    p = np.clip(np.asarray(probs, np.float64), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def calibration_ratio(labels, probs) -> float:
    """Σp / Σy: 1 when predicted CTR matches observed CTR overall."""
    return float(np.sum(probs) / max(np.sum(labels), 1e-12))


def ece(labels, probs, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins, weighted by bin size."""
    y = np.asarray(labels, np.float64)
    p = np.asarray(probs, np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    n = np.bincount(idx, minlength=bins)
    conf = np.bincount(idx, weights=p, minlength=bins)
    acc = np.bincount(idx, weights=y, minlength=bins)
    ok = n > 0
    return float(np.sum(np.abs(conf[ok] - acc[ok])) / len(y))


def reliability(labels, probs, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean predicted, observed rate, count) per equal-width bin, for reliability diagrams."""
    y = np.asarray(labels, np.float64)
    p = np.asarray(probs, np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    n = np.bincount(idx, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.bincount(idx, weights=p, minlength=bins) / n, np.bincount(idx, weights=y, minlength=bins) / n, n


def _session_ranks(sessions, scores) -> np.ndarray:
    """0-based rank of each row's score within its session (highest first; ties by row order)."""
    sessions = np.asarray(sessions)
    s = np.asarray(scores, np.float64)
    order = np.lexsort((np.arange(len(s)), -s, sessions))
    g = sessions[order]
    start = np.empty(len(g), bool)
    if len(g):
        start[0] = True
        start[1:] = g[1:] != g[:-1]
    first = np.maximum.accumulate(np.where(start, np.arange(len(g)), 0))
    ranks = np.empty(len(s), np.int64)
    ranks[order] = np.arange(len(g)) - first
    return ranks


def recall_at_k(sessions, labels, scores, k: int = 3) -> tuple[float, int]:
    """Share of clicked intents ranked in the session's top k, over sessions with a click.

    Returns (recall, number of sessions used)."""
    sessions = np.asarray(sessions)
    y = np.asarray(labels) > 0
    ranks = _session_ranks(sessions, scores)
    clicked_sessions, inverse = np.unique(sessions[y], return_inverse=True)
    if not len(clicked_sessions):
        return float("nan"), 0
    hits = np.bincount(inverse, weights=(ranks[y] < k).astype(float))
    n_clicked = np.bincount(inverse).astype(float)
    return float(np.mean(hits / n_clicked)), int(len(clicked_sessions))


def ndcg_at_k(sessions, labels, scores, k: int = 3) -> tuple[float, int]:
    """NDCG@k with binary gains over the session's shown intents, over sessions with a click."""
    sessions = np.asarray(sessions)
    y = (np.asarray(labels) > 0).astype(np.float64)
    ranks = _session_ranks(sessions, scores)
    uniq, inverse = np.unique(sessions, return_inverse=True)
    dcg = np.bincount(inverse, weights=np.where(ranks < k, y / np.log2(ranks + 2.0), 0.0), minlength=len(uniq))
    n_pos = np.bincount(inverse, weights=y, minlength=len(uniq)).astype(int)
    ideal_table = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))])
    idcg = ideal_table[np.minimum(n_pos, k)]
    ok = n_pos > 0
    if not ok.any():
        return float("nan"), 0
    return float(np.mean(dcg[ok] / idcg[ok])), int(ok.sum())


def z_score(mean_a: float, sd_a: float, mean_b: float, sd_b: float) -> float:
    """How many standard deviations a's mean is above b's: (mean_a - mean_b) / sqrt(sd_a² + sd_b²),
    with each sd over seeds (the ablation's "more than 3 sigma")."""
    return float((mean_a - mean_b) / max(float(np.hypot(sd_a, sd_b)), 1e-12))


def ranking_report(users, sessions, labels, scores, probs=None, k: int = 3, weighting: str = "impressions") -> dict:
    """Every metric the evaluation reports, for one set of scored impressions.

    ``session_gauc`` is GAUC with the session as the group: the ranking inside each session only.
    GAUC by user also compares a user's impressions across their sessions, so it rewards scoring a
    whole session by how likely it is to see a click, which Recall@K cannot see; the two side by
    side show how much of a GAUC gain is ranking."""
    g, n_users = gauc(users, labels, scores, weighting)
    r, n_sessions = recall_at_k(sessions, labels, scores, k)
    out = {"gauc": g, "gauc_users": n_users, "session_gauc": gauc(sessions, labels, scores, weighting)[0], "auc": auc(labels, scores), f"recall_at_{k}": r, f"ndcg_at_{k}": ndcg_at_k(sessions, labels, scores, k)[0],
           "sessions_with_click": n_sessions, "impressions": int(len(labels))}
    if probs is not None:
        out.update({"logloss": logloss(labels, probs), "calibration_ratio": calibration_ratio(labels, probs), "ece": ece(labels, probs)})
    return out
