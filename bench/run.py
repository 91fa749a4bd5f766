"""Benchmarks: `make bench` (or python -m bench.run --help).

reasoner: bootstrap tokens/s on 1 and 2 DeepSpeed processes, encode sequences/s with
length-sorted batches vs naive fixed-length padding on the same sessions, generation tokens/s.

retrieval: the retrieval teacher's text topics with TF-IDF vs the sentence encoder: sessions/s,
and how often the top KB category is the true need's, by the need's kind.

alignment: RG-SFT tokens/s with length-bucketed batches vs random batches (cut to their longest
row, or padded to the longest example).

rankers: training samples/s of our index-sliced loop vs a plain DataLoader on the same model
and data; GAUC's time on 10M rows, and vs a per-user scikit-learn loop on a subset.

foundation: at three simulator scales, times Spark running sql/session_features.sql +
sql/samples.sql on the validated Parquet (what extract_features does) next to DuckDB running
the same SQL (transpiled from Spark's dialect by sqlglot) on the same files, checks that both
engines agree.

dag: the whole nightly DAG (`airflow dags test`) on the default scale, on a fresh lake.

query_ceiling (`python -m bench.query_ceiling`, not part of `make bench`: it reads a lake the
DAG wrote): QE-Rec with a constant query, the reasoner's queries, the rules teacher's ranked
states (alone and with the text's KB categories) and the true need, next to the baseline.

Results: bench/results/<name>.json; BENCHMARKS.md is regenerated from every results file.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from rgalign_core.metrics import z_score

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
WORK = ROOT / "bench" / "work"
DS = dt.date(2026, 11, 21)


def machine() -> dict:
    import psutil

    cpu, info = "unknown", {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
        cpu = info.get("model name", cpu)
        # training figures depend on the vector instructions torch's kernels use (README, Status),
        # and "AMD EPYC" alone does not say which generation this is
        if "cpu family" in info:
            flags = info.get("flags", "").split()
            isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
            cpu = f"{cpu} (family {info['cpu family']} model {info.get('model', '?')}, {isa})"
    except OSError:
        pass
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()[0]
    return {
        "cpu": cpu, "logical_cores": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(), "java": java, "os": platform.platform(),
    }


def _stage(stage: str, lake: Path, sets: dict, force: bool = False) -> tuple[dict, float]:
    """Run one job in-process against a bench lake; returns (its metrics, wall seconds)."""
    from rgalign_core import config, stage as stage_mod
    import importlib

    overrides = [f"lake.root={lake}", f"mlflow.tracking_uri=sqlite:///{WORK}/mlflow.db",
                 f"mlflow.artifact_root={WORK}/mlartifacts", "mlflow.experiment=rgalign-bench"]
    overrides += [f"{k}={v}" for k, v in sets.items()]
    cfg = config.load(stage, overrides)
    job = importlib.import_module(f"jobs.{stage}")
    t0 = time.time()
    result = stage_mod.execute(stage, job.run, DS, cfg, force=force)
    return result, time.time() - t0


def duckdb_extract(lake: Path, days: list[dt.date], raw_days: list[dt.date], lookback: int, out: Path, threads: int) -> dict:
    """The same two SQL files on DuckDB over the same validated Parquet, written to Parquet."""
    import duckdb
    import sqlglot

    from jobs.extract_features import VIEWS
    from rgalign_core.spark import sql_text

    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    for view, table in VIEWS.items():
        files = [str(lake / "validated" / table / f"dt={d}" / "part-00000.parquet") for d in raw_days]
        con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet({files!r}, hive_partitioning = true)")
    feats_sql = sqlglot.transpile(sql_text("session_features.sql"), read="spark", write="duckdb")[0]
    samples_sql = sqlglot.transpile(sql_text("samples.sql"), read="spark", write="duckdb")[0]
    t0 = time.time()
    params = {"first_day": days[0].isoformat(), "last_day": days[-1].isoformat(), "lookback_days": lookback}
    con.execute(f"CREATE TEMP TABLE session_features AS {feats_sql}", params)
    leaks = con.execute("SELECT count(*) FROM session_features WHERE max_event_time_used >= session_time").fetchone()[0]
    out.mkdir(parents=True, exist_ok=True)
    con.execute(f"COPY (SELECT * EXCLUDE (max_event_time_used) FROM session_features ORDER BY session_id) "
                f"TO '{out}/sessions' (FORMAT parquet, PARTITION_BY (dt), OVERWRITE_OR_IGNORE)")
    con.execute(f"COPY ({samples_sql} ORDER BY session_id, position) TO '{out}/samples' "
                f"(FORMAT parquet, PARTITION_BY (dt), OVERWRITE_OR_IGNORE)")
    seconds = time.time() - t0
    sessions = con.execute(f"SELECT count(*), sum(n_orders), sum(n_searches_24h), count(recent_searches), sum(length(prompt)) "
                           f"FROM read_parquet('{out}/sessions/*/*.parquet')").fetchone()
    samples = con.execute(f"SELECT count(*), sum(clicked) FROM read_parquet('{out}/samples/*/*.parquet')").fetchone()
    return {"seconds": seconds, "leaks": leaks, "sessions": sessions[0], "check": [int(x) for x in sessions[1:]],
            "samples": samples[0], "clicks": int(samples[1])}


def spark_check(lake: Path, days: list[dt.date]) -> dict:
    import duckdb

    con = duckdb.connect()
    files = [str(lake / "features" / "sessions" / f"dt={d}" / "*.parquet") for d in days]
    s = con.execute(f"SELECT count(*), sum(n_orders), sum(n_searches_24h), count(recent_searches), sum(length(prompt)) FROM read_parquet({files!r})").fetchone()
    files = [str(lake / "features" / "samples" / f"dt={d}" / "*.parquet") for d in days]
    c = con.execute(f"SELECT count(*), sum(clicked) FROM read_parquet({files!r})").fetchone()
    return {"sessions": s[0], "check": [int(x) for x in s[1:]], "samples": c[0], "clicks": int(c[1])}


def spark_extract(lake: Path, days, raw_days, lookback: int, master: str) -> dict:
    """Spark session start and the extraction itself, timed apart."""
    from jobs.extract_features import extract
    from rgalign_core import config
    from rgalign_core import spark as sparkx
    from rgalign_core.lake import Lake

    cfg = config.load("extract_features", [f"spark.master={master}"])
    t0 = time.time()
    spark = sparkx.session(cfg)
    spark.range(1).count()
    start = time.time() - t0
    t0 = time.time()
    extract(spark, Lake(str(lake)), days, raw_days, lookback, {"fingerprint": "bench"})
    seconds = time.time() - t0
    spark.stop()
    return {"session_start_s": start, "seconds": seconds}


def foundation(scales: list[str]) -> dict:
    from rgalign_core import config
    from rgalign_core.stage import windows

    cfg = config.load("simulate_logs")
    w = windows(DS, cfg)
    lookback = int(cfg["windows"]["feature_lookback_days"])
    threads = os.cpu_count() or 2
    rows = []
    for scale in scales:
        lake = WORK / scale / "lake"
        shutil.rmtree(WORK / scale, ignore_errors=True)
        print(f"[{scale}] simulate", flush=True)
        sim, sim_s = _stage("simulate_logs", lake, {"sim.scale": scale})
        print(f"[{scale}] validate", flush=True)
        _, val_s = _stage("validate_raw", lake, {})
        events = sum(_rows(lake, "validated", "behaviour_events", w["raw"]))
        print(f"[{scale}] spark ({events:,} behaviour events)", flush=True)
        sp = spark_extract(lake, w["samples"], w["raw"], lookback, "local[*]")
        sp.update(spark_check(lake, w["samples"]))
        print(f"[{scale}] duckdb", flush=True)
        dk = duckdb_extract(lake, w["samples"], w["raw"], lookback, WORK / scale / "duckdb_out", threads)
        agree = all(sp[k] == dk[k] for k in ("sessions", "samples", "clicks", "check"))
        rows.append({
            "scale": scale, "users": sim.get("users"), "behaviour_events": events, "sessions": sp["sessions"],
            "samples": sp["samples"], "simulate_s": sim_s, "validate_s": val_s,
            "spark_session_start_s": sp["session_start_s"], "spark_s": sp["seconds"], "duckdb_s": dk["seconds"],
            "spark_events_per_s": events / sp["seconds"], "duckdb_events_per_s": events / dk["seconds"],
            "spark_over_duckdb": sp["seconds"] / dk["seconds"], "engines_agree": agree,
            "spark_check": sp, "duckdb_check": dk,
        })
        print(json.dumps(rows[-1], indent=1, default=str), flush=True)
        shutil.rmtree(WORK / scale, ignore_errors=True)
    return {"name": "foundation", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "threads": threads, "extraction": rows}


def _rows(lake: Path, area: str, table: str, days) -> list[int]:
    return [json.loads((lake / area / table / f"dt={d}" / "_SUCCESS").read_text()).get("rows", 0) for d in days]


def dag_wall_time(scale: str = "small") -> dict:
    """`airflow dags test` of the whole DAG on a fresh lake and Airflow home."""
    home = WORK / "dag" / "airflow"
    shutil.rmtree(WORK / "dag", ignore_errors=True)
    home.mkdir(parents=True)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "RGALIGN_LAKE_ROOT": str(WORK / "dag" / "lake"), "MLFLOW_TRACKING_URI": f"sqlite:///{WORK}/dag/mlflow.db",
           "RGALIGN_MLFLOW_ARTIFACT_ROOT": str(WORK / "dag" / "mlartifacts"), "RGALIGN_TASK_RETRIES": "0"}
    subprocess.run([str(bin_dir / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([str(bin_dir / "airflow"), "pools", "set", "rgalign_heavy", "1", "bench"], env=env, check=True, capture_output=True)
    t0 = time.time()
    proc = subprocess.run([str(bin_dir / "airflow"), "dags", "test", "rgalign_nightly", DS.isoformat(), "--conf",
                           json.dumps({"scale": scale})], env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.time() - t0
    listed = subprocess.run([str(bin_dir / "airflow"), "tasks", "list", "rgalign_nightly"], env=env, check=True,
                            capture_output=True, text=True).stdout.split()
    shutil.rmtree(WORK / "dag", ignore_errors=True)
    tasks = f"{len(listed)} tasks: " + ", ".join(listed)
    return {"scale": scale, "wall_s": wall, "ok": proc.returncode == 0, "tasks": tasks}


def _simulated_lake(name: str, scale: str = "small") -> Path:
    """A fresh bench lake under bench/work/<name>/ with simulated logs, validated, features extracted."""
    lake = WORK / name / "lake"
    shutil.rmtree(WORK / name, ignore_errors=True)
    for stage in ("simulate_logs", "validate_raw", "extract_features"):
        print(f"[{name}] {stage}", flush=True)
        _stage(stage, lake, {"sim.scale": scale})
    return lake


def _feature_days(lake: Path) -> list[dt.date]:
    """The days a bench lake has features/sessions for, oldest first."""
    return sorted(dt.date.fromisoformat(p.name[3:]) for p in (lake / "features" / "sessions").glob("dt=*"))


def retrieval_bench() -> dict:
    """The retrieval teacher's text topics on every session of a small simulated lake (the 20 days
    bootstrap_reasoner and teachers_generate read): sessions/s with each encoder, and how often the
    top KB category is the session's true need's (the simulator's truth), by the need's kind."""
    from jobs.evaluate import read_truth
    from jobs.teachers_generate import kb_reader, read_sessions
    from rgalign_core import config, teachers
    from rgalign_core.lake import Lake
    from rgalign_core.sim_world import NEEDS

    lake = _simulated_lake("retrieval")
    lk = Lake(str(lake))
    days = _feature_days(lake)
    by_day = read_sessions(lk, days)
    rows = [r for d in days for r in by_day[d]]
    need = read_truth(lk, "session_needs", days).set_index("session_id")["need"]
    kind = np.array([NEEDS[need[r["session_id"]]][1] for r in rows])
    category = np.array([NEEDS[need[r["session_id"]]][0] for r in rows])
    default = config.load("teachers_generate")["teachers"]["retrieval"]
    encoders = {"tfidf": {**default, "encoder": "tfidf", "min_score": 0.1}, default["encoder"]: default}
    out = {"sessions": len(rows), "days": len(days), "default": default, "encoders": {}}
    for name, settings in encoders.items():
        kb = kb_reader(lk)
        for d in days:  # the KB is read before the clock starts; the encoder's load is timed
            kb(d)
        t0 = time.time()
        teacher = teachers.build_teacher("builtin:retrieval", {"retrieval": settings}, kb=kb)
        top = np.array([t[0] if t else "" for t in teacher.topics(rows, 1)])
        wall = time.time() - t0
        x = {"settings": settings, "wall_s": wall, "sessions_per_s": len(rows) / wall, "by_kind": {}}
        for k in ("text", "weak", "discrete", "noise"):
            m = kind == k
            x["by_kind"][k] = {"sessions": int(m.sum()), "with_topic": float((top[m] != "").mean()),
                               "top_category_is_true_need": float((top[m] == category[m]).mean())}
        out["encoders"][name] = x
        print(f"[retrieval] {name}: {wall:.1f} s, text needs {x['by_kind']['text']['top_category_is_true_need']:.3f}", flush=True)
    shutil.rmtree(WORK / "retrieval", ignore_errors=True)
    return out


def reasoner_bench(nprocs=(1, 2), steps: int = 60, n_sessions: int = 512) -> dict:
    """Bootstrap tokens/s by process count; encode with length-sorted batches vs naive fixed padding;
    generation tokens/s. On a small simulated lake built here."""
    from rgalign_core import config
    from rgalign_core.lake import Lake
    from rgalign_core.reasoner import Reasoner

    lake = _simulated_lake("reasoner")
    boot = {}
    for n in nprocs:
        print(f"[reasoner] bootstrap on {n} process(es)", flush=True)
        result, wall = _stage("bootstrap_reasoner", lake, {"train.steps": steps, "train.nproc": n, "train.log_every": 10}, force=True)
        boot[n] = {"tokens_per_s": result["tokens_per_s"], "wall_s": wall, "final_loss": result["final_loss"]}
    lk = Lake(str(lake))
    reasoner = Reasoner.load(lk.partition("models", "reasoner", DS, key="ds"))
    days = _feature_days(lake)
    prompts = []
    for d in reversed(days):
        prompts += lk.read_partition(lk.partition("features", "sessions", d), "sessions")["prompt"].to_pylist()
        if len(prompts) >= n_sessions:
            break
    prompts = prompts[:n_sessions]
    t0 = time.time()
    queries = reasoner.generate(prompts, max_new_tokens=24, batch_size=64)
    gen_s = time.time() - t0
    new_tokens = sum(len(x) for x in reasoner.tok(queries, add_special_tokens=False)["input_ids"])
    texts = [reasoner.query_text(p, q) for p, q in zip(prompts, queries)]
    longest = max(len(x) for x in reasoner.tok(texts, add_special_tokens=False)["input_ids"])
    timings = {}
    for name, kw in (("sorted", {"sort": True}), ("naive_fixed", {"sort": False, "pad_to": longest})):
        reasoner.embed_texts(texts[:64], batch_size=64, **kw)  # warm-up
        t0 = time.time()
        emb = reasoner.embed_texts(texts, batch_size=64, **kw)
        timings[name] = {"seconds": time.time() - t0, "seq_per_s": len(texts) / (time.time() - t0), "emb": emb}
    same = float(np.min(np.sum(timings["sorted"]["emb"] * timings["naive_fixed"]["emb"], 1) /
                        (np.linalg.norm(timings["sorted"]["emb"], axis=1) * np.linalg.norm(timings["naive_fixed"]["emb"], axis=1))))
    shutil.rmtree(WORK / "reasoner", ignore_errors=True)
    return {
        "bootstrap": {str(k): v for k, v in boot.items()}, "bootstrap_steps": steps,
        "bootstrap_rows": config.load("bootstrap_reasoner")["train"].get("rows", "packed"),
        "parameters": sum(p.numel() for p in reasoner.model.parameters()),
        "encode_sessions": len(texts), "encode_longest_tokens": longest,
        "encode_sorted_seq_per_s": timings["sorted"]["seq_per_s"], "encode_naive_seq_per_s": timings["naive_fixed"]["seq_per_s"],
        "encode_speedup": timings["sorted"]["seq_per_s"] / timings["naive_fixed"]["seq_per_s"],
        "encode_min_cosine_sorted_vs_naive": same,
        "generate_seq_per_s": len(prompts) / gen_s, "generate_tokens_per_s": new_tokens / gen_s,
    }


def alignment_bench(steps: int = 40, global_batch: int = 32) -> dict:
    """RG-SFT tokens/s on the same examples three ways: length-bucketed batches cut to their longest
    row (ours), random batches cut to their longest row, random batches padded to the longest
    example (naive). Examples: real prompts of a tiny simulated lake + the rules teacher's queries
    (the same shape as rewards/best); model: the tiny reasoner architecture, untrained."""
    from jobs.teachers_generate import kb_reader, read_sessions
    from rgalign_core import alignment, config, ds_trainer, teachers
    from rgalign_core.lake import Lake
    from rgalign_core.reasoner import build_tiny, train_tokenizer

    lake = _simulated_lake("alignment", "tiny")
    lk = Lake(str(lake))
    days = _feature_days(lake)
    rows = [r for day_rows in read_sessions(lk, days).values() for r in day_rows]
    cfg = config.load("rg_sft")
    rules = teachers.build("builtin:rules", cfg, kb=kb_reader(lk), seed=0)
    queries = [q[0] if q else "" for q in rules.generate(rows, 1)]
    template = cfg["reasoner"]["template"]
    tok = train_tokenizer([r["prompt"] for r in rows] + queries, 4096)
    arch = {k: v for k, v in cfg["reasoner"]["tiny"].items() if k != "vocab_size"}
    init = WORK / "alignment" / "init"
    build_tiny(tok, arch, seed=0).save_pretrained(init)
    tok.save_pretrained(init)
    arrays = alignment.sft_arrays(tok, template, [r["prompt"] for r in rows], queries, int(cfg["rg_sft"]["max_len"]))
    np.savez(WORK / "alignment" / "sft.npz", **arrays)
    base = {"objective": "sft", "model_dir": str(init), "data": str(WORK / "alignment" / "sft.npz"),
            "ds_config": str(ROOT / "conf/deepspeed/zero0.json"), "global_batch": global_batch, "train_steps": steps,
            "lr": 5e-4, "warmup_steps": 0, "seed": 0, "log_every": 5}
    ways = {"bucketed": {"bucket_by": "length"}, "random_trimmed": {}, "naive_padded": {"trim_batches": False}}
    out = {"examples": len(queries), "steps": steps, "global_batch": global_batch,
           "mean_tokens": float(arrays["length"].mean()), "max_tokens": int(arrays["length"].max())}
    for name, extra in ways.items():
        print(f"[alignment] RG-SFT, {name}", flush=True)
        t0 = time.time()
        hist = ds_trainer.launch({**base, "name": name, **extra}, 1, WORK / "alignment" / name)
        tps = [h["tokens_per_s"] for h in hist[1:]]  # the first interval includes start-up
        out[name] = {"tokens_per_s": float(np.mean(tps)), "wall_s": time.time() - t0, "final_loss": hist[-1]["loss"]}
    out["bucketed_over_naive"] = out["bucketed"]["tokens_per_s"] / out["naive_padded"]["tokens_per_s"]
    out["bucketed_over_random_trimmed"] = out["bucketed"]["tokens_per_s"] / out["random_trimmed"]["tokens_per_s"]
    shutil.rmtree(WORK / "alignment", ignore_errors=True)
    return out


def rankers_bench(n_sessions: int = 20000, gauc_rows: int = 10_000_000) -> dict:
    """Ranker training throughput, our index-sliced loop vs a plain PyTorch DataLoader over a
    per-session Dataset (same model, data, batch size, one thread); GAUC's time on 10M rows vs a
    per-user scikit-learn loop on a 100k-row subset."""
    import pandas as pd
    import torch
    from sklearn.metrics import roc_auc_score

    sys.path.insert(0, str(ROOT / "tests"))
    from test_rankers import TINY, tiny_data  # the zoo's tiny synthetic data, at a bigger size

    from rgalign_core import metrics, train_ranker

    torch.set_num_threads(1)
    cfg = {**TINY, "field_dim": 16, "dim": 32, "hidden": 64, "autoint_layers": 2, "experts": 4}
    data = tiny_data(n=n_sessions, k=5, qdim=128, seed=0)
    B = 128
    n_imp = int(data.tensors["mask"].sum())

    def epoch(batches):
        model = train_ranker.build("qe_rec", train_ranker.schema_of(data), cfg, seed=0)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        t0 = time.time()
        for b in batches:
            loss = train_ranker.loss_fn(model(b, with_position=True), b, 1.0, 0.5)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return n_imp / (time.time() - t0)

    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(data.n, generator=gen).numpy()
    ours = epoch(data.batch(perm[a:a + B]) for a in range(0, data.n, B))

    class Sessions(torch.utils.data.Dataset):
        def __len__(self):
            return data.n

        def __getitem__(self, i):
            return {k: v[i] for k, v in data.tensors.items()}

    loader = torch.utils.data.DataLoader(Sessions(), batch_size=B, shuffle=True, generator=torch.Generator().manual_seed(0))
    plain = epoch(iter(loader))

    rng = np.random.default_rng(0)
    users = rng.integers(0, gauc_rows // 10, gauc_rows)
    labels = (rng.random(gauc_rows) < 0.1).astype(np.int8)
    scores = rng.random(gauc_rows).astype(np.float32)
    t0 = time.time()
    value, n_users = metrics.gauc(users, labels, scores)
    gauc_s = time.time() - t0
    sub = 100_000
    df = pd.DataFrame({"u": users[:sub], "y": labels[:sub], "s": scores[:sub]})
    t0 = time.time()
    metrics.gauc(users[:sub], labels[:sub], scores[:sub])
    ours_sub = time.time() - t0
    t0 = time.time()
    df.groupby("u").apply(lambda g: roc_auc_score(g.y, g.s) if 0 < g.y.sum() < len(g) else np.nan, include_groups=False)
    sk_sub = time.time() - t0
    return {"sessions": n_sessions, "impressions": n_imp, "batch_sessions": B, "ours_samples_per_s": ours,
            "dataloader_samples_per_s": plain, "speedup": ours / plain, "gauc_rows": gauc_rows, "gauc_users": n_users,
            "gauc_s": gauc_s, "gauc_subset_rows": sub, "gauc_subset_ours_s": ours_sub, "gauc_subset_sklearn_loop_s": sk_sub,
            "gauc_subset_speedup": sk_sub / ours_sub}


HEADLINE = (("test_gauc", "GAUC"), ("test_recall_at_3", "Recall@3"), ("cold_start_gauc", "cold-start GAUC"),
            ("cold_start_recall_at_3", "cold-start Recall@3"))


def three_seed_power(variants: dict, n_seeds: int) -> str:
    """Markdown: for each variant, the share of the 3-seed draws from the n seeds trained (the same 3
    for both models, as a DAG run uses) on which it clears z > 3 against the baseline, per headline
    metric and on all four at once (issue 4's claim)."""
    from itertools import combinations

    draws = [list(c) for c in combinations(range(n_seeds), 3)]
    base = variants["baseline"]
    out = [f"\nOver {len(draws)} draws of 3 of these {n_seeds} seeds, the share on which the variant clears "
           "z > 3 against the baseline (the issue's \"> 3 σ over 3 seeds\"):\n\n| variant | "
           + " | ".join(label for _, label in HEADLINE) + " | all four |\n|---|" + "---:|" * (len(HEADLINE) + 1) + "\n"]
    for name, v in variants.items():
        if name == "baseline":
            continue
        clears = []
        for m, _ in HEADLINE:
            a, b = np.array(v[m + "_seeds"]), np.array(base[m + "_seeds"])
            clears.append([z_score(a[d].mean(), a[d].std(ddof=1), b[d].mean(), b[d].std(ddof=1)) > 3 for d in draws])
        clears = np.array(clears)
        out.append(f"| {name} | " + " | ".join(f"{c.mean():.0%}" for c in clears) + f" | {clears.all(0).mean():.0%} |\n")
    return "".join(out)


def spread_decomposition(halves, full) -> tuple[float, float]:
    """(seed variance, test-window variance) of a metric over seeds. ``full[seed]`` is its value on
    the whole test window, ``halves[seed][split] = (on half A, on half B)`` on random halves of the
    test users. Over seeds, cov(A, B) is what the seeds really differ by (it would stay on any test
    set); the rest of the variance of ``full`` is how each seed's errors fall on these users, which
    shrinks as 1 / the window's length. The seeds' part is clipped to [0, variance] (a negative
    covariance is noise around zero), so the two parts always add up to the variance."""
    h = np.asarray(halves, dtype=np.float64)  # seeds x splits x 2
    total = float(np.var(np.asarray(full, dtype=np.float64), ddof=1))
    cov = float(np.mean([np.cov(h[:, i, 0], h[:, i, 1])[0, 1] for i in range(h.shape[1])]))
    seeds_var = min(max(cov, 0.0), total)
    return seeds_var, total - seeds_var


def spread_parts(variants: dict, longer: int = 10, resamples: int = 500) -> str:
    """Markdown: each headline metric's seed spread split into the seeds' own part and the finite test
    window's part (``spread_decomposition``), and the z a variant would have against the baseline with
    a test window ``longer`` times as long (its window part divided by that, the seeds' kept), with a
    90 % interval from resampling the seeds (the split of a few seeds' spread is itself uncertain)."""
    rng = np.random.default_rng(0)
    base = variants["baseline"]
    n_seeds = len(base[HEADLINE[0][0] + "_seeds"])

    def z_longer(v, m, idx_v, idx_b) -> float:
        sds = []
        for row, idx in ((v, idx_v), (base, idx_b)):
            seeds_var, window_var = spread_decomposition(np.asarray(row[m + "_halves"])[idx], np.asarray(row[m + "_seeds"])[idx])
            sds.append(np.sqrt(seeds_var + window_var / longer))
        return z_score(np.mean(np.asarray(v[m + "_seeds"])[idx_v]), sds[0], np.mean(np.asarray(base[m + "_seeds"])[idx_b]), sds[1])

    splits = len(base[HEADLINE[0][0] + "_halves"][0])
    out = [f"\nWhat each seed spread is made of (sd² = seeds² + window², from {splits} random halves of the test "
           "users; `bench.run.spread_decomposition`): *seeds* is how much the trained models really differ, "
           "*window* how their errors happen to fall on this test window's users, which a longer window shrinks "
           "(seeds 0.0000: the halves' covariance was at or below zero, so that part cannot be told from none). "
           f"z ×{longer}: the z against the baseline with a test window {longer}× as long, and its 5–95 % range "
           f"over {resamples} resamplings of the seeds.\n\n"
           "| variant | " + " | ".join(label for _, label in HEADLINE) + " |\n|---|" + "---|" * len(HEADLINE) + "\n"]
    everyone = np.arange(n_seeds)
    for name, v in variants.items():
        cells = []
        for m, _ in HEADLINE:
            seeds_var, window_var = spread_decomposition(v[m + "_halves"], v[m + "_seeds"])
            cell = f"seeds {np.sqrt(seeds_var):.4f} · window {np.sqrt(window_var):.4f}"
            if name != "baseline":
                boot = [z_longer(v, m, rng.integers(0, n_seeds, n_seeds), rng.integers(0, n_seeds, n_seeds)) for _ in range(resamples)]
                lo, hi = np.percentile(boot, [5, 95])
                cell += f" (z ×{longer}: {z_longer(v, m, everyone, everyone):+.1f}, {lo:+.1f} to {hi:+.1f})"
            cells.append(cell)
        out.append(f"| {name} | " + " | ".join(cells) + " |\n")
    return "".join(out)


def write_benchmarks_md() -> None:
    """BENCHMARKS.md from every results file (so each benchmark owns its section)."""
    parts = ["# Benchmarks\n", "Generated by `make bench` from `bench/results/*.json`; do not edit by hand.\n"]
    for path in sorted(RESULTS.glob("*.json")):
        r = json.loads(path.read_text())
        m = r["machine"]
        parts.append(f"\n## {r['name']} ({r['date']})\n")
        parts.append(f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, {m['ram_gib']} GiB RAM, "
                     f"Python {m['python']}, {m['java']}, {m['os']}. No GPU.\n")
        if r["name"] == "foundation":
            parts.append(
                "\n### Feature extraction: Spark vs DuckDB on the same SQL and the same Parquet\n\n"
                "Spark (`local[*]`) runs `sql/session_features.sql` + `sql/samples.sql` and writes both tables "
                "by day, as `extract_features` does (the leakage check included). DuckDB "
                f"({r['threads']} threads) runs the same files transpiled by sqlglot and writes the same tables. "
                "Times exclude Spark's session start (shown apart). *Agree* = both engines give the same "
                "session and sample counts, clicks, sums of three feature columns and the total prompt length.\n\n"
                "| scale | users | behaviour events | sessions | samples | Spark s | Spark events/s | DuckDB s | "
                "DuckDB events/s | Spark / DuckDB time | agree | Spark session start s |\n"
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|\n")
            for x in r["extraction"]:
                parts.append(
                    f"| {x['scale']} | {x['users']:,} | {x['behaviour_events']:,} | {x['sessions']:,} | {x['samples']:,} | "
                    f"{x['spark_s']:.1f} | {x['spark_events_per_s']:,.0f} | {x['duckdb_s']:.1f} | "
                    f"{x['duckdb_events_per_s']:,.0f} | {x['spark_over_duckdb']:.1f}× | {'yes' if x['engines_agree'] else 'NO'} | "
                    f"{x['spark_session_start_s']:.1f} |\n")
            ratios = [x["spark_over_duckdb"] for x in r["extraction"]]
            parts.append(
                f"\nOn this machine DuckDB is {min(ratios):.1f}–{max(ratios):.1f}× faster than Spark on the same query; the gap "
                "narrows as data grows (Spark's fixed per-stage overhead dominates small inputs). Spark is the engine here "
                "because the same job must run on a cluster (`spark.master`); a single-machine user with this data size "
                "would be well served by DuckDB. The JVM starts once per process, so only the first scale's session "
                "start includes it.\n")
            parts.append("\nSimulation and validation at the same scales (wall seconds, one process):\n\n"
                         "| scale | simulate_logs s | validate_raw s |\n|---|---:|---:|\n")
            for x in r["extraction"]:
                parts.append(f"| {x['scale']} | {x['simulate_s']:.1f} | {x['validate_s']:.1f} |\n")
        if r["name"] == "dag":
            d = r["dag"]
            parts.append(f"\n### Whole DAG\n\n`airflow dags test rgalign_nightly` on a fresh lake and Airflow home, scale "
                         f"`{d['scale']}`, default configs, every task ({d['tasks']}): **{d['wall_s']:.0f} s** wall"
                         f"{'' if d['ok'] else ' (FAILED)'}.\n")
        if r["name"] == "reasoner":
            x = r["reasoner"]
            b = x["bootstrap"]
            parts.append(
                f"\n### Reasoner (built-in tiny Qwen3, {x['parameters']:,} parameters)\n\n"
                f"**Bootstrap** (`bootstrap_reasoner`, DeepSpeed ZeRO-0 on CPU/gloo, {x['bootstrap_steps']} steps of "
                f"{'32 documents, one per row, length-bucketed' if x.get('bootstrap_rows') == 'document' else '32 packed blocks of 128 tokens'}), "
                "tokens/s as logged by rank 0:\n\n| processes | tokens/s | job wall s | final loss |\n|---:|---:|---:|---:|\n")
            for n, v in b.items():
                parts.append(f"| {n} | {v['tokens_per_s']:,.0f} | {v['wall_s']:.0f} | {v['final_loss']:.3f} |\n")
            if "1" in b and "2" in b:
                parts.append(f"\n2 processes / 1 process throughput: {b['2']['tokens_per_s'] / b['1']['tokens_per_s']:.2f}× on the "
                             "same cores (each process gets OMP_NUM_THREADS = cores / processes). The same global batch "
                             "gives the same loss on 1 and 2 processes (tests/test_ds_trainer.py).\n")
            parts.append(
                f"\n**Encode** (last-token pooled embeddings of prompt + query, {x['encode_sessions']} sessions, batch 64): "
                f"length-sorted batches {x['encode_sorted_seq_per_s']:,.0f} seq/s vs naive fixed-length padding "
                f"(to the longest text, {x['encode_longest_tokens']} tokens, input order) {x['encode_naive_seq_per_s']:,.0f} seq/s: "
                f"**{x['encode_speedup']:.2f}×**; both give the same vectors (min cosine {x['encode_min_cosine_sorted_vs_naive']:.6f}).\n"
                f"\n**Generation** (greedy, ≤ 24 new tokens, batch 64, length-sorted): {x['generate_seq_per_s']:,.1f} seq/s, "
                f"{x['generate_tokens_per_s']:,.0f} new tokens/s.\n")
        if r["name"] == "retrieval":
            x = r["retrieval"]
            enc = x["encoders"]
            parts.append(
                f"\n### Retrieval teacher: its text topics, by encoder\n\n`RetrievalTeacher.topics(sessions, 1)` over all "
                f"{x['sessions']:,} sessions of a fresh `small` simulated lake ({x['days']} days, each day's KB), one process; "
                "wall time includes building the index (and loading the sentence encoder). *Right* = the top KB "
                "category is the category of the session's true need (the simulator's truth); *with topic* = the share "
                "of sessions given one (score ≥ `min_score`).\n\n| encoder | min_score | sessions/s | wall s | "
                + " | ".join(f"{k}: right / with topic" for k in ("text", "weak", "discrete", "noise")) + " |\n"
                "|---|---:|---:|---:|---|---|---|---|\n")
            for name, v in enc.items():
                cells = [f"{v['by_kind'][k]['top_category_is_true_need']:.3f} / {v['by_kind'][k]['with_topic']:.2f}"
                         for k in ("text", "weak", "discrete", "noise")]
                parts.append(f"| {name} | {v['settings']['min_score']} | {v['sessions_per_s']:,.0f} | {v['wall_s']:.1f} | "
                             + " | ".join(cells) + " |\n")
            if "tfidf" in enc and len(enc) > 1:
                other = next(k for k in enc if k != "tfidf")
                parts.append(f"\n{other} / tfidf time: **{enc[other]['wall_s'] / enc['tfidf']['wall_s']:.1f}×**; on the "
                             f"{enc['tfidf']['by_kind']['text']['sessions']:,} text-need sessions it names the right category "
                             f"{enc[other]['by_kind']['text']['top_category_is_true_need']:.1%} of the time against "
                             f"{enc['tfidf']['by_kind']['text']['top_category_is_true_need']:.1%}.\n")
        if r["name"] == "alignment":
            x = r["alignment"]
            parts.append(
                f"\n### RG-SFT batching\n\nThe shared DeepSpeed loop (1 CPU process, ZeRO-0) on {x['examples']:,} prompt → query "
                f"examples (real simulated prompts, rules-teacher queries; mean {x['mean_tokens']:.0f}, max {x['max_tokens']} "
                f"tokens), {x['steps']} steps of {x['global_batch']} examples, the tiny reasoner architecture. Tokens/s counts "
                "real (non-pad) tokens, so the three ways are directly comparable:\n\n"
                "| batching | tokens/s | job wall s |\n|---|---:|---:|\n")
            for name, label in (("bucketed", "length-bucketed, cut to the longest row (ours)"),
                                ("random_trimmed", "random, cut to the longest row"),
                                ("naive_padded", "random, padded to the longest example")):
                parts.append(f"| {label} | {x[name]['tokens_per_s']:,.0f} | {x[name]['wall_s']:.0f} |\n")
            parts.append(f"\nBucketed / naive: **{x['bucketed_over_naive']:.2f}×**; bucketed / random-trimmed: "
                         f"**{x['bucketed_over_random_trimmed']:.2f}×**.\n")
        if r["name"] == "rankers":
            x = r["rankers"]
            parts.append(
                f"\n### Rankers\n\n**Training throughput** (QE-Rec, one epoch over {x['sessions']:,} synthetic sessions = "
                f"{x['impressions']:,} impressions, {x['batch_sessions']} sessions per batch, 1 thread): tensors sliced by "
                f"session index (ours) {x['ours_samples_per_s']:,.0f} samples/s vs a plain PyTorch `DataLoader` over a "
                f"per-session `Dataset` {x['dataloader_samples_per_s']:,.0f} samples/s: **{x['speedup']:.2f}×**.\n"
                f"\n**GAUC** on {x['gauc_rows']:,} rows ({x['gauc_users']:,} users with both classes): **{x['gauc_s']:.1f} s** "
                f"(sort + segment sums). On a {x['gauc_subset_rows']:,}-row subset: ours {x['gauc_subset_ours_s']*1000:.0f} ms vs "
                f"a per-user pandas groupby + scikit-learn `roc_auc_score` loop {x['gauc_subset_sklearn_loop_s']:.1f} s "
                f"(**{x['gauc_subset_speedup']:.0f}×**).\n")
        if r["name"].startswith("query_ceiling"):
            x = r["query_ceiling"]
            parts.append(
                f"\n### What a latent query can give QE-Rec (`python -m bench.query_ceiling`)\n\nNot a speed benchmark: the "
                f"ranker's floor and ceiling on the lake of ds={x['ds']} ({x['lake']}, overrides {x['overrides'] or 'none'}), "
                f"seeds {x['seeds']}, test window. *constant*: one query for every session (QE-Rec must match the "
                "baseline); *base*: the reasoner's queries; *rules*: the rules teacher's pending states, ranked, as a "
                "vector (what the reasoner's main teacher knows; no truth, no clicks); *rules_text*: the same next to the KB "
                "categories the session's text is about, ranked (the retrieval teacher's topics: what the reasoner's summary "
                "is trained to say); *oracle*: the simulator's true "
                "need, one-hot (a perfect reasoner). Cold-start: `evaluate`'s slice, sessions that showed an intent created in "
                "the last 7 days. Text need: `evaluate`'s sessions whose latent need only the text shows (searches, chat). "
                "(z) = the difference from the baseline in standard deviations, "
                "Δ / √(sd₁² + sd₂²).\n\n| variant | test GAUC | test Recall@3 | cold-start GAUC | cold-start Recall@3 | "
                "text-need GAUC | text-need Recall@3 | best valid GAUC | epochs |\n|---|---|---|---|---|---|---|---:|---:|\n")
            base = x["variants"].get("baseline")
            for name, v in x["variants"].items():
                cells = []
                for m in ("test_gauc", "test_recall_at_3", "cold_start_gauc", "cold_start_recall_at_3",
                          "text_need_gauc", "text_need_recall_at_3"):
                    if m + "_mean" not in v:  # a results file from before the text-need slice
                        cells.append("–")
                        continue
                    cell = f"{v[m + '_mean']:.4f} ± {v[m + '_std']:.4f}"
                    if base is not None and name != "baseline":
                        z = z_score(v[m + "_mean"], v[m + "_std"], base[m + "_mean"], base[m + "_std"])
                        cell += f" ({z:+.1f})"
                    cells.append(cell)
                parts.append(f"| {name} | {' | '.join(cells)} | {v['valid_gauc_mean']:.4f} | {v['epochs_mean']:.1f} |\n")
            if len(x["seeds"]) > 3 and base is not None and "cold_start_gauc_seeds" in base:
                parts.append(three_seed_power(x["variants"], len(x["seeds"])))
            if len(x["seeds"]) > 3 and base is not None and "test_gauc_halves" in base:
                parts.append(spread_parts(x["variants"]))
        if "notes" in r:
            parts.append("\n" + r["notes"] + "\n")
    (ROOT / "BENCHMARKS.md").write_text("".join(parts))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", default="small,medium,large", metavar="S1,S2",
                   help="comma-separated simulator scales for the foundation (extraction) benchmark, from "
                        "tiny, small, medium, large (conf/simulate_logs.yaml: 300 to 200k users; default: %(default)s)")
    p.add_argument("--only-md", action="store_true", help="only regenerate BENCHMARKS.md from bench/results")
    p.add_argument("--only", choices=["foundation", "reasoner", "retrieval", "rankers", "alignment", "dag"], help="run one benchmark (default: all; query_ceiling is its own module, see above)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    if not args.only_md:
        from rgalign_core.stage import setup_logging

        setup_logging()
        WORK.mkdir(parents=True, exist_ok=True)
        RESULTS.mkdir(parents=True, exist_ok=True)
        if args.only in (None, "foundation"):
            result = foundation(args.scales.split(","))
            (RESULTS / "foundation.json").write_text(json.dumps(result, indent=2, default=str))
        if args.only in (None, "reasoner"):
            result = {"name": "reasoner", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                      "machine": machine(), "reasoner": reasoner_bench()}
            (RESULTS / "reasoner.json").write_text(json.dumps(result, indent=2, default=str))
        if args.only in (None, "dag"):
            result = {"name": "dag", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                      "machine": machine(), "dag": dag_wall_time()}
            (RESULTS / "dag.json").write_text(json.dumps(result, indent=2, default=str))
        if args.only in (None, "retrieval"):
            result = {"name": "retrieval", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                      "machine": machine(), "retrieval": retrieval_bench()}
            (RESULTS / "retrieval.json").write_text(json.dumps(result, indent=2, default=str))
        if args.only in (None, "alignment"):
            result = {"name": "alignment", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                      "machine": machine(), "alignment": alignment_bench()}
            (RESULTS / "alignment.json").write_text(json.dumps(result, indent=2, default=str))
        if args.only in (None, "rankers"):
            result = {"name": "rankers", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                      "machine": machine(), "rankers": rankers_bench()}
            (RESULTS / "rankers.json").write_text(json.dumps(result, indent=2, default=str))
    write_benchmarks_md()
    print((ROOT / "BENCHMARKS.md").read_text())


if __name__ == "__main__":
    main()
