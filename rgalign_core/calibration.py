"""Score calibration: map a ranker's scores to click probabilities, fitted on the validation window.

Temperature scaling with a bias (p = σ(a·s + b)) or isotonic regression on σ(s); ``choose`` picks
the one with the lower held-out logloss (2 folds by session). A calibrator is a small JSON-able
dict, saved next to the ranker (``calibration.json``) and applied by ``apply`` in evaluation and
serving.
"""
from __future__ import annotations

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def fit_temperature(scores: np.ndarray, labels: np.ndarray) -> dict:
    """p = σ(a·s + b) by minimising logloss (Platt / temperature scaling with a bias)."""
    from scipy.optimize import minimize

    s, y = np.asarray(scores, np.float64), np.asarray(labels, np.float64)

    def nll(w):
        z = w[0] * s + w[1]
        return float(np.mean(np.logaddexp(0, z) - y * z))

    w = minimize(nll, np.array([1.0, 0.0]), method="L-BFGS-B").x
    return {"method": "temperature", "a": float(w[0]), "b": float(w[1])}


def fit_isotonic(scores: np.ndarray, labels: np.ndarray) -> dict:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=1e-6, y_max=1 - 1e-6, out_of_bounds="clip").fit(sigmoid(scores), labels)
    return {"method": "isotonic", "x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}


def apply(cal: dict, scores: np.ndarray) -> np.ndarray:
    if cal["method"] == "temperature":
        return sigmoid(cal["a"] * np.asarray(scores, np.float64) + cal["b"])
    if cal["method"] == "isotonic":
        return np.clip(np.interp(sigmoid(scores), cal["x"], cal["y"]), 1e-6, 1 - 1e-6)
    return sigmoid(scores)


FITTERS = {"temperature": fit_temperature, "isotonic": fit_isotonic}


def choose(scores: np.ndarray, labels: np.ndarray, sessions: np.ndarray, method: str, seed: int = 0) -> tuple[dict, dict]:
    """The calibrator (fitted on all rows) and each candidate's held-out logloss (2 folds by session)."""
    from rgalign_core.metrics import logloss

    methods = list(FITTERS) if method == "auto" else [method]
    uniq = np.unique(sessions)
    fold_of = dict(zip(uniq, np.random.default_rng(seed).integers(0, 2, len(uniq))))
    fold = np.array([fold_of[s] for s in sessions])
    held_out = {}
    for m in methods:
        losses = []
        for k in (0, 1):
            tr, te = fold != k, fold == k
            if tr.sum() == 0 or te.sum() == 0:
                continue
            losses.append(logloss(labels[te], apply(FITTERS[m](scores[tr], labels[tr]), scores[te])))
        held_out[m] = float(np.mean(losses)) if losses else float("inf")
    best = min(held_out, key=held_out.get)
    return FITTERS[best](scores, labels), held_out
