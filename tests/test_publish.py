"""publish's pieces on hand fixtures: the gate's checks and the serving candidates. The job itself
runs in the DAG tests (tests/test_dag.py), on the real registry."""
from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from jobs.publish import gate, latest_session_per_user, serving_requirements
from rgalign_core.serving import best_per_session, candidates

GATE = {"min_gain_over_baseline": 0.0, "min_session_gauc_gain_over_baseline": 0.0, "min_gain_over_champion": 0.002, "max_ece": 0.05}


def fig(gauc, ece=0.01, session_gauc=None):
    return {"gauc": gauc, "ece": ece, "session_gauc": gauc if session_gauc is None else session_gauc}


def test_gate_passes_only_when_every_check_does():
    ok, checks = gate(fig(0.80), fig(0.80), fig(0.78), fig(0.79), GATE, "2026-11-21", "2026-11-20")
    assert ok and [c["passed"] for c in checks] == [True, True, True, True, True]
    assert checks[2]["value"] == pytest.approx(0.01)
    # within the champion's margin: rejected on that check alone
    ok, checks = gate(fig(0.791), fig(0.80), fig(0.78), fig(0.79), GATE, "2026-11-21", "2026-11-20")
    assert not ok and [c["check"] for c in checks if not c["passed"]] == ["GAUC gain over the champion"]
    # first night, no champion: the seed is fine but the model loses to the baseline over its seeds
    ok, checks = gate(fig(0.80), fig(0.77), fig(0.78), None, GATE)
    assert not ok and len(checks) == 3 and not checks[0]["passed"]
    ok, _ = gate(fig(0.80, ece=0.08), fig(0.80), fig(0.78), None, GATE)
    assert not ok
    # more GAUC than the baseline but a worse ranking inside the sessions: the gain is click propensity
    ok, checks = gate(fig(0.80), fig(0.80, session_gauc=0.77), fig(0.78), None, GATE)
    assert not ok and [c["check"] for c in checks if not c["passed"]] == ["session GAUC gain over the baseline (means over seeds)"]
    ok, _ = gate(fig(0.80), fig(0.80), fig(0.78), None, GATE)
    assert ok


def test_gate_never_hands_the_alias_back_to_an_older_date():
    ok, checks = gate(fig(0.85), fig(0.85), fig(0.78), fig(0.79), GATE, "2026-11-20", "2026-11-21")
    assert not ok and not checks[-1]["passed"] and "2026-11-21" in checks[-1]["check"]


def test_candidates_cross_every_session_with_the_intents_that_existed_that_day():
    sessions = pd.DataFrame({"session_id": [1, 2], "user_id": [10, 11], "session_time": pd.to_datetime(["2026-11-20 23:59", "2026-11-21 00:01"]),
                             "prompt": ["a", "b"], "region": ["SG", "MY"], "tenure_days": [5, 9]})
    kb = pd.DataFrame({"intent_id": [7, 8, 9], "category": ["payment", "logistics", "account"],
                       "title": ["x", "y", "z"], "created_date": [dt.date(2026, 11, 1), dt.date(2026, 11, 20), dt.date(2026, 11, 21)],
                       "active": [True, True, True]})
    grid = candidates(sessions, kb)
    assert sorted(zip(grid.session_id, grid.intent_id)) == [(1, 7), (1, 8), (2, 7), (2, 8), (2, 9)]  # 9 is new on the 21st
    assert "prompt" not in grid and set(grid.position) == {0} and set(grid.clicked) == {0}
    ages = dict(zip(zip(grid.session_id, grid.intent_id), grid.intent_age_days))
    assert ages[(1, 7)] == 19 and ages[(2, 8)] == 1 and ages[(2, 9)] == 0
    assert grid.loc[grid.session_id == 2, "tenure_days"].eq(9).all()


def test_latest_session_per_user_and_serving_pins():
    s = pd.DataFrame({"user_id": [1, 1, 2], "session_id": [5, 6, 7],
                      "session_time": pd.to_datetime(["2026-11-21 09:00", "2026-11-21 08:00", "2026-11-20 10:00"])})
    assert sorted(latest_session_per_user(s).session_id) == [5, 7]
    pins = serving_requirements()
    assert any(p.startswith("torch==") for p in pins) and not any(p.startswith(("apache-airflow", "pyspark")) for p in pins)


def test_top_k_ties_in_probability_keep_the_rankers_order_then_intent_id():
    scored = pd.DataFrame({"session_id": [1, 1, 1, 1, 2, 2], "intent_id": [10, 11, 12, 13, 10, 11],
                           "prob": [0.5, 0.5, 0.9, 0.5, 0.2, 0.2], "score": [0.1, 0.3, 0.0, 0.1, 1.0, 1.0]})
    top = best_per_session(scored, k=3)
    assert list(zip(top.session_id, top.intent_id, top["rank"])) == [
        (1, 12, 1), (1, 11, 2), (1, 10, 3),  # 0.9 first; in the 0.5 step the higher score, then the lower id
        (2, 10, 1), (2, 11, 2)]               # a full tie: intent id; a session with fewer than k keeps them all


def test_the_bundle_must_reproduce_the_saved_test_predictions(tmp_path):
    """publish registers only a bundle that scores the test window as the evaluated ranker did."""
    import pandas as pd

    from jobs.publish import _check_reproduces
    from rgalign_core.stage import StageError

    saved = pd.DataFrame({"session_id": [1, 1, 2, 2], "intent_id": [10, 11, 10, 12], "seed": 0,
                          "prob": [0.2, 0.7, 0.4, 0.1]})
    pd.concat([saved, saved.assign(seed=1, prob=0.5)]).to_parquet(tmp_path / "test_predictions.parquet")
    scored = saved.drop(columns="seed").sample(frac=1.0, random_state=0)  # another row order
    _check_reproduces(scored, str(tmp_path), seed=0)
    with pytest.raises(StageError, match=r"differs from .*test_predictions.parquet \(seed 0\) by up to 0.01"):
        _check_reproduces(scored.assign(prob=scored.prob + 0.01), str(tmp_path), seed=0)
    with pytest.raises(StageError, match=r"the bundle scored 3 of the 4 test impressions"):
        _check_reproduces(scored.iloc[1:], str(tmp_path), seed=0)
    with pytest.raises(StageError, match=r"scored 0 of the 0 test impressions .*\(seed 2\)"):
        _check_reproduces(scored, str(tmp_path), seed=2)
