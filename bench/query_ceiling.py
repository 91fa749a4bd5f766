"""What a latent query can give QE-Rec on a simulated lake: the ranker's floor and ceiling.

Trains, on the same samples, windows and seeds as ``train_baseline``/``train_qe_rec``:

  baseline    the two-tower ranker (no query)
  constant    QE-Rec with the same query for every session: it must match the baseline, or
              QE-Rec's own head loses before the query can add anything
  base        QE-Rec with the reasoner's queries (``queries/base``, encode_queries' output)
  rules       QE-Rec with what the reasoner's main teacher knows, as a vector: the rules teacher's
              pending states of the session (``teachers.pending_states``: open problems first, most
              recent first), weighted 1/rank. No truth and no clicks: what a reasoner that learned
              its teacher perfectly could give
  rules_text  the same, next to the KB categories the session's text is about (the retrieval
              teacher's ``topics``, as many as ``bootstrap.summary_topics``), weighted 1/rank: what
              the reasoner's summary is trained to say, said perfectly. No truth and no clicks
  oracle      QE-Rec with the simulator's hidden true need of each session, one-hot: what a
              perfect reasoner could give (uses ``truth/``, so simulator lakes only)

and writes test GAUC / Recall@3 (mean ± std over seeds), overall, on ``evaluate``'s cold-start
slice and on the sessions whose latent need only the text shows (``latent need=text``), with each
variant's difference from the baseline in standard deviations (z = Δ / √(sd₁² + sd₂²), as
``evaluate`` reports it), to ``bench/results/query_ceiling.json`` (``--name``:
``query_ceiling_<name>.json``, e.g. one per scale; ``BENCHMARKS.md`` shows each). Inputs are read
from ``--lake`` (the DAG must have run for --ds there); everything it writes goes to a scratch
lake and MLflow store under ``--work``.

    python -m bench.query_ceiling --ds 2026-11-21
    python -m bench.query_ceiling --ds 2026-11-21 --lake /data/rg_medium/lake --set sim.scale=medium --name medium

With more than 3 seeds (``--set ranker.seeds=[0,1,...,9]``) it also reports, per variant, the share
of the 3-seed draws from those seeds (the same 3 for both models, as a DAG run uses) on which the
variant would clear 3 σ against the baseline: how often "> 3 σ over 3 seeds" holds, not once. And
it splits each headline metric's seed spread into the seeds really differing and the finite test
window (from each seed's figures on random halves of the test users; ``bench.run.spread_parts``), so
a reviewer sees whether more seeds or a longer test window would narrow it.

    python -m bench.query_ceiling --ds 2026-11-21 --variants base,oracle --set 'ranker.seeds=[0,1,2,3,4,5,6,7,8,9]' --name seeds10

Each seed trains alone on one thread (``ranker.threads``), so on a machine with more cores, split the
seeds over processes with their own ``--work`` and ``--name``, then merge the results files into one
(the same lake, date, variants and overrides but for ``ranker.seeds``; seeds must not repeat):

    python -m bench.query_ceiling --ds 2026-11-21 --variants base --set 'ranker.seeds=[0,1,2,3,4]' --work bench/work/qc_a --name a &
    python -m bench.query_ceiling --ds 2026-11-21 --variants base --set 'ranker.seeds=[5,6,7,8,9]' --work bench/work/qc_b --name b &
    wait; python -m bench.query_ceiling --merge query_ceiling_a query_ceiling_b --name seeds10
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("baseline", "constant", "base", "rules", "rules_text", "oracle")


# random halves of the test users for bench.run.spread_parts: how many, and the seed that draws them
HALVES_SPLITS = 40
HALVES_SEED = 0


def write_query_variants(source, scratch, days) -> None:
    """queries/constant, queries/rules, queries/rules_text and queries/oracle for every sample day, in
    encode_queries' schema."""
    import numpy as np

    from rgalign_core.reasoner import queries_table
    from rgalign_core.sim_world import NEEDS
    from jobs.teachers_generate import kb_reader, read_sessions
    from rgalign_core import config
    from rgalign_core.contract import INTENT_CATEGORIES
    from rgalign_core.teachers import STATE_QUESTIONS, RetrievalTeacher, pending_states

    needs, states, categories = sorted(NEEDS), sorted(STATE_QUESTIONS), list(INTENT_CATEGORIES)
    retrieval = RetrievalTeacher(kb_reader(source))
    n_topics = max(1, int(config.load("bootstrap_reasoner", [])["bootstrap"]["summary_topics"]))
    for d in days:
        truth = source.read_partition(source.partition("truth", "session_needs", d), "truth.session_needs").to_pandas()
        rows = read_sessions(source, [d])[d]
        need = dict(zip(truth.session_id, truth.need))
        sid = np.array([r["session_id"] for r in rows], np.int64)
        one_hot = np.zeros((len(sid), len(needs)), np.float32)
        one_hot[np.arange(len(sid)), [needs.index(need[s]) for s in sid]] = 1.0
        rules = np.zeros((len(sid), len(states) + 1), np.float32)  # last column: nothing pending
        for i, r in enumerate(rows):
            pending = pending_states(r)
            for rank, state in enumerate(pending):
                rules[i, states.index(state)] = 1.0 / (rank + 1)
            rules[i, -1] = float(not pending)
        topics = np.zeros((len(sid), len(categories)), np.float32)
        for i, cats in enumerate(retrieval.topics(rows, n_topics)):
            for rank, cat in enumerate(cats):
                topics[i, categories.index(cat)] = 1.0 / (rank + 1)
        for name, emb in (("constant", np.ones((len(sid), 4), np.float32)), ("rules", rules),
                          ("rules_text", np.hstack([rules, topics])), ("oracle", one_hot)):
            table = queries_table(sid, [name] * len(sid), emb, name)
            scratch.write_table(scratch.partition("queries", name, d), table, {"fingerprint": f"{name}:{d}"})


def slice_metrics(lake, ds, cfg):
    """A function model_dir -> test GAUC / Recall@3 (mean ± std over seeds) of that trained model
    on evaluate's cold-start slice (``evaluate.COLD_START``, keys ``cold_start_*``) and on the
    sessions whose latent need only the text shows (evaluate's ``latent need=text``, keys
    ``text_need_*``), by evaluate's own functions; the test impressions are read once."""
    import numpy as np
    import pandas as pd

    from jobs import evaluate
    from rgalign_core import config, stage

    k = int(config.load("evaluate", [])["evaluate"]["k"])
    test_days = stage.windows(ds, cfg)["test"]
    _, f = evaluate.test_impressions(lake, ds, test_days)
    masks = evaluate.slices({**f, "need_kind": evaluate.need_kinds(lake, test_days, f["session_id"])})
    masks = {"cold_start": masks[evaluate.COLD_START], "text_need": masks["latent need=text"]}
    key = pd.MultiIndex.from_arrays([f["session_id"], f["intent_id"]])
    # the same random halves of the test users for every seed, model and run (merged runs line up):
    # how a seed scores on two halves tells its own quality from how its errors fall on these users
    users = np.unique(f["user_id"])
    rng = np.random.default_rng(HALVES_SEED)
    halves = [np.isin(f["user_id"], rng.choice(users, len(users) // 2, replace=False)) for _ in range(HALVES_SPLITS)]
    spread_masks = {"test": np.ones(len(f["user_id"]), bool), "cold_start": masks["cold_start"]}

    def of(model_dir: str) -> dict:
        seeds = evaluate.seed_predictions(lake.partition("models", model_dir, ds, key="ds"), key, model_dir)
        out = {}
        for name, mask in masks.items():
            # in cfg's seed order, as run_job's test_*_seeds, so a draw of 3 seeds is the same 3 on every metric
            per_seed = [evaluate.score_metrics(f, seeds[s]["score"], mask, k) for s in cfg["ranker"]["seeds"]]
            out.update({f"{name}_{m}_{stat}": float(fn([r[m] for r in per_seed]))
                        for m in ("gauc", "recall_at_3") for stat, fn in (("mean", np.mean), ("std", lambda x: np.std(x, ddof=1)))})
            out.update({f"{name}_{m}_seeds": [float(r[m]) for r in per_seed] for m in ("gauc", "recall_at_3")})
        for name, mask in spread_masks.items():
            # per seed, per split: the metric on half A and on half B (bench.run.spread_parts reads them)
            per_seed = [[[evaluate.score_metrics(f, seeds[s]["score"], mask & side, k) for side in (a, ~a)] for a in halves]
                        for s in cfg["ranker"]["seeds"]]
            out.update({f"{name}_{m}_halves": [[[float(r[m]) for r in split] for split in seed] for seed in per_seed]
                        for m in ("gauc", "recall_at_3")})
        return out
    return of


def query_ceiling(ds: dt.date, lake_root: str, work: Path, overrides: list[str], variants=VARIANTS) -> dict:
    from rgalign_core import config, stage
    from rgalign_core.lake import Lake
    from rgalign_core.train_ranker import run_job

    source = Lake(str(Path(lake_root).resolve()))
    scratch_root = work / "lake"
    scratch = Lake(str(scratch_root))
    for area in ("features", "validated", "truth"):
        (scratch_root / area).parent.mkdir(parents=True, exist_ok=True)
        if not (scratch_root / area).exists():
            (scratch_root / area).symlink_to(Path(source.area(area)))
    (scratch_root / "queries").mkdir(exist_ok=True)
    if not (scratch_root / "queries" / "base").exists():
        (scratch_root / "queries" / "base").symlink_to(Path(source.table("queries", "base")))
    sets = overrides + [f"lake.root={scratch_root}", f"mlflow.tracking_uri=sqlite:///{work}/mlflow.db",
                        f"mlflow.artifact_root={work}/artifacts"]
    cfg = config.load("train_qe_rec", sets)
    days = stage.windows(ds, cfg)["samples"]
    write_query_variants(source, scratch, days)
    by_slice = slice_metrics(scratch, ds, cfg)
    rows = {}
    for variant in variants:
        model, query = ("two_tower", None) if variant == "baseline" else ("qe_rec", variant)
        result = stage.execute(f"query_ceiling_{variant}",
                               lambda ctx, m=model, q=query, v=variant: run_job(ctx, m, q, out_name=f"{m}_{v}"),
                               ds, cfg, force=True)
        rows[variant] = {k: result[k] for k in ("test_gauc_mean", "test_gauc_std", "test_recall_at_3_mean",
                                                "test_recall_at_3_std", "test_gauc_seeds", "test_recall_at_3_seeds",
                                                "valid_gauc_mean", "valid_gauc_seeds", "epochs_mean")}
        rows[variant].update(by_slice(f"{model}_{variant}"))
        print(f"{variant:9s} GAUC {rows[variant]['test_gauc_mean']:.4f} ± {rows[variant]['test_gauc_std']:.4f}   "
              f"Recall@3 {rows[variant]['test_recall_at_3_mean']:.4f} ± {rows[variant]['test_recall_at_3_std']:.4f}   "
              f"cold-start GAUC {rows[variant]['cold_start_gauc_mean']:.4f} ± {rows[variant]['cold_start_gauc_std']:.4f}   "
              f"text-need GAUC {rows[variant]['text_need_gauc_mean']:.4f}", flush=True)
    return {"ds": ds.isoformat(), "lake": str(source.root), "overrides": overrides, "seeds": cfg["ranker"]["seeds"],
            "variants": rows}


def _overrides_but_seeds(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.startswith("ranker.seeds=")]


def merge_results(parts: list[dict]) -> dict:
    """One query_ceiling result from several runs that trained disjoint seeds on the same inputs: the
    per-seed lists are concatenated (in the parts' order) and mean/std recomputed from them."""
    import numpy as np

    def same_inputs(x):
        # a file from before the spread's halves cannot be merged with one that has them
        halves = sorted(k for row in x["variants"].values() for k in row if k.endswith("_halves"))
        return x["ds"], x["lake"], sorted(_overrides_but_seeds(x["overrides"])), sorted(x["variants"]), halves
    first = parts[0]
    for x in parts[1:]:
        if same_inputs(x) != same_inputs(first):
            raise ValueError(f"cannot merge: {same_inputs(x)} differs from {same_inputs(first)} "
                             "(ds, lake, overrides other than ranker.seeds, variants and the recorded halves must match)")
    seeds = [s for x in parts for s in x["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"cannot merge: seeds repeat across the parts ({seeds})")
    variants = {}
    for name, row in first["variants"].items():
        merged = {}
        for key in row:
            if key.endswith(("_seeds", "_halves")):  # per-seed lists: concatenated in the parts' order
                merged[key] = [v for x in parts for v in x["variants"][name][key]]
            if key.endswith("_seeds"):
                stem = key[:-len("_seeds")]
                merged[stem + "_mean"] = float(np.mean(merged[key]))
                if stem + "_std" in row:
                    merged[stem + "_std"] = float(np.std(merged[key], ddof=1))
        merged["epochs_mean"] = float(np.average([x["variants"][name]["epochs_mean"] for x in parts],
                                                 weights=[len(x["seeds"]) for x in parts]))
        variants[name] = merged
    return {**first, "overrides": _overrides_but_seeds(first["overrides"]) + [f"ranker.seeds={seeds}"], "seeds": seeds, "variants": variants}


def main(argv=None) -> None:
    from bench.run import RESULTS, machine, write_benchmarks_md

    p = argparse.ArgumentParser(prog="python -m bench.query_ceiling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ds", help="logical date whose DAG run's lake partitions are read")
    p.add_argument("--lake", default=str(ROOT / "lake"), help="the lake the DAG wrote (local path)")
    p.add_argument("--work", default=str(ROOT / "bench" / "work" / "query_ceiling"), help="scratch lake + MLflow store")
    p.add_argument("--name", default="", help="results go to bench/results/query_ceiling_<name>.json (default: query_ceiling.json)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated subset of {','.join(VARIANTS)} (baseline is always trained: z is against it)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, as on a job (e.g. sim.scale=medium, ranker.seeds=[0,1,2,3,4])")
    p.add_argument("--merge", nargs="+", metavar="NAME",
                   help="train nothing: merge bench/results/NAME.json files of disjoint seeds into --name")
    args = p.parse_args(argv)
    name = f"query_ceiling_{args.name}" if args.name else "query_ceiling"
    if args.merge:
        files = [RESULTS / f"{n.removesuffix('.json')}.json" for n in args.merge]
        if missing := [str(f) for f in files if not f.exists()]:
            p.error(f"no such results file: {', '.join(missing)} (give the file's name without .json, e.g. "
                    f"query_ceiling_{args.name or 'x'}_a)")
        parts = [json.loads(f.read_text()) for f in files]
        try:
            merged = merge_results([x["query_ceiling"] for x in parts])
        except ValueError as e:
            p.error(str(e))
        result = {"name": name, "date": max(x["date"] for x in parts), "machine": parts[0]["machine"],
                  "merged_from": list(args.merge), "query_ceiling": merged}
    else:
        result = {"name": name, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "machine": machine(), "query_ceiling": train_from_args(p, args)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    write_benchmarks_md()


def train_from_args(p: argparse.ArgumentParser, args) -> dict:
    """query_ceiling() for the command line's --ds, --lake, --work, --variants and --set."""
    from rgalign_core.stage import setup_logging

    if not args.ds:
        p.error("--ds is required (unless --merge)")
    variants = ["baseline"] + [v for v in args.variants.split(",") if v and v != "baseline"]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    setup_logging()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    return query_ceiling(dt.date.fromisoformat(args.ds), args.lake, work, args.overrides, variants)


if __name__ == "__main__":
    main()
