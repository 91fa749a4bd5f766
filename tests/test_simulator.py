"""The simulator's properties: deterministic, position-biased clicks, informative signals, cold start."""
from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import pytest

from rgalign_core import sim_world
from rgalign_core.metrics import gauc
from rgalign_core.simulator import SimParams, simulate

END = dt.date(2026, 11, 21)


@pytest.fixture(scope="module")
def world():
    raw, truth, report = simulate(SimParams(users=3000, seed=5, end=END, days=27))
    imp = raw["intent_impressions"].to_pandas()
    sessions = raw["chatbot_sessions"].to_pandas()
    rel = truth["relevance"].to_pandas()
    df = imp.merge(rel, on=["session_id", "intent_id"]).merge(sessions[["session_id", "user_id"]], on="session_id")
    return raw, truth, report, df


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_through_the_job(tmp_path, overrides):
    from jobs import simulate_logs

    for name in ("a", "b"):
        simulate_logs.main(["--ds", END.isoformat(), *overrides(**{"lake.root": str(tmp_path / name), "sim.scale": "tiny"})])
    a, b = _digests(tmp_path / "a" / "raw"), _digests(tmp_path / "b" / "raw")
    assert len(a) > 100 and a == b
    assert _digests(tmp_path / "a" / "truth") == _digests(tmp_path / "b" / "truth")
    # A different seed is a different world.
    simulate_logs.main(["--ds", END.isoformat(), *overrides(**{"lake.root": str(tmp_path / "c"), "sim.scale": "tiny", "sim.seed": 99})])
    assert _digests(tmp_path / "c" / "raw") != a


def test_click_rate_falls_with_position(world):
    *_, df = world
    ctr = df.groupby("position").clicked.mean().to_numpy()
    assert len(ctr) == 5
    assert np.all(np.diff(ctr) < 0), ctr
    assert ctr[0] > 2 * ctr[-1]


def test_sessions_without_click_exist(world):
    *_, df = world
    clicks = df.groupby("session_id").clicked.sum()
    assert 0.2 < (clicks == 0).mean() < 0.9
    assert clicks.max() == 1  # the cascade stops after a click


def test_oracle_ranker_is_near_perfect_and_random_is_not(world):
    *_, df = world
    g_oracle, users = gauc(df.user_id.values, df.clicked.values, df.relevance.values + 1e-3 * -df.position.values)
    rng = np.random.default_rng(0)
    g_random, _ = gauc(df.user_id.values, df.clicked.values, rng.random(len(df)))
    assert users > 300
    assert g_oracle > 0.85, g_oracle
    assert abs(g_random - 0.5) < 0.04, g_random


def test_text_signals_carry_the_need(world):
    """Before a session, the user's own searches/chats often contain a phrasing of its need,
    and much more often for text-only needs than the need's share alone would give."""
    raw, truth, _, _ = world
    needs = truth["session_needs"].to_pandas()
    sessions = raw["chatbot_sessions"].to_pandas().merge(needs, on="session_id")
    ev = raw["behaviour_events"].to_pandas()
    ev = ev[ev.event_type.isin(["search", "chat_message"])]
    stems = {n: [p.split("{item}")[0].strip() or p.split("{item}")[1].strip() for p in ph] for n, ph in sim_world.PHRASES.items()}
    joined = sessions.merge(ev[["user_id", "event_time", "text"]], on="user_id")
    joined = joined[(joined.event_time < joined.session_time)
                    & (joined.event_time > joined.session_time - np.timedelta64(6, "h"))]
    hit = joined.apply(lambda r: any(s in r.text for s in stems[r.need]), axis=1)
    by_session = joined.assign(hit=hit).groupby("session_id").hit.any().reindex(sessions.session_id, fill_value=False)
    kind = sessions.need.map(lambda n: sim_world.NEEDS[n][1]).values
    text_rate = by_session.values[kind == "text"].mean()
    discrete_rate = by_session.values[kind == "discrete"].mean()
    assert text_rate > 0.7, text_rate
    assert discrete_rate > 0.25, discrete_rate


def test_cold_start_intents_are_shown_in_the_test_window(world):
    raw, *_ , df = world
    kb = raw["kb_intents"].to_pandas()
    kb_last = kb[kb.dt == END]
    cold = set(kb_last[kb_last.created_date > END - dt.timedelta(days=7)].intent_id)
    assert len(cold) >= 3
    imp = raw["intent_impressions"].to_pandas()
    test_window = imp[imp.dt >= END - dt.timedelta(days=2)]
    shown = test_window[test_window.intent_id.isin(cold)]
    assert len(shown) > 50 and shown.clicked.sum() > 5
    # and never before they were created
    created = dict(zip(kb_last.intent_id, kb_last.created_date))
    assert all(d >= created[i] for i, d in zip(imp.intent_id, imp.dt) if i in cold)


def test_kb_shape():
    cats = {c for _, c, *_ in sim_world.KB}
    assert len(sim_world.KB) >= 60 and len(cats) >= 8
    # every need has at least one intent that answers it fully
    best = {}
    for _, _, needs, _, _ in sim_world.KB:
        for n, g in needs.items():
            best[n] = max(best.get(n, 0), g)
    assert set(best) == set(sim_world.NEEDS) and all(g == 3 for g in best.values())
