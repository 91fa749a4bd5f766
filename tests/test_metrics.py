"""Metrics against scikit-learn on random data, and a hand-computed fixture."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss, ndcg_score, roc_auc_score

from rgalign_core import metrics as M


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    n = 4000
    users = rng.integers(0, 150, n)
    labels = (rng.random(n) < 0.2).astype(int)
    scores = np.round(rng.normal(size=n) + labels * 0.8, 1)  # rounded: many ties
    return users, labels, scores


@pytest.mark.parametrize("weighting", ["impressions", "clicks", "uniform"])
def test_gauc_matches_sklearn_per_user(data, weighting):
    users, labels, scores = data
    aucs, weights = [], []
    for u in np.unique(users):
        m = users == u
        if 0 < labels[m].sum() < m.sum():
            aucs.append(roc_auc_score(labels[m], scores[m]))
            weights.append({"impressions": m.sum(), "clicks": labels[m].sum(), "uniform": 1}[weighting])
    got, n = M.gauc(users, labels, scores, weighting)
    assert n == len(aucs)
    assert got == pytest.approx(np.average(aucs, weights=weights), abs=1e-12)


def test_auc_and_logloss_match_sklearn(data):
    _, labels, scores = data
    assert M.auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    p = 1 / (1 + np.exp(-scores))
    assert M.logloss(labels, p) == pytest.approx(log_loss(labels, p), abs=1e-9)


def test_gauc_hand_computed_with_single_class_user_and_ties():
    users = [1, 1, 1, 1, 2, 2, 3, 3, 3]
    labels = [1, 0, 0, 1, 0, 0, 1, 0, 0]
    scores = [0.9, 0.5, 0.5, 0.5, 0.3, 0.1, 0.2, 0.2, 0.1]
    # user 1: pos {0.9, 0.5} vs neg {0.5, 0.5}: pairs 1,1,0.5,0.5 -> 0.75 ; user 2: one class, excluded
    # user 3: pos 0.2 vs neg {0.2, 0.1}: 0.5 + 1 -> 0.75 ; impression weights 4 and 3
    g, n = M.gauc(users, labels, scores)
    assert n == 2 and g == pytest.approx(0.75)
    g, _ = M.gauc(users, [1, 0, 0, 1, 0, 0, 1, 0, 0], [0.1, 0.9, 0.9, 0.2, 0, 0, 0.3, 0.2, 0.1], "uniform")
    assert g == pytest.approx((0.0 + 1.0) / 2)



def test_session_gauc_sees_only_the_ranking_inside_each_session():
    """Raising every score of the sessions that end in a click lifts GAUC by user (it compares a
    user's impressions across sessions) and leaves session GAUC and Recall@K where they were."""
    rng = np.random.default_rng(0)
    sessions = np.repeat(np.arange(400), 5)
    users = sessions // 4  # 4 sessions per user
    labels = np.zeros(len(sessions))
    clicked = rng.random(400) < 0.5
    labels[np.flatnonzero(clicked) * 5 + rng.integers(0, 5, clicked.sum())] = 1
    scores = rng.normal(size=len(sessions)) + labels  # some ranking skill inside each session
    shifted = scores + 2.0 * clicked[sessions]  # + knowing which sessions see a click
    before, after = M.ranking_report(users, sessions, labels, scores), M.ranking_report(users, sessions, labels, shifted)
    assert after["gauc"] > before["gauc"] + 0.05
    assert after["session_gauc"] == pytest.approx(before["session_gauc"]) and after["recall_at_3"] == before["recall_at_3"]
    assert before["session_gauc"] == pytest.approx(M.gauc(sessions, labels, scores)[0])

def test_recall_and_ndcg_at_k():
    sessions = [1, 1, 1, 1, 2, 2, 2, 2, 3, 3]
    labels = [0, 0, 0, 1, 1, 0, 0, 0, 0, 0]
    scores = [0.4, 0.3, 0.2, 0.1, 0.1, 0.2, 0.9, 0.05, 0.5, 0.4]
    # session 1: clicked ranked 4th -> miss; session 2: clicked ranked 3rd -> hit; session 3: no click
    r, n = M.recall_at_k(sessions, labels, scores, k=3)
    assert (r, n) == (0.5, 2)
    nd, n = M.ndcg_at_k(sessions, labels, scores, k=3)
    assert n == 2 and nd == pytest.approx((0 + 1 / np.log2(4)) / 2)
    # against sklearn for the session with a hit
    assert 1 / np.log2(4) == pytest.approx(ndcg_score([[1, 0, 0, 0]], [[0.1, 0.2, 0.9, 0.05]], k=3))


def test_calibration():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([0.1, 0.1, 0.9, 0.9])
    assert M.calibration_ratio(labels, probs) == pytest.approx(1.0)
    assert M.ece(labels, probs, bins=10) == pytest.approx(0.1)
    assert M.calibration_ratio(labels, probs * 2) == pytest.approx(2.0)
