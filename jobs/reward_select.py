"""Best-of-N with the frozen QE-Rec as reward model: which teacher candidate explains the click best.

For every chatbot session of the training days (``windows()["train"]`` of --ds) that has a click,
each candidate latent query of ``teachers/candidates/dt=<day>/`` is embedded by the current
reasoner (prompt from ``features/sessions``, last-token pooling, batches sorted by length) and put
in place of the session's query embedding; the frozen QE-Rec of ``models/qe_rec/ds=<ds>/
seed=<reward.model_seed>/`` scores the session's shown intents, and the candidate's reward is the
listwise log-probability of the clicked intent (log-softmax over the shown intents; with several
clicks, the mean over them). Higher reward wins; rewards within ``reward.tie_tol`` of each other
are decided by the clicked intent's rank (lower wins), and exact ties split the win between
teachers. Sessions without a click (or without shown intents, or without candidates) are skipped
and counted. Candidates repeated within a session (same text up to case and punctuation) are
scored once. Writes, atomically per day:

    rewards/best/dt=<day>/     session_id, prompt, best_query, best_teacher_id, best_reward, n_candidates
                               (the RG-SFT targets)
    rewards/pairs/dt=<day>/    session_id, prompt, chosen, rejected, chosen_teacher_id,
                               rejected_teacher_id, margin (best minus worst reward; sessions with
                               >= 2 distinct candidates and margin > reward.min_margin): DPO pairs
    rewards/scored/dt=<day>/   session_id, teacher_id, candidate_idx, reward, rank_of_clicked

MLflow gets each teacher's win rate and mean reward, the pair count and margin, candidates/s, a
bar chart (teacher_win_rate.png), sample sessions (reward_samples.md) and, as a sanity number,
the mean reward of the reasoner's own greedy query (``queries/<ranker.query_variant>``) next to
the best-of-N mean. A day whose outputs were made from the same inputs, reward model, reasoner
and settings is skipped (--force redoes it).

    python -m jobs.reward_select --ds 2026-11-21
    python -m jobs.reward_select --ds 2026-11-21 --set reward.model_seed=1 --set reward.min_margin=0.5
    python -m jobs.reward_select --ds 2026-11-21 --set reward.embed_batch_size=16 --force
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np

from rgalign_core import stage
from rgalign_core.config import fingerprint

log = logging.getLogger("rgalign.reward_select")
VERSION = 1  # bump when the meaning of the outputs changes, so cached outputs are recomputed
TABLES = ("best", "pairs", "scored")


# ---- output schemas ------------------------------------------------------------------------------

def schemas() -> dict:
    import pyarrow as pa

    return {
        "best": pa.schema([("session_id", pa.int64()), ("prompt", pa.string()), ("best_query", pa.string()),
                           ("best_teacher_id", pa.string()), ("best_reward", pa.float32()), ("n_candidates", pa.int16())]),
        "pairs": pa.schema([("session_id", pa.int64()), ("prompt", pa.string()), ("chosen", pa.string()),
                            ("rejected", pa.string()), ("chosen_teacher_id", pa.string()),
                            ("rejected_teacher_id", pa.string()), ("margin", pa.float32())]),
        "scored": pa.schema([("session_id", pa.int64()), ("teacher_id", pa.string()), ("candidate_idx", pa.int16()),
                             ("reward", pa.float32()), ("rank_of_clicked", pa.int16())]),
    }


# ---- the reward ----------------------------------------------------------------------------------

def listwise_reward(logits, mask, clicked):
    """Per row: (log-probability of the clicked intent under a softmax over the shown intents,
    1-based rank of the clicked intent among them). With several clicks: mean log-probability and
    the best rank. Rows without a click give NaN reward and rank 0; callers skip them."""
    import torch

    masked = logits.masked_fill(~mask, float("-inf"))
    logp = torch.log_softmax(masked, 1).masked_fill(~mask, 0.0)
    hit = (clicked > 0) & mask
    n_hit = hit.sum(1)
    reward = (logp * hit).sum(1) / n_hit.clamp(min=1)
    reward = torch.where(n_hit > 0, reward, torch.full_like(reward, float("nan")))
    clicked_logit = masked.masked_fill(~hit, float("-inf")).max(1).values
    rank = 1 + ((masked > clicked_logit[:, None]) & mask).sum(1)
    rank = torch.where(n_hit > 0, rank, torch.zeros_like(rank))
    return reward, rank


def score(model, data, rows: np.ndarray, query: np.ndarray | None = None, score_batch: int = 1024
          ) -> tuple[np.ndarray, np.ndarray]:
    """Rewards and clicked ranks for sessions ``rows`` of ``data`` (repeats allowed: one per
    candidate), with ``query[i]`` in place of row i's query embedding (None = keep the one in data)."""
    import torch

    rewards, ranks = [], []
    model.eval()
    with torch.no_grad():
        for a in range(0, len(rows), score_batch):
            b = data.batch(rows[a:a + score_batch])
            if query is not None:
                b["query"] = torch.as_tensor(np.ascontiguousarray(query[a:a + score_batch]), dtype=torch.float32)
            r, k = listwise_reward(model(b), b["mask"], b["clicked"])
            rewards.append(r.numpy())
            ranks.append(k.numpy())
    if not rewards:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    return np.concatenate(rewards).astype(np.float32), np.concatenate(ranks).astype(np.int64)


@dataclasses.dataclass
class Choice:
    best: int  # index of the winner among the session's candidates
    worst: int  # index of the loser
    tied: list[int]  # candidates sharing the win (the winner included)


def select(rewards, ranks, tol: float = 0.0) -> Choice:
    """Best and worst candidate of one session. Highest reward wins; rewards within ``tol`` of the
    best count as equal and then the lower clicked rank wins; candidates equal on both share the
    win. The worst is the mirror image (lowest reward, then higher rank). Among candidates still
    equal, the one with the higher (lower) exact reward, then the first, is picked."""
    r, k = np.asarray(rewards, np.float64), np.asarray(ranks)
    near = np.nonzero(r >= r.max() - tol)[0]
    tied = near[k[near] == k[near].min()]
    best = int(tied[np.argmax(r[tied])])
    far = np.nonzero(r <= r.min() + tol)[0]
    lows = far[k[far] == k[far].max()]
    worst = int(lows[np.argmin(r[lows])])
    return Choice(best, worst, [int(i) for i in tied])


def dedupe(rows: list[dict]) -> tuple[list[dict], int]:
    """A session's candidates without empty ones and repeats (same normalised text; first kept)."""
    from rgalign_core.teachers import normalise

    seen, kept, dropped = set(), [], 0
    for r in rows:
        key = normalise(r["latent_query"])
        if not key:
            continue
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        kept.append(r)
    return kept, dropped


# ---- one day -------------------------------------------------------------------------------------

@dataclasses.dataclass
class DayResult:
    best: list[dict]
    pairs: list[dict]
    scored: list[dict]
    wins: dict  # teacher_id -> win credit (ties split)
    rewards: dict  # teacher_id -> list of candidate rewards
    best_rewards: list[float]
    best_ranks: list[int]
    greedy_rewards: list[float]
    greedy_ranks: list[int]
    greedy_better: int  # sessions where the greedy query beats every candidate
    counts: collections.Counter
    samples: dict  # session_id -> details for the report
    embed_s: float
    score_s: float


def score_day(model, data, sessions: list[dict], candidates: list[dict], embed: Callable, rcfg: dict,
              greedy: dict | None = None, n_samples: int = 0) -> DayResult:
    """Rewards for one day's sessions (rows of features/sessions: session_id, prompt) and their
    candidates (rows of teachers/candidates). ``embed(prompts, queries) -> [n, H]`` embeds them
    (the reasoner); ``greedy`` maps session_id -> the reasoner's own query text, for the report,
    which gets ``n_samples`` scored sessions spread over the day."""
    tol, min_margin = float(rcfg.get("tie_tol") or 0.0), float(rcfg.get("min_margin") or 0.0)
    score_batch, chunk = int(rcfg.get("score_batch") or 1024), int(rcfg.get("chunk_sessions") or 2048)
    row_of = {int(s): i for i, s in enumerate(data.session_id)}
    has_click = (data.tensors["clicked"].numpy() * data.tensors["mask"].numpy()).sum(1) > 0
    by_session = collections.defaultdict(list)
    for c in candidates:
        by_session[int(c["session_id"])].append(c)

    unknown = set(by_session) - {int(s["session_id"]) for s in sessions}
    if unknown:
        raise stage.StageError(f"{len(unknown)} candidate sessions are not in features/sessions (e.g. {sorted(unknown)[:3]}): "
                               "the candidates are stale; rerun teachers_generate")

    counts = collections.Counter()
    todo = []  # (session, its row in data, its de-duplicated candidates)
    for s in sorted(sessions, key=lambda s: s["session_id"]):
        sid = int(s["session_id"])
        row = row_of.get(sid)
        if row is None:
            counts["sessions_skipped_not_shown"] += 1  # no intents shown: nothing to score
            continue
        if not has_click[row]:
            counts["sessions_skipped_no_click"] += 1
            continue
        cands, dropped = dedupe(by_session.get(sid, []))
        counts["duplicates_dropped"] += dropped
        if not cands:
            counts["sessions_skipped_no_candidates"] += 1
            continue
        todo.append((s, row, cands))
    step = max(len(todo) / n_samples, 1.0) if n_samples > 0 else 0
    sample_ids = {int(todo[int(i * step)][0]["session_id"]) for i in range(min(n_samples, len(todo)))} if step else set()

    out = DayResult([], [], [], collections.defaultdict(float), collections.defaultdict(list), [], [], [], [], 0,
                    counts, {}, 0.0, 0.0)
    for a in range(0, len(todo), chunk):
        part = todo[a:a + chunk]
        owner = np.repeat(np.arange(len(part)), [len(c) for _, _, c in part])
        rows = np.repeat(np.array([r for _, r, _ in part], np.int64), [len(c) for _, _, c in part])
        prompts = [s["prompt"] for s, _, c in part for _ in c]
        texts = [x["latent_query"] for _, _, c in part for x in c]
        t0 = time.time()
        emb = np.asarray(embed(prompts, texts), np.float32)
        t1 = time.time()
        rewards, ranks = score(model, data, rows, emb, score_batch)
        g_rewards, g_ranks = score(model, data, np.array([r for _, r, _ in part], np.int64), None, score_batch)
        out.embed_s += t1 - t0
        out.score_s += time.time() - t1
        starts = np.searchsorted(owner, np.arange(len(part)))
        for j, (s, _, cands) in enumerate(part):
            sid = int(s["session_id"])
            r, k = rewards[starts[j]:starts[j] + len(cands)], ranks[starts[j]:starts[j] + len(cands)]
            ch = select(r, k, tol)
            for c, ri, ki in zip(cands, r, k):
                out.scored.append({"session_id": sid, "teacher_id": c["teacher_id"], "candidate_idx": int(c["candidate_idx"]),
                                   "reward": float(ri), "rank_of_clicked": int(ki)})
                out.rewards[c["teacher_id"]].append(float(ri))
            for i in ch.tied:
                out.wins[cands[i]["teacher_id"]] += 1.0 / len(ch.tied)
            b = cands[ch.best]
            out.best.append({"session_id": sid, "prompt": s["prompt"], "best_query": b["latent_query"],
                             "best_teacher_id": b["teacher_id"], "best_reward": float(r[ch.best]), "n_candidates": len(cands)})
            out.best_rewards.append(float(r[ch.best]))
            out.best_ranks.append(int(k[ch.best]))
            out.greedy_rewards.append(float(g_rewards[j]))
            out.greedy_ranks.append(int(g_ranks[j]))
            out.greedy_better += int(g_rewards[j] > r[ch.best])
            margin = float(r[ch.best]) - float(r[ch.worst])
            if len(cands) >= 2 and ch.best != ch.worst and margin > min_margin and margin > tol:
                w = cands[ch.worst]
                out.pairs.append({"session_id": sid, "prompt": s["prompt"], "chosen": b["latent_query"],
                                  "rejected": w["latent_query"], "chosen_teacher_id": b["teacher_id"],
                                  "rejected_teacher_id": w["teacher_id"], "margin": margin})
            if sid in sample_ids:
                out.samples[sid] = {
                    "prompt": s["prompt"], "greedy": (greedy or {}).get(sid), "greedy_reward": float(g_rewards[j]),
                    "candidates": [(c["teacher_id"], c["latent_query"], float(ri), int(ki)) for c, ri, ki in zip(cands, r, k)],
                    "best": ch.best, "worst": ch.worst, "tied": ch.tied}
    counts["sessions_scored"] += len(todo)
    counts["candidates_scored"] += len(out.scored)
    return out


# ---- the job -------------------------------------------------------------------------------------

def reward_model_dir(ctx: stage.Context, seed: int) -> tuple[str, str]:
    """(models/qe_rec/ds=<ds>/ partition, its seed=<seed>/ folder), or a StageError saying what to run."""
    lake = ctx.lake
    root = lake.partition("models", "qe_rec", ctx.ds, key="ds")
    if not lake.is_complete(root):
        raise stage.StageError(f"no reward model: {root} is missing or incomplete; run train_qe_rec for {ctx.ds} first")
    path = f"{root}/seed={seed}"
    if not lake.fs_for(path).exists(f"{path}/model.safetensors"):
        have = sorted(Path(p).name for p in lake.fs_for(root).ls(root, detail=False) if Path(p).name.startswith("seed="))
        raise stage.StageError(f"reward.model_seed={seed}: no {path}/model.safetensors (trained: {have}); "
                               "pick one of those or add the seed to ranker.seeds")
    return root, path


def run(ctx: stage.Context) -> dict:
    import pyarrow as pa

    from jobs.bootstrap_reasoner import require_reasoner
    from jobs.teachers_generate import metric_key
    from rgalign_core import ranking_data
    from rgalign_core.reasoner import Reasoner, model_version
    from rgalign_core.train_ranker import load_model

    cfg, lake = ctx.cfg, ctx.lake
    rcfg = cfg["reward"]
    seed = int(rcfg.get("model_seed") or 0)
    variant = cfg["ranker"]["query_variant"]
    days = ctx.windows()["train"]
    model_root, model_path = reward_model_dir(ctx, seed)
    reasoner_path = require_reasoner(ctx)
    version = model_version(reasoner_path)

    inputs = {name: {d: lake.partition(area, table, d) for d in days} for name, (area, table) in {
        "candidates": ("teachers", "candidates"), "sessions": ("features", "sessions"),
        "samples": ("features", "samples"), "queries": ("queries", variant)}.items()}
    for name, paths in inputs.items():
        for p in paths.values():
            lake.require(p, f"reward_select input {name}")
    settings = {"version": VERSION, "model_seed": seed, "tie_tol": rcfg.get("tie_tol"), "min_margin": rcfg.get("min_margin"),
                "reward_model": lake.marker(model_root).get("fingerprint"), "reasoner_version": version,
                "template": cfg["reasoner"]["template"], "summary_cue": cfg["reasoner"]["summary_cue"], "query_variant": variant}
    outputs = {d: {t: lake.partition("rewards", t, d) for t in TABLES} for d in days}
    # queries/<variant> only feeds the greedy sanity metric, not the outputs: not in the fingerprint
    fps = {d: fingerprint({**settings, **{n: lake.marker(inputs[n][d]).get("fingerprint")
                                          for n in ("candidates", "sessions", "samples")}}) for d in days}
    todo = [d for d in days if not ctx.up_to_date(list(outputs[d].values()), fps[d])]
    ctx.tracker.params({"reward_model_path": model_path, "reasoner_path": reasoner_path, "reasoner_version": version})
    if not todo:
        log.info("rewards for %s..%s are up to date; use --force to redo", days[0], days[-1])
        return {"skipped": 1}

    model, vocab, conf = load_model(model_path)
    reasoner = Reasoner.load(reasoner_path, template=cfg["reasoner"]["template"], summary_cue=cfg["reasoner"]["summary_cue"])
    if int(conf["schema"]["query_dim"]) != reasoner.hidden_size:
        raise stage.StageError(f"the reward model {model_path} reads {conf['schema']['query_dim']}-d query embeddings but the "
                               f"reasoner {reasoner_path} has hidden size {reasoner.hidden_size}: retrain train_qe_rec")
    if conf.get("query_variant") not in (None, variant):
        log.warning("the reward model was trained on queries/%s, ranker.query_variant is %s", conf.get("query_variant"), variant)
    trained_with = {lake.marker(inputs["queries"][d]).get("reasoner_version") for d in todo}
    if trained_with != {version}:
        log.warning("queries/%s was encoded by reasoner %s but the candidates are embedded by %s: "
                    "the reward model never saw this reasoner's embeddings", variant, sorted(map(str, trained_with)), version)
    # ids must be the reward model's own: pass its vocabulary (the KB rows are then not needed)
    data = ranking_data.load(lake, todo, [], query_variant=variant, vocab=vocab)
    ebs = int(rcfg.get("embed_batch_size") or 64)

    def embed(prompts, texts):
        return reasoner.embed(prompts, texts, batch_size=ebs)

    for name, label in (("candidates", "teachers.candidates"), ("sessions", "features.sessions"),
                        ("samples", "features.samples"), ("queries", f"queries.{variant}")):
        ctx.tracker.dataset(lake, [inputs[name][d] for d in todo], label, context="input")

    sch = schemas()
    n_samples = int(rcfg.get("samples_in_report") or 10)
    teacher_order: list[str] = []
    totals = collections.Counter()
    wins, rewards = collections.defaultdict(float), collections.defaultdict(list)
    best_r, best_k, greedy_r, greedy_k, margins, samples = [], [], [], [], [], {}
    greedy_better, embed_s, score_s = 0, 0.0, 0.0
    t_start = time.time()
    for i, d in enumerate(todo):
        sessions = lake.read_partition(inputs["sessions"][d], "features.sessions", columns=["session_id", "prompt"]).to_pylist()
        cands = lake.read_partition(inputs["candidates"][d], "teachers.candidates").to_pylist()
        for t in lake.marker(inputs["candidates"][d]).get("teachers") or sorted({c["teacher_id"] for c in cands}):
            if t not in teacher_order:
                teacher_order.append(t)
        q = lake.read_partition(inputs["queries"][d], f"queries.{variant}", columns=["session_id", "latent_query"])
        greedy = dict(zip(q["session_id"].to_pylist(), q["latent_query"].to_pylist()))
        per_day = n_samples // len(todo) + (i < n_samples % len(todo))  # ~n_samples over all days
        res = score_day(model, data, sessions, cands, embed, rcfg, greedy=greedy, n_samples=per_day)
        meta = {"fingerprint": fps[d], "reward_model": model_path, "reasoner_version": version}
        lake.write_table(outputs[d]["scored"], pa.Table.from_pylist(res.scored, schema=sch["scored"]), meta)
        lake.write_table(outputs[d]["pairs"], pa.Table.from_pylist(res.pairs, schema=sch["pairs"]), meta)
        lake.write_table(outputs[d]["best"], pa.Table.from_pylist(res.best, schema=sch["best"]), meta)
        totals.update(res.counts)
        for t, w in res.wins.items():
            wins[t] += w
        for t, r in res.rewards.items():
            rewards[t] += r
            if t not in teacher_order:
                teacher_order.append(t)
        best_r += res.best_rewards
        best_k += res.best_ranks
        greedy_r += res.greedy_rewards
        greedy_k += res.greedy_ranks
        margins += [p["margin"] for p in res.pairs]
        samples.update(res.samples)
        greedy_better += res.greedy_better
        embed_s += res.embed_s
        score_s += res.score_s
        log.info("%s: %d sessions scored (%d without click skipped), %d candidates, %d pairs", d,
                 res.counts["sessions_scored"], res.counts["sessions_skipped_no_click"], len(res.scored), len(res.pairs))
    wall = time.time() - t_start

    n_scored = totals["sessions_scored"]
    metrics: dict = {k: int(totals[k]) for k in ("sessions_scored", "sessions_skipped_no_click", "sessions_skipped_not_shown",
                                                 "sessions_skipped_no_candidates", "candidates_scored", "duplicates_dropped")}
    metrics.update({
        "pairs": len(margins), "margin_mean": float(np.mean(margins)) if margins else 0.0,
        "margin_median": float(np.median(margins)) if margins else 0.0,
        "candidates_per_s": totals["candidates_scored"] / max(embed_s + score_s, 1e-9),
        "embed_s": embed_s, "score_s": score_s, "wall_s": wall, "days": len(todo), "days_up_to_date": len(days) - len(todo),
        "best_reward_mean": float(np.mean(best_r)) if best_r else 0.0,
        "greedy_reward_mean": float(np.mean(greedy_r)) if greedy_r else 0.0,
        "best_clicked_rank_mean": float(np.mean(best_k)) if best_k else 0.0,
        "greedy_clicked_rank_mean": float(np.mean(greedy_k)) if greedy_k else 0.0,
        "greedy_beats_best_share": greedy_better / max(n_scored, 1),
        "reward_model_reasoner_match": int(trained_with == {version}),
    })
    metrics["best_minus_greedy_reward"] = metrics["best_reward_mean"] - metrics["greedy_reward_mean"]
    win_rate = {t: wins.get(t, 0.0) / max(n_scored, 1) for t in teacher_order}
    for t in teacher_order:
        k = metric_key(t)
        metrics[f"win_rate.{k}"] = win_rate[t]
        metrics[f"candidates.{k}"] = len(rewards.get(t, []))
        if rewards.get(t):
            metrics[f"reward_mean.{k}"] = float(np.mean(rewards[t]))
    log.info("win rates %s; best-of-N reward %.4f vs greedy %.4f; %d pairs, mean margin %.4f; %.1f candidates/s",
             {t: round(w, 3) for t, w in win_rate.items()}, metrics["best_reward_mean"], metrics["greedy_reward_mean"],
             metrics["pairs"], metrics["margin_mean"], metrics["candidates_per_s"])

    for t in TABLES:
        ctx.tracker.dataset(lake, [outputs[d][t] for d in todo], f"rewards.{t}", context="output")
    reward_mean = {t: float(np.mean(rewards[t])) if rewards.get(t) else 0.0 for t in teacher_order}
    _plot_win_rates(ctx, teacher_order, win_rate, reward_mean, metrics["best_reward_mean"], metrics["greedy_reward_mean"])
    ctx.tracker.text(samples_markdown(samples, win_rate, metrics), "reward_samples.md")
    ctx.tracker.dict({"win_rate": win_rate, "reward_mean": reward_mean}, "teacher_stats.json")
    return {**metrics, "teacher_ids": teacher_order, "days_scored": [d.isoformat() for d in todo]}


def _plot_win_rates(ctx: stage.Context, teachers: list[str], win_rate: dict, reward_mean: dict, best_mean: float,
                    greedy_mean: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(max(7, 2.2 * len(teachers) + 3), 3.8))
    x = np.arange(len(teachers))
    bars = ax[0].bar(x, [win_rate[t] for t in teachers], color="tab:blue")
    ax[0].bar_label(bars, fmt="%.2f")
    ax[0].set(title="win rate (best candidate; ties split)", ylim=(0, 1.05))
    bars = ax[1].bar(x, [reward_mean[t] for t in teachers], color="tab:orange")
    ax[1].bar_label(bars, fmt="%.3f", label_type="center", color="white")
    low = min([best_mean, greedy_mean, *reward_mean.values(), -1e-3])
    ax[1].set_ylim(low * 1.3, 0)  # room under the bars for the legend
    ax[1].axhline(best_mean, color="tab:green", ls="--", lw=1, label=f"best-of-N {best_mean:.3f}")
    ax[1].axhline(greedy_mean, color="k", ls=":", lw=1, label=f"reasoner greedy {greedy_mean:.3f}")
    ax[1].legend(fontsize=7, loc="lower right")
    ax[1].set(title="mean candidate reward (log P(clicked))")
    for a in ax:
        a.set_xticks(x, teachers, rotation=20, ha="right", fontsize=8)
        a.grid(axis="y", alpha=0.3)
    fig.suptitle("reward_select: QE-Rec as reward model")
    fig.tight_layout()
    ctx.tracker.figure(fig, "teacher_win_rate.png")
    plt.close(fig)


def samples_markdown(samples: dict, win_rate: dict, metrics: dict) -> str:
    lines = ["# Reward selection: samples", "",
             "Reward = log-probability of the clicked intent under the frozen QE-Rec when the candidate's "
             "embedding replaces the session's query. ✅ = selected (RG-SFT target), ❌ = rejected side of the DPO pair.", "",
             f"Best-of-N mean reward {metrics['best_reward_mean']:.4f} vs the reasoner's greedy query "
             f"{metrics['greedy_reward_mean']:.4f}; {metrics['pairs']} pairs, mean margin {metrics['margin_mean']:.4f}.", "",
             "| teacher | win rate |", "|---|---|"]
    lines += [f"| `{t}` | {w:.3f} |" for t, w in win_rate.items()]
    lines.append("")
    for sid, s in sorted(samples.items()):
        lines += [f"## session {sid}", "", f"> {s['prompt']}", "",
                  f"Reasoner's greedy query: “{s['greedy']}” (reward {s['greedy_reward']:.4f}); "
                  f"best − worst candidate reward: {s['candidates'][s['best']][2] - s['candidates'][s['worst']][2]:.3g}", "",
                  "| | teacher | candidate | reward | clicked rank |", "|---|---|---|---|---|"]
        for i, (t, q, r, k) in enumerate(s["candidates"]):
            mark = "✅" if i == s["best"] else ("❌" if i == s["worst"] and i != s["best"] else ("=" if i in s["tied"] else ""))
            lines.append(f"| {mark} | `{t}` | {q.replace('|', '/')} | {r:.4f} | {k} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    return stage.main("reward_select", run, __doc__, argv)


if __name__ == "__main__":
    main()
