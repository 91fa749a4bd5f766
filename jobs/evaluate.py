"""The ablation report on the test window: every trained ranker variant, mean ± std over seeds.

Reads each variant's test predictions (``models/<model>/ds=<ds>/test_predictions.parquet``, one
set per seed), the test window's samples (for users, regions, intent categories and cold-start
flags), and, when the simulator's truth exists, its relevance grades for the oracle upper bound.
Reports GAUC, AUC, Recall@3, NDCG@3, logloss, calibration ratio and ECE overall and by slice
(region, the clicked intent's category, sessions that showed a cold-start intent, sessions whose
clicked intent is one, and with the simulator's truth the latent need's kind), plus references:
the logging policy (the production order), "new intents first" (the production order with
cold-start intents moved to the top) and the oracle. The
headline compares the candidate with the baseline overall and on the cold-start slice
(``COLD_START``). Writes the table (Markdown and HTML) and plots to this run and to the DAG
run's parent run, and ``reports/evaluate/ds=…``.

    python -m jobs.evaluate --ds 2026-11-21
    python -m jobs.evaluate --ds 2026-11-21 --set evaluate.k=5
"""
from __future__ import annotations

import logging

import numpy as np

from rgalign_core import stage

log = logging.getLogger("rgalign.evaluate")
METRICS = ("gauc", "session_gauc", "auc", "recall_at_3", "ndcg_at_3", "logloss", "calibration_ratio", "ece")
HEADLINE = ("gauc", "recall_at_3")
# The headline cold-start slice: sessions that showed an intent created in the last 7 days. Not
# "cold-start intent clicked": choosing sessions by their outcome rewards ranking every new intent
# first (the "new intents first" reference beats the oracle there and loses everywhere else).
COLD_START = "cold-start intent shown"
HEADLINE_SLICES = ("overall", COLD_START)
# the parent run's metric keys for the reference rows (trained variants use their model's name), so a
# relabelled row keeps its metric history
REFERENCE_KEYS = {"logging policy (shown order)": "ref_logging_policy", "new intents first (shown order otherwise)": "ref_new_intents_first",
                  "oracle (true relevance)": "ref_oracle"}


def slices(f: dict) -> dict[str, np.ndarray]:
    """name -> boolean mask over impressions; every slice is a set of whole sessions. With the
    simulator's truth (``f["need_kind"]``, per impression), also by the latent need's kind: where
    the need shows in the features, weakly, only in the text (the zero-query case the method is
    for), or not at all (general questions)."""
    sessions = f["session_id"]
    out = {"overall": np.ones(len(sessions), bool)}
    clicked = f["clicked"] > 0
    # cold start: sessions that showed an intent created in the last 7 days (can the model rank a
    # new intent against the known ones?), and the subset whose clicked intent was one
    out["cold-start intent shown"] = np.isin(sessions, np.unique(sessions[f["cold"]]))
    out["cold-start intent clicked"] = np.isin(sessions, np.unique(sessions[f["cold"] & clicked]))
    for r in sorted(set(f["region"])):
        out[f"region={r}"] = f["region"] == r
    for c in sorted(set(f["intent_category"][clicked])):
        out[f"clicked category={c}"] = np.isin(sessions, np.unique(sessions[clicked & (f["intent_category"] == c)]))
    if "need_kind" in f:
        for kind in sorted(set(f["need_kind"])):
            out[f"latent need={kind}"] = f["need_kind"] == kind
    return out


def read_truth(lake, table: str, days):
    """The simulator's ``truth/<table>`` over ``days`` as one pandas frame, or None when any day
    lacks it (a lake of real logs has no truth)."""
    import pandas as pd

    paths = [lake.partition("truth", table, d) for d in days]
    if not all(lake.is_complete(p) for p in paths):
        return None
    return pd.concat([lake.read_partition(p, f"truth.{table}").to_pandas() for p in paths])


def need_kinds(lake, test_days, sessions: np.ndarray) -> np.ndarray | None:
    """Per impression, the kind of its session's latent need in the simulator's world
    (``sim_world.NEEDS``: discrete, weak, text, noise), or None without the simulator's truth."""
    from rgalign_core.sim_world import NEEDS

    truth = read_truth(lake, "session_needs", test_days)
    if truth is None:
        return None
    kind = truth.set_index("session_id")["need"].map(lambda n: NEEDS[n][1]).reindex(sessions)
    if kind.isna().any():
        raise stage.StageError(f"truth.session_needs misses {int(kind.isna().sum())} test impressions' sessions")
    return kind.to_numpy()


def test_impressions(lake, ds, test_days):
    """The test window's ranking data and its flat per-impression arrays (what ``slices`` and
    ``score_metrics`` read)."""
    from rgalign_core import ranking_data

    kb = lake.read_partition(lake.partition("validated", "kb_intents", ds), "validated.kb_intents").to_pylist()
    data = ranking_data.load(lake, test_days, kb)
    return data, data.flat(np.arange(data.n), np.zeros(data.tensors["mask"].shape, np.float32))


def seed_predictions(model_dir: str, key, name: str) -> dict[int, dict]:
    """seed -> {"score", "prob"} of a trained model's ``test_predictions.parquet``, aligned to
    ``key`` (the test impressions' (session_id, intent_id)); a missing impression is an error."""
    import pandas as pd

    out = {}
    for seed, p in pd.read_parquet(f"{model_dir}/test_predictions.parquet").groupby("seed"):
        s = p.set_index(["session_id", "intent_id"])["score"].reindex(key).to_numpy(np.float64)
        if np.isnan(s).any():
            raise stage.StageError(f"variant {name} seed {seed}: predictions miss {int(np.isnan(s).sum())} test impressions")
        # calibrated variants carry their calibrated probability; the others are σ(score)
        prob = (p.set_index(["session_id", "intent_id"])["prob"].reindex(key).to_numpy(np.float64)
                if "prob" in p.columns else 1 / (1 + np.exp(-s)))
        out[int(seed)] = {"score": s, "prob": prob}
    return out


def score_metrics(f: dict, score: np.ndarray, mask: np.ndarray, k: int, probs=None) -> dict:
    from rgalign_core import metrics

    return metrics.ranking_report(f["user_id"][mask], f["session_id"][mask], f["clicked"][mask], score[mask],
                                  probs=None if probs is None else probs[mask], k=k)


def run(ctx: stage.Context) -> dict:
    import pandas as pd

    cfg, lake = ctx.cfg, ctx.lake
    ecfg = cfg["evaluate"]
    k = int(ecfg["k"])
    test_days = ctx.windows()["test"]
    data, f = test_impressions(lake, ctx.ds, test_days)
    key = pd.MultiIndex.from_arrays([f["session_id"], f["intent_id"]])
    kinds = need_kinds(lake, test_days, f["session_id"])
    masks = slices(f if kinds is None else {**f, "need_kind": kinds})

    variants: dict[str, dict[int, dict]] = {}  # name -> seed -> {"score", "prob"}
    for v in ecfg["variants"]:
        path = lake.partition("models", v["model"], ctx.ds, key="ds")
        if not lake.is_complete(path):
            log.warning("variant %s: no model at %s, left out", v["name"], path)
            continue
        variants[v["name"]] = seed_predictions(path, key, v["name"])
    if not variants:
        raise stage.StageError("no trained ranker for this date: run train_baseline / train_qe_rec first")
    references = {"logging policy (shown order)": -f["position"].astype(np.float64),
                  # not a model: shows what the outcome-selected "cold-start intent clicked" slice rewards
                  "new intents first (shown order otherwise)": 1e3 * f["cold"] - f["position"].astype(np.float64)}
    rel = read_truth(lake, "relevance", test_days)
    if rel is not None:
        r = rel.set_index(["session_id", "intent_id"])["relevance"].reindex(key).to_numpy(np.float64)
        references["oracle (true relevance)"] = np.nan_to_num(r, nan=0.0) - 1e-3 * f["position"]

    rows = []  # one per (variant, seed, slice)
    for name, seeds in variants.items():
        for seed, s in seeds.items():
            for sl, m in masks.items():
                rows.append({"variant": name, "seed": seed, "slice": sl, **score_metrics(f, s["score"], m, k, s["prob"])})
    for name, score in references.items():
        for sl, m in masks.items():
            rows.append({"variant": name, "seed": 0, "slice": sl, **score_metrics(f, score, m, k)})
    table = pd.DataFrame(rows)
    summary = summarise(table, list(variants) + list(references))
    report_md, headline = render(summary, table, list(variants), ecfg)
    plots = make_plots(table, variants, f, summary, list(variants) + list(references))

    ctx.tracker.text(report_md, "ablation.md")
    ctx.tracker.text(summary.to_html(float_format=lambda x: f"{x:.4f}"), "ablation.html")
    ctx.tracker.text(table.to_csv(index=False), "metrics_by_seed.csv")
    for name, fig in plots.items():
        ctx.tracker.figure(fig, name)
    keys = {**{v["name"]: v["model"] for v in ecfg["variants"]}, **REFERENCE_KEYS}
    _to_parent(ctx, report_md, table, summary, plots, keys, headline)
    return {**headline, "variants": list(variants), "test_sessions": int(data.n), "test_impressions": int(len(f["clicked"]))}


def summarise(table, order: list[str]):
    import pandas as pd

    g = table.groupby(["slice", "variant"])
    mean = g[list(METRICS)].mean()
    std = g[list(METRICS)].std(ddof=1).fillna(0.0)
    n = g["seed"].nunique().rename("seeds")
    out = pd.concat({"mean": mean, "std": std}, axis=1)
    out[("n", "seeds")] = n
    out[("n", "sessions_with_click")] = g["sessions_with_click"].first()
    first = ["overall", COLD_START, "cold-start intent clicked"]
    slices_order = first + sorted(s for s in table.slice.unique() if s not in first)
    out = out.reindex(pd.MultiIndex.from_product([slices_order, order], names=["slice", "variant"])).dropna(how="all")
    return out


def render(summary, table, trained: list[str], ecfg: dict) -> tuple[str, dict]:
    """The Markdown table a reviewer reads, and the headline comparison (candidate vs baseline)."""
    from rgalign_core import metrics

    def cell(sl, v, m):
        mu, sd = summary.loc[(sl, v), ("mean", m)], summary.loc[(sl, v), ("std", m)]
        return "–" if np.isnan(mu) else f"{mu:.4f} ± {sd:.4f}"

    lines = ["# Ablation on the test window", "",
             f"Mean ± std over seeds (trained variants); references are deterministic. GAUC is impression-weighted "
             f"per-user AUC over users with a click and a non-click; session_gauc the same per session (the ranking "
             f"inside a session only: the rest of GAUC is telling which sessions see a click); Recall@3/NDCG@3 over "
             f"sessions with a click.", ""]
    for sl in (*HEADLINE_SLICES, "cold-start intent clicked"):
        if sl not in summary.index.get_level_values(0):
            continue
        lines += [f"## {sl}", "", "| variant | " + " | ".join(METRICS) + " | seeds | sessions w/ click |",
                  "|---|" + "---|" * (len(METRICS) + 2)]
        for v in summary.loc[sl].index:
            lines.append(f"| {v} | " + " | ".join(cell(sl, v, m) for m in METRICS) +
                         f" | {int(summary.loc[(sl, v), ('n', 'seeds')])} | {int(summary.loc[(sl, v), ('n', 'sessions_with_click')])} |")
        lines.append("")
    headline = {}
    base, cand = ecfg["baseline"], ecfg["candidate"]
    if base in trained and cand in trained:
        # the last column is the gain this run's seed spread would need for z = 3: how far the claim is
        lines += [f"## {cand} vs {base}", "", "| slice | metric | Δ mean | z = Δ / √(sd₁² + sd₂²) | Δ for z = 3 |",
                  "|---|---|---|---|---|"]
        for sl in HEADLINE_SLICES:
            for m in HEADLINE:
                a, b = summary.loc[(sl, cand)], summary.loc[(sl, base)]
                delta = a[("mean", m)] - b[("mean", m)]
                z = metrics.z_score(a[("mean", m)], a[("std", m)], b[("mean", m)], b[("std", m)])
                tag = "overall" if sl == "overall" else "cold_start"
                needed = 3 * float(np.hypot(a[("std", m)], b[("std", m)]))
                headline[f"{tag}_{m}_delta"], headline[f"{tag}_{m}_z"] = float(delta), float(z)
                headline[f"{tag}_{m}_delta_for_z3"] = needed
                lines.append(f"| {sl} | {m} | {delta:+.4f} | {z:+.1f} | {needed:+.4f} |")
        lines.append("")
    # each alignment stage against the variant before it (the configured order)
    chain = [v for v in summary.index.get_level_values(1).unique() if v in trained and v != base]
    if len(chain) > 1:
        lines += ["## Each stage against the one before it", "",
                  "| stage | vs | slice | Δ GAUC (z) | Δ Recall@3 (z) |", "|---|---|---|---|---|"]
        for prev, cur in zip(chain, chain[1:]):
            for sl in HEADLINE_SLICES:
                if (sl, cur) not in summary.index or (sl, prev) not in summary.index:
                    continue
                cells = []
                for m in HEADLINE:
                    a, b = summary.loc[(sl, cur)], summary.loc[(sl, prev)]
                    delta = a[("mean", m)] - b[("mean", m)]
                    z = metrics.z_score(a[("mean", m)], a[("std", m)], b[("mean", m)], b[("std", m)])
                    cells.append(f"{delta:+.4f} ({z:+.1f})")
                    if sl == "overall":
                        headline[f"stage.{_safe(cur)}.{m}_delta"] = float(delta)
                lines.append(f"| {cur} | {prev} | {sl} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## By slice (GAUC, Recall@3)", "", "| slice | " + " | ".join(summary.index.get_level_values(1).unique()) + " |",
              "|---|" + "---|" * len(summary.index.get_level_values(1).unique())]
    for sl in summary.index.get_level_values(0).unique():
        vals = []
        for v in summary.index.get_level_values(1).unique():
            vals.append(f"{summary.loc[(sl, v), ('mean', 'gauc')]:.3f} / {summary.loc[(sl, v), ('mean', 'recall_at_3')]:.3f}"
                        if (sl, v) in summary.index else "–")
        lines.append(f"| {sl} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n", headline


def _safe(name: str) -> str:
    """A variant's name as an MLflow metric key."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip("_")


def make_plots(table, variants, f, summary, order) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rgalign_core import metrics

    plots = {}
    # the ablation at a glance: overall and cold-start GAUC / Recall@3 per variant, with error bars
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, m in zip(axes, HEADLINE):
        for j, sl in enumerate(HEADLINE_SLICES):
            mu = [summary.loc[(sl, v), ("mean", m)] if (sl, v) in summary.index else np.nan for v in order]
            sd = [summary.loc[(sl, v), ("std", m)] if (sl, v) in summary.index else 0 for v in order]
            ax.errorbar(np.arange(len(order)) + (j - 0.5) * 0.15, mu, yerr=sd, fmt="o", capsize=3, label=sl)
        ax.set_xticks(np.arange(len(order)), order, rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{m} on the test window (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    plots["ablation.png"] = fig
    # GAUC by slice with error bars
    sl = [s for s in summary.index.get_level_values(0).unique()]
    fig, ax = plt.subplots(figsize=(max(8, len(sl) * 0.6), 4))
    width = 0.8 / len(order)
    for i, v in enumerate(order):
        mu = [summary.loc[(s, v), ("mean", "gauc")] if (s, v) in summary.index else np.nan for s in sl]
        sd = [summary.loc[(s, v), ("std", "gauc")] if (s, v) in summary.index else 0 for s in sl]
        ax.bar(np.arange(len(sl)) + i * width, mu, width, yerr=sd, label=v, capsize=2)
    ax.set_xticks(np.arange(len(sl)) + 0.4 - width / 2, sl, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("GAUC")
    ax.legend(fontsize=7)
    ax.set_title("GAUC by slice (mean ± std over seeds)")
    fig.tight_layout()
    plots["gauc_by_slice.png"] = fig
    # calibration curves (reliability diagram), seed-averaged probabilities
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    for v, seeds in variants.items():
        p = np.mean([s["prob"] for s in seeds.values()], 0)
        conf, acc, n = metrics.reliability(f["clicked"], p, bins=10)
        ok = n > 0
        ax.plot(conf[ok], acc[ok], marker="o", label=v)
    ax.set(xlabel="predicted CTR", ylabel="observed CTR", title="Reliability (test window)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    plots["calibration_curves.png"] = fig
    return plots


def _to_parent(ctx, report_md: str, table, summary, plots: dict, keys: dict, headline: dict) -> None:
    """The reviewer's view on the DAG run's parent run: the table, the per-seed rows and the plots,
    and per variant (keyed by its model, e.g. ``test_gauc.qe_rec``, ``cold_start_gauc_std.two_tower``)
    GAUC, Recall@3 and ECE with their std over seeds, overall and cold-start, and the headline z's."""
    import tempfile
    import time
    from pathlib import Path

    from mlflow.entities import Metric

    client = ctx.tracker.client
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "ablation.md").write_text(report_md)
        (Path(tmp) / "ablation.html").write_text(summary.to_html(float_format=lambda x: f"{x:.4f}"))
        (Path(tmp) / "metrics_by_seed.csv").write_text(table.to_csv(index=False))
        for name, fig in plots.items():
            fig.savefig(Path(tmp) / name, dpi=110)
        client.log_artifacts(ctx.tracker.parent_id, tmp, "evaluation")
    values = dict(headline)
    for (sl, v), row in summary.iterrows():
        if sl not in HEADLINE_SLICES or np.isnan(row[("mean", "gauc")]):
            continue
        prefix = "test" if sl == "overall" else "cold_start"
        for m in ("gauc", "session_gauc", "recall_at_3", "ece"):
            if not np.isnan(row[("mean", m)]):
                values[f"{prefix}_{m}.{keys.get(v, _safe(v))}"] = float(row[("mean", m)])
                if v not in REFERENCE_KEYS:  # references are deterministic: no spread
                    values[f"{prefix}_{m}_std.{keys.get(v, _safe(v))}"] = float(row[("std", m)])
    now = int(time.time() * 1000)
    client.log_batch(ctx.tracker.parent_id, metrics=[Metric(k, v, now, 0) for k, v in sorted(values.items())])


def main(argv=None):
    return stage.main("evaluate", run, __doc__, argv)


if __name__ == "__main__":
    main()
