"""Publish: the night's ranker into the model registry, a champion/challenger gate, top-K for serving.

1. Bundle the calibrated QE-Rec of ``--ds`` (``publish.model``, seed ``publish.model_seed``) with the
   reasoner it reads and the day's KB (``rgalign_core/serving.py``), log it as an MLflow pyfunc
   model and register it as a version of ``publish.registered_model`` with the alias
   ``challenger``. The version's tags and description carry the gate's figures.
2. Score the test window's shown intents with the challenger (its queries from the lake) and the
   current ``champion`` version loaded from the registry (its own reasoner writes the queries; it
   runs on this checkout's code, already imported, not the copy registered with it). The
   challenger becomes champion when its model (mean over seeds) does not lose to the two-tower's
   on GAUC or on session GAUC (the ranking inside a session), it beats the champion by
   ``gate.min_gain_over_champion`` and its ECE is within ``gate.max_ece``; a rejected challenger
   keeps its version and the ``challenger`` alias for inspection.
3. Write ``serving/topk/dt=<ds>/``: for every user with a session in the last
   ``publish.active_days`` days, the ``publish.top_k`` KB questions the champion ranks first from
   that user's latest session, with the calibrated probability, the latent query and the model
   version. With no champion at all (the first night's challenger rejected), the task fails.

A rerun for the same date with the same inputs reuses the registered version (found by its
fingerprint tag) and rewrites nothing; the lake partition is written last, so a failed run leaves
none.

    python -m jobs.publish --ds 2026-11-21
    python -m jobs.publish --ds 2026-11-21 --set publish.gate.min_gain_over_champion=0.002
    mlflow.pyfunc.load_model("models:/rgalign-qe-rec@champion").predict(sessions_df, params={"k": 3})
"""
from __future__ import annotations

import logging
import re
import shutil
import tempfile
from pathlib import Path

from rgalign_core import stage
from rgalign_core.config import PROJECT_ROOT, fingerprint

log = logging.getLogger("rgalign.publish")
VERSION = 1
# the test-window figures publish records for each model: the registered version's tags and the stage's metrics
FIGURES = ("gauc", "session_gauc", "recall_at_3", "ndcg_at_3", "ece", "calibration_ratio")
FINGERPRINT_TAG = "rgalign.fingerprint"
# the registered model's page in the MLflow UI: what it is and how to call it
REGISTERED_MODEL_DESCRIPTION = """rgalign's proactive intent recommender: QE-Rec (a three-tower ranker that reads the
user's discrete state and a latent query the aligned reasoner writes from it), calibrated, bundled
with that reasoner and the night's KB. One version per nightly model; `publish` (the nightly DAG's
last task) registers it with the alias `challenger` and moves `champion` to it only when it passes
the gate: GAUC against the two-tower and the champion, and ECE (each version's description is its
gate table).

    model = mlflow.pyfunc.load_model("models:/{name}@champion")
    top = model.predict(sessions_df, params={{"k": {k}}})  # rows in the features.sessions schema

Returns, per session, the top k KB intents with their calibrated click probability and the latent
query. Tags per version: ds, seed, query_variant, gate, and each model's GAUC / Recall@3 / ECE."""
# what a serving host needs to load the bundle (pins from requirements.txt)
SERVING_PACKAGES = ("torch", "transformers", "tokenizers", "mlflow", "pyarrow", "pandas", "numpy", "scikit-learn")


def gate(challenger: dict, model_mean: dict, baseline_mean: dict, champion: dict | None, cfg: dict, ds: str = "",
         champion_ds: str | None = None) -> tuple[bool, list[dict]]:
    """Whether the challenger becomes champion, and each check (name, value, threshold, passed).

    ``challenger``/``champion``: the published seed and the current champion on the same sessions;
    ``model_mean``/``baseline_mean``: the challenger's model and the two-tower, mean over their seeds
    (the ablation's comparison, steadier than one seed against one seed). A rerun of an older date
    never takes the alias back from a newer night's champion."""
    checks = [{"check": "GAUC gain over the baseline (means over seeds)", "value": model_mean["gauc"] - baseline_mean["gauc"],
               "threshold": float(cfg["min_gain_over_baseline"]), "rule": ">="},
              # GAUC by user also rewards telling which sessions see a click; session GAUC is the ranking inside one
              {"check": "session GAUC gain over the baseline (means over seeds)",
               "value": model_mean["session_gauc"] - baseline_mean["session_gauc"],
               "threshold": float(cfg["min_session_gauc_gain_over_baseline"]), "rule": ">="}]
    if champion is not None:
        checks.append({"check": "GAUC gain over the champion", "value": challenger["gauc"] - champion["gauc"],
                       "threshold": float(cfg["min_gain_over_champion"]), "rule": ">="})
    checks.append({"check": "ECE", "value": challenger["ece"], "threshold": float(cfg["max_ece"]), "rule": "<="})
    if champion_ds:
        checks.append({"check": f"not older than the champion's ds ({champion_ds})", "value": float(ds >= champion_ds),
                       "threshold": 1.0, "rule": ">="})
    for c in checks:
        c["passed"] = bool(c["value"] >= c["threshold"] if c["rule"] == ">=" else c["value"] <= c["threshold"])
    return all(c["passed"] for c in checks), checks


def serving_requirements() -> list[str]:
    pins = {}
    for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==", line.strip())
        if m:
            pins[m.group(1).lower()] = line.strip()
    return [pins[p] for p in SERVING_PACKAGES if p in pins]


def latest_session_per_user(sessions):
    return sessions.sort_values(["user_id", "session_time", "session_id"]).groupby("user_id", as_index=False).tail(1)


def run(ctx: stage.Context) -> dict:
    import mlflow
    import pandas as pd
    import pyarrow as pa

    from rgalign_core import metrics, ranking_data
    from rgalign_core.reasoner import model_version
    from rgalign_core.serving import Bundle, write_bundle

    cfg, lake = ctx.cfg, ctx.lake
    pcfg = cfg["publish"]
    seed, k, name = int(pcfg["model_seed"]), int(pcfg["top_k"]), pcfg["registered_model"]
    w = ctx.windows()
    test_days = w["test"]
    if not 1 <= int(pcfg["active_days"]) <= len(test_days):
        raise stage.StageError(f"publish.active_days={pcfg['active_days']}: must be 1..{len(test_days)} (windows.test_days)")
    serve_days = test_days[-int(pcfg["active_days"]):]
    ranker_root = lake.partition("models", pcfg["model"], ctx.ds, key="ds")
    baseline_root = lake.partition("models", pcfg["baseline"], ctx.ds, key="ds")
    kb_path = lake.partition("validated", "kb_intents", ctx.ds)
    for p in (ranker_root, baseline_root, kb_path):
        lake.require(p, "publish input")
    made = lake.marker(ranker_root)
    variant, reasoner_dir = made.get("query_variant"), made.get("reasoner")
    if not variant or not reasoner_dir:
        raise stage.StageError(f"{ranker_root} does not name the reasoner and query variant it reads: publish needs a "
                               "calibrated ranker (publish.model=qe_rec_calibrated; run calibrate for this date)")
    ranker_dir = f"{ranker_root}/seed={seed}"
    if not Path(ranker_dir, "model.safetensors").exists():
        raise stage.StageError(f"{ranker_dir} is missing: publish.model_seed={seed} is not among the seeds trained for {ctx.ds}")
    inputs = [lake.partition("features", t, d) for t in ("samples", "sessions") for d in test_days]
    inputs += [lake.partition("queries", variant, d) for d in test_days]
    for p in inputs:
        lake.require(p, "publish input")
    # the registered version is the model (one per model fingerprint); the lake output also depends on the gate
    reasoner_version = model_version(reasoner_dir)
    model_fp = fingerprint({"version": VERSION, "model": pcfg["model"], "seed": seed, "ranker": lake.marker(ranker_root),
                            "kb": lake.marker(kb_path), "reasoner": reasoner_version, "reasoner_cfg": cfg["reasoner"]})
    fp = fingerprint({"model": model_fp, "publish": pcfg, "inputs": [lake.marker(p) for p in [baseline_root] + inputs]})
    out = lake.partition("serving", "topk", ctx.ds)
    client = mlflow.MlflowClient()
    mine = client.search_model_versions(f"name='{name}' and tags.`{FINGERPRINT_TAG}` = '{model_fp}'") if _registered(client, name) else []
    if mine and ctx.up_to_date([out], fp):
        marker = lake.marker(out)
        log.info("published %s version %s for %s is up to date; use --force to redo", name, mine[0].version, ctx.ds)
        return {"skipped": 1, "model_version": int(mine[0].version), "promoted": int(bool(marker.get("promoted")))}

    # ---- the challenger, the baseline and the champion on the test window's shown intents
    samples = ranking_data.read_samples(lake, test_days)
    sessions = pd.concat([lake.read_partition(lake.partition("features", "sessions", d), "features.sessions").to_pandas()
                          for d in test_days], ignore_index=True)
    lake_queries = ranking_data.read_queries(lake, variant, test_days, ("session_id", "latent_query", "embedding"))
    kb = lake.read_partition(kb_path, "validated.kb_intents")
    work = Path(tempfile.mkdtemp(prefix="rgalign-publish-"))
    try:
        bundle_dir = write_bundle(work / "bundle", ranker_dir, reasoner_dir, kb, {
            "ds": ctx.ds_str, "seed": seed, "model": pcfg["model"], "query_variant": variant,
            "reasoner_version": reasoner_version, "template": cfg["reasoner"]["template"],
            "summary_cue": cfg["reasoner"]["summary_cue"], "max_new_tokens": int(cfg["reasoner"]["max_new_tokens"]),
            "fingerprint": model_fp})
        challenger = Bundle(bundle_dir)

        def report(scored) -> dict:
            return metrics.ranking_report(scored["user_id"].to_numpy(), scored["session_id"].to_numpy(),
                                          scored["clicked"].to_numpy(), scored["score"].to_numpy(), scored["prob"].to_numpy())

        scored = challenger.score(samples, lake_queries)
        _check_reproduces(scored, ranker_root, seed)
        # the night's two models as evaluate reports them, mean over their seeds: does the query help?
        model_mean, baseline_mean = _seeds_mean(lake, ctx.ds, test_days, [ranker_root, baseline_root])
        n_seeds = len(cfg["ranker"]["seeds"])
        figures = {"challenger": report(scored), "model_mean": model_mean, "baseline_mean": baseline_mean}
        labels = {"challenger": f"challenger (seed {seed})", "model_mean": f"{pcfg['model']}, mean of {n_seeds} seeds",
                  "baseline_mean": f"{pcfg['baseline']}, mean of {n_seeds} seeds"}
        champion_version, champion_bundle = _champion(client, name)
        same_as_champion = champion_version is not None and champion_version.tags.get(FINGERPRINT_TAG) == model_fp
        champion_figures = None
        if champion_bundle is not None and not same_as_champion:
            log.info("scoring the test window with the champion, %s version %s", name, champion_version.version)
            champion_queries = champion_bundle.queries(sessions, int(pcfg["batch_size"]), progress=True)
            figures["champion"] = champion_figures = report(champion_bundle.score(samples, champion_queries))
            labels["champion"] = f"champion (version {champion_version.version})"
        champion_ds = champion_version.tags.get("ds") if champion_version is not None and not same_as_champion else None
        promote, checks = gate(figures["challenger"], model_mean, baseline_mean, champion_figures, pcfg["gate"],
                               ctx.ds_str, champion_ds)
        promote = promote or same_as_champion
        table = _gate_table(figures, labels, checks, promote, champion_version, same_as_champion)
        log.info("gate:\n%s", table)

        # ---- the registry: one version per fingerprint; aliases move only on a pass
        if mine:
            version = mine[0]
            log.info("reusing %s version %s (same fingerprint)", name, version.version)
        else:
            # input schema from the whole test window, so a feature that can be null is optional
            signature = mlflow.models.infer_signature(sessions, challenger.top_k(sessions.head(2), k, queries=lake_queries),
                                                      params={"k": k})
            info = mlflow.pyfunc.log_model(
                name="qe_rec", python_model=str(PROJECT_ROOT / "rgalign_core" / "serving_model.py"),
                artifacts={"bundle": str(bundle_dir)}, code_paths=[str(PROJECT_ROOT / "rgalign_core")],
                signature=signature, pip_requirements=serving_requirements())
            version = mlflow.register_model(info.model_uri, name, tags={FINGERPRINT_TAG: model_fp, "ds": ctx.ds_str})
            client.update_registered_model(name, description=REGISTERED_MODEL_DESCRIPTION.format(name=name, k=k))
        served_version, serving = (version.version, challenger) if promote else (
            (champion_version.version, champion_bundle) if champion_bundle is not None else (None, None))

        # ---- top-K per active user, from the serving model (before any alias moves)
        topk = None
        if serving is not None:
            active = latest_session_per_user(sessions[pd.to_datetime(sessions["session_time"]).dt.date.isin(serve_days)])
            own = serving is challenger
            topk = serving.top_k(active, k, queries=lake_queries if own else None, batch_size=int(pcfg["batch_size"]), progress=not own)
            topk["model_version"] = int(served_version)
            topk["ds"] = ctx.ds

        # ---- the version's record and the aliases; a rerun of a date older than the champion's
        # leaves an existing version's record and both aliases as they are
        older = bool(champion_ds) and ctx.ds_str < champion_ds
        if not (older and mine):
            tags = {"ds": ctx.ds_str, "seed": str(seed), "query_variant": variant, "gate": "passed" if promote else "rejected",
                    **{f"{who}.{m}": f"{figures[who][m]:.4f}" for who in figures for m in FIGURES}}
            for key, value in tags.items():
                client.set_model_version_tag(name, version.version, key, value)
            client.update_model_version(name, version.version, description=table)
        if not older:
            client.set_registered_model_alias(name, "challenger", version.version)
        if promote and not same_as_champion:
            if champion_version is not None:
                client.set_model_version_tag(name, version.version, "replaced_version", str(champion_version.version))
            client.set_registered_model_alias(name, "champion", version.version)
            log.info("%s version %s is the champion", name, version.version)
        if serving is None:
            raise stage.StageError(f"the challenger ({name} version {version.version}) failed the gate and there is no "
                                   f"champion to serve: nothing published for {ctx.ds}.\n{table}")
        lake.write_table(out, pa.Table.from_pandas(topk, preserve_index=False),
                         {"fingerprint": fp, "model_version": int(served_version), "promoted": bool(promote),
                          "registered_version": int(version.version), "users": int(active["user_id"].nunique())})
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ctx.tracker.text(table, "gate.md")
    ctx.tracker.text(topk.head(60).to_markdown(index=False, floatfmt=".3f"), "topk_sample.md")
    _plot_gate(ctx, figures, labels)
    result = {"promoted": int(promote), "model_version": int(version.version), "served_version": int(served_version),
              "users": int(active["user_id"].nunique()), "topk_rows": len(topk),
              "topk_distinct_intents": int(topk["intent_id"].nunique())}
    for who, fig in figures.items():
        result.update({f"{who}/{m}": fig[m] for m in FIGURES})
    return result


def _seeds_mean(lake, ds, test_days, model_roots: list[str]) -> list[dict]:
    """Test-window metrics of each trained model's saved predictions, mean over its seeds (evaluate's way)."""
    import numpy as np
    import pandas as pd

    from jobs.evaluate import score_metrics, seed_predictions, test_impressions

    _, f = test_impressions(lake, ds, test_days)
    key = pd.MultiIndex.from_arrays([f["session_id"], f["intent_id"]])
    everyone = np.ones(len(f["clicked"]), bool)
    out = []
    for root in model_roots:
        rows = [score_metrics(f, p["score"], everyone, 3, p["prob"]) for p in seed_predictions(root, key, root).values()]
        out.append({m: float(np.mean([r[m] for r in rows])) for m in FIGURES})
    return out


def _check_reproduces(scored, ranker_root: str, seed: int) -> None:
    """The bundle must score the test window as the saved ranker did: what is registered is what was evaluated."""
    import numpy as np
    import pandas as pd

    saved = pd.read_parquet(f"{ranker_root}/test_predictions.parquet")
    saved = saved[saved["seed"] == seed].set_index(["session_id", "intent_id"])
    col = "prob" if "prob" in saved.columns else "score"
    mine = scored.set_index(["session_id", "intent_id"])[col].reindex(saved.index).to_numpy(np.float64)
    if not len(saved) or np.isnan(mine).any():
        raise stage.StageError(f"the bundle scored {int((~np.isnan(mine)).sum())} of the {len(saved)} test impressions in "
                               f"{ranker_root}/test_predictions.parquet (seed {seed})")
    gap = float(np.max(np.abs(mine - saved[col].to_numpy(np.float64))))
    if not np.isfinite(gap) or gap > 1e-4:
        raise stage.StageError(f"the bundle's {col} on the test window differs from {ranker_root}/test_predictions.parquet "
                               f"(seed {seed}) by up to {gap:.2g}: the bundle does not reproduce the ranker it packs")
    log.info("the bundle reproduces the saved test predictions (max |Δ%s| %.1e)", col, gap)


def _registered(client, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return True
    except MlflowException:
        return False


def _champion(client, name: str):
    """The version holding the ``champion`` alias and its bundle, or (None, None)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None, None
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    return version, model.unwrap_python_model().bundle


def _gate_table(figures: dict, labels: dict, checks: list[dict], promote: bool, champion_version, same_as_champion: bool) -> str:
    rows = ["| model | GAUC | session GAUC | Recall@3 | NDCG@3 | ECE | Σp/Σy |", "|---|---|---|---|---|---|---|"]
    for who, f in figures.items():
        rows.append(f"| {labels[who]} | {f['gauc']:.4f} | {f['session_gauc']:.4f} | {f['recall_at_3']:.4f} | {f['ndcg_at_3']:.4f} | {f['ece']:.4f} | {f['calibration_ratio']:.3f} |")
    rows += ["", "| check | value | rule | passed |", "|---|---|---|---|"]
    rows += [f"| {c['check']} | {c['value']:+.4f} | {c['rule']} {c['threshold']:g} | {'yes' if c['passed'] else 'no'} |" for c in checks]
    verdict = "already the champion (the same fingerprint)" if same_as_champion else (
        "promoted to champion" if promote else
        "rejected: the champion keeps serving" if champion_version is not None else "rejected, and there is no champion")
    rows += ["", "The two-tower's ECE is of σ(score), uncalibrated.", "", f"**{verdict}**"]
    return "\n".join(rows)


def _plot_gate(ctx, figures: dict, labels: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(figures)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, (m, label) in zip(axes, (("gauc", "GAUC"), ("recall_at_3", "Recall@3"))):
        values = [figures[n][m] for n in names]
        ax.bar([labels[n].replace(", ", "\n") for n in names], values,
               color=["tab:blue" if n == "challenger" else "tab:gray" for n in names])
        ax.tick_params(axis="x", labelsize=7)
        lo = min(values)
        ax.set_ylim(max(0.0, lo - 0.05), min(1.0, max(values) + 0.02))
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.4f}", ha="center", va="bottom", fontsize=8)
        ax.set(title=f"{label}, test window")  # each bar's label says its seed or its mean over seeds
    fig.tight_layout()
    ctx.tracker.figure(fig, "gate.png")
    plt.close(fig)


def main(argv=None):
    return stage.main("publish", run, __doc__, argv)


if __name__ == "__main__":
    main()
