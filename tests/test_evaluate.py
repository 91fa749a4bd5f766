"""evaluate's pieces on hand fixtures: slices are whole sessions; the summary and the headline
(Δ and z over seeds), and each stage against the one before it, are computed as stated."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from jobs import evaluate

ECFG = {"baseline": "base", "candidate": "qe"}


def flat():
    # 3 sessions x 2 impressions: s1 clicks a cold-start intent, s2 shows one and clicks another, s3 no click
    return {
        "session_id": np.array([1, 1, 2, 2, 3, 3]), "user_id": np.array([7, 7, 8, 8, 9, 9]),
        "region": np.array(["SG", "SG", "ID", "ID", "SG", "SG"]),
        "cold": np.array([True, False, False, True, False, False]),
        "clicked": np.array([1, 0, 1, 0, 0, 0]),
        "intent_category": np.array(["logistics", "payment", "payment", "logistics", "app", "app"]),
    }


def test_slices_are_whole_sessions():
    s = evaluate.slices(flat())
    assert s["cold-start intent clicked"].tolist() == [True, True, False, False, False, False]
    assert s["cold-start intent shown"].tolist() == [True, True, True, True, False, False]
    assert s["region=SG"].tolist() == [True, True, False, False, True, True]
    assert s["clicked category=payment"].tolist() == [False, False, True, True, False, False]
    assert "clicked category=app" not in s  # no click there
    assert not any(name.startswith("latent need") for name in s)  # no simulator truth given
    kinds = evaluate.slices({**flat(), "need_kind": np.array(["text"] * 2 + ["discrete"] * 4)})
    assert kinds["latent need=text"].tolist() == [True, True, False, False, False, False]
    assert kinds["latent need=discrete"].tolist() == [False, False, True, True, True, True]


def table(values: dict) -> pd.DataFrame:
    """variant -> per-seed (gauc, recall) on the overall and cold-start slices."""
    rows = []
    for variant, seeds in values.items():
        for seed, (g, r) in enumerate(seeds):
            for sl in evaluate.HEADLINE_SLICES:
                rows.append({"variant": variant, "seed": seed, "slice": sl, "gauc": g, "session_gauc": g, "recall_at_3": r, "auc": g,
                             "ndcg_at_3": r, "logloss": 0.3, "calibration_ratio": 1.0, "ece": 0.01, "sessions_with_click": 10})
    return pd.DataFrame(rows)


def test_summary_and_headline_z():
    values = {"base": [(0.70, 0.80), (0.72, 0.82), (0.71, 0.81)], "qe": [(0.75, 0.85), (0.77, 0.86), (0.76, 0.87)],
              "qe+sft": [(0.78, 0.86), (0.78, 0.88), (0.78, 0.87)]}
    t = table(values)
    summary = evaluate.summarise(t, list(values))
    assert summary.loc[("overall", "qe"), ("mean", "gauc")] == pytest.approx(0.76)
    assert summary.loc[("overall", "qe"), ("std", "gauc")] == pytest.approx(0.01)
    md, head = evaluate.render(summary, t, list(values), ECFG)
    assert head["overall_gauc_delta"] == pytest.approx(0.05)
    assert head["overall_gauc_z"] == pytest.approx(0.05 / np.hypot(0.01, 0.01))
    assert head["overall_gauc_delta_for_z3"] == pytest.approx(3 * np.hypot(0.01, 0.01))
    assert f"| overall | gauc | +0.0500 | +{0.05 / np.hypot(0.01, 0.01):.1f} | +{3 * np.hypot(0.01, 0.01):.4f} |" in md
    # each stage against the one before it: qe+sft vs qe
    assert head["stage.qe_sft.gauc_delta"] == pytest.approx(0.02)
    assert "| qe+sft | qe | overall | +0.0200 (+2.0) |" in md
