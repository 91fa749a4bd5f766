"""reward_select: the reward on a hand-made QE-Rec, best/worst selection, and the job end to end.

The end-to-end test builds a tiny lake with the real upstream jobs (simulate_logs ... train_qe_rec,
about 2-3 minutes on two cores) once per module, then runs reward_select on it.
"""
from __future__ import annotations

import collections
import datetime as dt
import hashlib
import json
import math

import numpy as np
import pytest
import torch

from conftest import stage_overrides
from jobs import reward_select as RS
from rgalign_core import contract, train_ranker
from rgalign_core.ranking_data import CATEGORICAL, NUMERIC, TITLE_TOKENS, RankData, Vocab

MODEL_CFG = {"field_dim": 4, "dim": 8, "heads": 2, "autoint_layers": 1, "experts": 2, "hidden": 16, "dropout": 0.1}
H = 6


def tiny_data(sessions=(10, 11, 12, 13, 14), K=4, seed=0) -> RankData:
    """A hand-made RankData: session 11 has no click, session 13 shows only 3 intents, 14 has two clicks."""
    rng = np.random.default_rng(seed)
    S = len(sessions)
    vocab = Vocab(intent_ids=list(range(1, 9)), categories=list(contract.INTENT_CATEGORIES),
                  title_words=["late", "refund", "order"])
    mask = np.ones((S, K), bool)
    mask[3, 3] = False
    clicked = np.zeros((S, K), np.float32)
    for i, col in enumerate([2, None, 0, 1, 3]):
        if col is not None:
            clicked[i, col] = 1
    clicked[4, 1] = 1
    title = rng.integers(0, 4, (S, K, TITLE_TOKENS))
    tensors = {
        "cat": torch.from_numpy(np.stack([rng.integers(1, len(v) + 1, S) for v in CATEGORICAL.values()], 1)),
        "num": torch.from_numpy(rng.random((S, len(NUMERIC)), dtype=np.float32)),
        "num_missing": torch.zeros(S, len(NUMERIC)),
        "intent": torch.from_numpy(rng.integers(1, 9, (S, K)) * mask),
        "intent_cat": torch.from_numpy(rng.integers(0, len(vocab.categories), (S, K))),
        "intent_title": torch.from_numpy(title * mask[..., None]),
        "intent_age": torch.from_numpy(rng.random((S, K), dtype=np.float32)),
        "position": torch.from_numpy(np.tile(np.arange(K), (S, 1))),
        "clicked": torch.from_numpy(clicked),
        "mask": torch.from_numpy(mask),
        "query": torch.from_numpy(rng.normal(size=(S, H)).astype(np.float32)),
    }
    return RankData(session_id=np.array(sessions), user_id=np.arange(S), day=np.full(S, np.datetime64("2026-03-01", "D")),
                    region=np.full(S, "SG"), tensors=tensors, intent_id=np.zeros((S, K), np.int64),
                    intent_category=np.full((S, K), "", object), cold=np.zeros((S, K), bool), vocab=vocab, query_dim=H)


@pytest.fixture(scope="module")
def setup():
    data = tiny_data()
    model = train_ranker.build("qe_rec", train_ranker.schema_of(data), MODEL_CFG, seed=3).eval()
    return model, data


def fake_embed(prompts, texts):
    """A deterministic vector per (prompt, text), scaled so candidates really change the scores."""
    out = []
    for p, t in zip(prompts, texts):
        seed = int(hashlib.sha256(f"{p}|{t}".encode()).hexdigest()[:8], 16)
        out.append(np.random.default_rng(seed).normal(size=H) * 3)
    return np.asarray(out, np.float32)


def test_reward_is_the_log_softmax_of_the_clicked_logit(setup):
    model, data = setup
    rows = np.array([0, 0, 2, 3, 4, 1])
    q = fake_embed(["p"] * len(rows), [f"q{i}" for i in range(len(rows))])
    reward, rank = RS.score(model, data, rows, q, score_batch=4)
    b = data.batch(rows)
    b["query"] = torch.from_numpy(q)
    with torch.no_grad():
        logits = model(b).numpy()
    mask, clicked = b["mask"].numpy(), b["clicked"].numpy()
    for i in range(len(rows)):
        shown = logits[i][mask[i]]
        logp = shown - np.log(np.exp(shown - shown.max()).sum()) - shown.max()
        hits = np.nonzero(clicked[i][mask[i]])[0]
        if len(hits) == 0:  # session 11: no click
            assert math.isnan(reward[i]) and rank[i] == 0
            continue
        assert reward[i] == pytest.approx(logp[hits].mean(), abs=1e-5)
        assert rank[i] == min(1 + int((shown > shown[h]).sum()) for h in hits)
    assert mask[3].sum() == 3 and 1 <= rank[3] <= 3  # the padded slot never counts
    # the two candidates of session 10 differ: the query really reaches the score
    assert reward[0] != reward[1]
    # vectorised (rows repeated, several per batch) == one at a time
    for i in range(len(rows)):
        r1, k1 = RS.score(model, data, rows[i:i + 1], q[i:i + 1])
        np.testing.assert_allclose(r1, reward[i:i + 1], atol=1e-5, equal_nan=True)
        assert k1[0] == rank[i]
    # None keeps the query embedding already in the data (the reasoner's greedy query)
    g, _ = RS.score(model, data, np.array([0]), None)
    with torch.no_grad():
        lg = model(data.batch([0]))
    assert g[0] == pytest.approx(float(torch.log_softmax(lg, 1)[0, 2]), abs=1e-5)


def test_select_best_worst_rank_tie_break_and_shared_wins():
    c = RS.select([-1.0, -0.2, -3.0, -0.5], [2, 1, 4, 1])
    assert (c.best, c.worst, c.tied) == (1, 2, [1])
    # rewards within tol: the lower clicked rank wins, even with a slightly lower reward
    c = RS.select([-0.5000001, -0.5, -2.0], [1, 2, 3], tol=1e-6)
    assert c.best == 0 and c.tied == [0]
    assert RS.select([-0.5000001, -0.5, -2.0], [1, 2, 3], tol=0.0).best == 1
    # equal on both: the win is shared, the first is picked
    c = RS.select([-0.5, -0.5, -1.0, -1.0], [1, 1, 2, 3])
    assert c.best == 0 and c.tied == [0, 1] and c.worst == 3  # worst: lowest reward, then the worse rank
    c = RS.select([-0.7], [2])
    assert c.best == c.worst == 0


def test_dedupe_keeps_the_first_and_drops_empty():
    rows = [{"latent_query": q, "teacher_id": t} for q, t in
            [("Where is my order?", "a"), ("where is my order", "b"), ("", "b"), ("Refund please", "b")]]
    kept, dropped = RS.dedupe(rows)
    assert [(r["latent_query"], r["teacher_id"]) for r in kept] == [("Where is my order?", "a"), ("Refund please", "b")]
    assert dropped == 1


def candidates_for(spec: dict) -> list[dict]:
    return [{"session_id": sid, "teacher_id": t, "candidate_idx": i, "latent_query": q}
            for sid, per in spec.items() for t, qs in per.items() for i, q in enumerate(qs)]


CANDS = {
    10: {"t1": ["where is my parcel", "is my order late"], "t2": ["I want a refund", "Where is my parcel?"]},  # a dup
    11: {"t1": ["no click here"], "t2": ["none"]},
    12: {"t2": ["only one candidate"]},
    13: {"t1": ["a", "b"], "t2": ["c"]},
    14: {"t1": ["two clicks"], "t2": ["refund status"]},
}
SESSIONS = [{"session_id": s, "prompt": f"prompt of {s}"} for s in (10, 11, 12, 13, 14, 99)]  # 99: nothing shown


def test_score_day(setup):
    model, data = setup
    rcfg = {"tie_tol": 0.0, "min_margin": 0.0, "score_batch": 3, "chunk_sessions": 2}
    calls = []
    res = RS.score_day(model, data, SESSIONS, candidates_for(CANDS), lambda p, t: calls.append(len(t)) or fake_embed(p, t),
                       rcfg, greedy={10: "greedy ten"}, n_samples=2)
    c = res.counts
    assert (c["sessions_scored"], c["sessions_skipped_no_click"], c["sessions_skipped_not_shown"]) == (4, 1, 1)
    assert c["duplicates_dropped"] == 1 and c["candidates_scored"] == 3 + 1 + 3 + 2 == len(res.scored)
    assert sum(calls) == 9 and len(calls) == 2  # chunks of 2 sessions
    by = collections.defaultdict(list)
    for r in res.scored:
        by[r["session_id"]].append(r)
    assert set(by) == {10, 12, 13, 14}
    assert [(r["teacher_id"], r["candidate_idx"]) for r in by[10]] == [("t1", 0), ("t1", 1), ("t2", 0)]  # dup dropped
    for b in res.best:
        rewards = [r["reward"] for r in by[b["session_id"]]]
        assert b["best_reward"] == max(rewards) and b["n_candidates"] == len(rewards)
        cand = next(x for x in candidates_for(CANDS) if x["latent_query"] == b["best_query"])
        assert cand["teacher_id"] == b["best_teacher_id"] and b["prompt"] == f"prompt of {b['session_id']}"
        # the reward equals scoring that one candidate alone
        row = int(np.nonzero(data.session_id == b["session_id"])[0][0])
        alone, _ = RS.score(model, data, np.array([row]), fake_embed([b["prompt"]], [b["best_query"]]))
        assert alone[0] == pytest.approx(b["best_reward"], abs=1e-5)
    assert {p["session_id"] for p in res.pairs} == {10, 13, 14}  # 12 has a single candidate
    for p in res.pairs:
        rewards = [r["reward"] for r in by[p["session_id"]]]
        assert p["margin"] == pytest.approx(max(rewards) - min(rewards), abs=1e-6) and p["margin"] > 0
        assert p["chosen"] != p["rejected"]
    assert sum(res.wins.values()) == pytest.approx(4)
    assert len(res.greedy_rewards) == 4 and len(res.samples) == 2
    # a margin threshold above every margin: no pairs, same winners
    big = RS.score_day(model, data, SESSIONS, candidates_for(CANDS), fake_embed, {**rcfg, "min_margin": 1e6})
    assert big.pairs == [] and big.best == res.best
    # stale candidates (a session unknown to features/sessions) are an error
    with pytest.raises(RS.stage.StageError, match="stale"):
        RS.score_day(model, data, SESSIONS[:2], candidates_for(CANDS), fake_embed, rcfg)


def test_markdown_marks_winner_and_loser():
    md = RS.samples_markdown({7: {"prompt": "P", "greedy": "g", "greedy_reward": -1.0, "best": 1, "worst": 0, "tied": [1],
                                  "candidates": [("t1", "q1", -2.0, 3), ("t2", "q2", -0.1, 1)]}},
                             {"t1": 0.0, "t2": 1.0},
                             {"best_reward_mean": -0.1, "greedy_reward_mean": -1.0, "pairs": 1, "margin_mean": 1.9})
    assert "| ✅ | `t2` | q2 | -0.1000 | 1 |" in md and "| ❌ | `t1` | q1 | -2.0000 | 3 |" in md and "> P" in md


# ---- end to end on a tiny lake -------------------------------------------------------------------

DS = "2026-11-21"
WINDOWS = {"windows.train_days": 3, "windows.valid_days": 2, "windows.test_days": 1, "windows.feature_lookback_days": 3}
UPSTREAM = [
    ("simulate_logs", ["--set", "sim.scale=tiny"]),
    ("validate_raw", []),
    ("extract_features", []),
    ("bootstrap_reasoner", ["--set", "train.steps=5"]),
    ("teachers_generate", ["--set", "teachers.specs=[builtin:rules,builtin:retrieval]"]),
    ("encode_queries", ["--set", "reasoner.max_new_tokens=4"]),  # greedy decoding dominates the setup time
    ("train_qe_rec", ["--set", "ranker.seeds=[0]", "--set", "ranker.epochs=1"]),
]


@pytest.fixture(scope="module")
def tiny_lake(tmp_path_factory):
    import importlib

    tmp = tmp_path_factory.mktemp("reward_lake")
    for name, extra in UPSTREAM:
        importlib.import_module(f"jobs.{name}").main(["--ds", DS, *stage_overrides(tmp, **WINDOWS), *extra])
    return tmp


def test_job_end_to_end(tiny_lake):
    import mlflow

    from rgalign_core.lake import Lake
    from rgalign_core.stage import windows

    argv = ["--ds", DS, *stage_overrides(tiny_lake, **WINDOWS), "--set", "reward.samples_in_report=4"]
    result = RS.main(argv)
    lake = Lake(str(tiny_lake / "lake"))
    days = windows(dt.date.fromisoformat(DS), {"windows": {k.split(".")[1]: v for k, v in WINDOWS.items()}})["train"]
    sch = RS.schemas()
    n_best = n_pairs = 0
    first_pairs = []
    for d in days:
        tables = {}
        for t in RS.TABLES:
            part = lake.partition("rewards", t, d)
            assert lake.is_complete(part) and lake.marker(part)["fingerprint"]
            tables[t] = lake.read_partition(part, f"rewards.{t}")
            assert tables[t].schema == sch[t], t
        scored = collections.defaultdict(list)
        for r in tables["scored"].to_pylist():
            scored[r["session_id"]].append(r)
        best = tables["best"].to_pylist()
        assert best and {b["session_id"] for b in best} == set(scored)
        tol = 1e-6
        for b in best:
            rewards = [r["reward"] for r in scored[b["session_id"]]]
            assert all(b["best_reward"] >= r - tol for r in rewards) and b["n_candidates"] == len(rewards)
            assert all(r["rank_of_clicked"] >= 1 and r["reward"] <= 0 for r in scored[b["session_id"]])
        for p in tables["pairs"].to_pylist():
            assert p["margin"] > 0.0 and p["chosen"] != p["rejected"] and len(scored[p["session_id"]]) >= 2
            assert p["margin"] == pytest.approx(max(r["reward"] for r in scored[p["session_id"]])
                                                - min(r["reward"] for r in scored[p["session_id"]]), abs=1e-5)
        n_best += len(best)
        n_pairs += tables["pairs"].num_rows
        first_pairs += tables["pairs"].to_pylist()
    assert result["sessions_scored"] == n_best and result["pairs"] == n_pairs > 0
    assert result["sessions_skipped_no_click"] > 0
    assert result["teacher_ids"] == ["builtin:rules", "builtin:retrieval"]
    wr = {t: result[f"win_rate.{t.replace(':', '_')}"] for t in result["teacher_ids"]}
    assert sum(wr.values()) == pytest.approx(1.0)

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tiny_lake}/mlflow.db")
    [exp] = [e for e in client.search_experiments() if e.name == "rgalign"]
    [run] = client.search_runs([exp.experiment_id], "tags.stage = 'reward_select'")
    m = run.data.metrics
    for key in ("win_rate.builtin_rules", "win_rate.builtin_retrieval", "reward_mean.builtin_rules", "sessions_scored",
                "sessions_skipped_no_click", "pairs", "margin_mean", "candidates_per_s", "greedy_reward_mean",
                "best_reward_mean"):
        assert key in m, (key, sorted(m))
    assert np.isfinite(m["best_reward_mean"]) and np.isfinite(m["greedy_reward_mean"])  # log-probs of the click
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"teacher_win_rate.png", "reward_samples.md"} <= artifacts
    md = open(client.download_artifacts(run.info.run_id, "reward_samples.md", str(tiny_lake))).read()
    assert md.count("## session") == 4 and "✅" in md
    report = json.loads((tiny_lake / "lake" / "reports" / "reward_select" / f"ds={DS}" / "report.json").read_text())
    assert report["pairs"] == n_pairs

    # up to date: nothing recomputed; --force redoes it with the same result
    assert RS.main(argv)["skipped"] == 1
    again = RS.main([*argv, "--force"])
    assert again["pairs"] == n_pairs and again["sessions_scored"] == n_best
    # a stricter margin keeps fewer pairs and recomputes (the setting is in the fingerprint)
    strict = RS.main([*argv, "--set", "reward.min_margin=0.5"])
    assert "skipped" not in strict
    for d in days:
        assert all(p["margin"] > 0.5 for p in lake.read_partition(lake.partition("rewards", "pairs", d), "pairs").to_pylist())
    assert strict["pairs"] == sum(p["margin"] > 0.5 for p in first_pairs)  # exactly the first run's pairs above 0.5
