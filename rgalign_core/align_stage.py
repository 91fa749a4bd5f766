"""What the alignment stages (rg_sft, rg_dpo, rg_cl, calibrate) share: finding the reasoner version
they start from, running the one DeepSpeed loop on their arrays into a new reasoner version in the
lake, and measuring that version the way the ablation needs it: its queries re-encoded for every
sample-window session (``queries/<variant>``) and a QE-Rec trained on them
(``models/qe_rec_<variant>``), so ``evaluate`` can put it in the table.

Reasoner versions: ``base`` (bootstrap_reasoner or a checkpoint) -> ``sft`` -> ``dpo`` -> ``cl``
-> ``calibrated``; each under ``models/reasoner_<variant>/ds=<ds>/``.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from rgalign_core import stage
from rgalign_core.config import PROJECT_ROOT

log = logging.getLogger("rgalign.align")
PREVIOUS = {"sft": "base", "dpo": "sft", "cl": "dpo", "calibrated": "cl"}


def reasoner_path(ctx: stage.Context, variant: str) -> str:
    """The reasoner version ``variant`` for this date, or a StageError naming the stage to run."""
    from rgalign_core.reasoner import reasoner_dir

    if variant == "base":
        from jobs.bootstrap_reasoner import require_reasoner

        return require_reasoner(ctx)
    path = reasoner_dir(ctx.lake, ctx.ds, variant)
    if not ctx.lake.is_complete(path):
        raise stage.StageError(f"no {variant} reasoner at {path}: run {ctx.lake.producer(path)} for {ctx.ds} first")
    return path


def qe_rec_name(variant: str) -> str:
    return "qe_rec" if variant == "base" else f"qe_rec_{variant}"


def qe_rec_path(ctx: stage.Context, variant: str, seed: int) -> str:
    """``models/qe_rec[_<variant>]/ds=<ds>/seed=<seed>``, or a StageError naming the stage to run."""
    root = ctx.lake.partition("models", qe_rec_name(variant), ctx.ds, key="ds")
    if not ctx.lake.is_complete(root):
        raise stage.StageError(f"no QE-Rec for the {variant} queries at {root}: run {ctx.lake.producer(root)} for {ctx.ds} first")
    path = f"{root}/seed={seed}"
    if not Path(path, "model.safetensors").exists():
        raise stage.StageError(f"{path}/model.safetensors is missing: seed {seed} is not in that run's ranker.seeds")
    return path


def tokenizer(path: str):
    """The reasoner's tokenizer, with a pad token (many checkpoints ship without one)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# where each objective's `train:` block lives (calibrate's rounds run RG-CL with rg_cl.train)
TRAIN_SECTION = {"sft": "rg_sft", "dpo": "rg_dpo", "rg_cl": "rg_cl"}


def train_reasoner(ctx: stage.Context, name: str, objective: str, arrays: dict, init_dir: str, out: str, fp: str,
                   tcfg: dict, extra: dict | None = None) -> list[dict]:
    """Train ``init_dir`` with ``objective`` on ``arrays`` under the deepspeed launcher and write the
    result (weights, tokenizer, rgalign.json) atomically to ``out``. Checkpoints under
    ``<lake>/checkpoints/<stage>/ds=<ds>/<fp>`` let an Airflow retry resume. Returns the history."""
    from rgalign_core import ds_trainer
    from rgalign_core.reasoner import model_version

    lake = ctx.lake
    ckpt = Path(lake.root) / "checkpoints" / ctx.stage / f"ds={ctx.ds_str}" / name / fp
    resume = (ckpt / "latest").exists()
    if resume:
        log.info("resuming from the checkpoint in %s", ckpt)
    work = Path(tempfile.mkdtemp(prefix=f"rgalign-{name}-"))
    try:
        np.savez(work / "data.npz", **arrays)
        with lake.write_partition(out, {"fingerprint": fp, "parent_version": model_version(init_dir)}) as tmp:
            spec = {
                "name": name, "objective": objective, "model_dir": init_dir, "data": str(work / "data.npz"),
                "config_section": f"{TRAIN_SECTION.get(objective, ctx.stage)}.train",  # named in batch-size errors
                "ds_config": str(PROJECT_ROOT / tcfg["ds_config"]), "global_batch": int(tcfg["global_batch"]),
                "train_steps": int(tcfg["steps"]), "lr": float(tcfg["lr"]), "warmup_steps": int(tcfg.get("warmup_steps", 0)),
                "weight_decay": float(tcfg.get("weight_decay", 0.0)), "seed": int(tcfg.get("seed", 0)),
                "log_every": int(tcfg.get("log_every", 10)), "save_every": int(tcfg.get("save_every", 0)),
                "bucket_by": "length" if tcfg.get("bucket", True) else None,
                "checkpoint_dir": str(ckpt), "resume": resume, "out_dir": tmp,
                "peak_tflops_per_device": tcfg.get("peak_tflops_per_device"),
                "mlflow_tracking_uri": ctx.cfg["mlflow"]["tracking_uri"], "mlflow_run_id": ctx.tracker.run_id, **(extra or {}),
            }
            history = ds_trainer.launch(spec, int(tcfg.get("nproc", 1)), work / "run")
            tokenizer(init_dir).save_pretrained(tmp)
            meta = {}
            if Path(init_dir, "rgalign.json").exists():
                meta = json.loads(Path(init_dir, "rgalign.json").read_text())
            meta.update({"template": ctx.cfg["reasoner"]["template"], "summary_cue": ctx.cfg["reasoner"]["summary_cue"], "ds": ctx.ds_str, "stage": ctx.stage,
                         "parent": init_dir, "parent_version": model_version(init_dir)})
            Path(tmp, "rgalign.json").write_text(json.dumps(meta, indent=2))
        shutil.rmtree(ckpt.parent, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ctx.tracker.text("\n".join(json.dumps(h) for h in history), f"{name}_history.jsonl")
    return history


def plot_history(ctx: stage.Context, history: list[dict], keys: list[str], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(k in h for h in history)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, k in zip(axes[0], keys):
        ax.plot([h["step"] for h in history if k in h], [h[k] for h in history if k in h], marker=".")
        ax.set(title=k, xlabel="step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{ctx.stage}: {name}")
    fig.tight_layout()
    ctx.tracker.figure(fig, f"{name}_curves.png")
    plt.close(fig)


def compare_generations(ctx: stage.Context, before: str, after: str, n: int = 12) -> None:
    """The same held-out prompts (first validation day), answered by the old and the new reasoner."""
    from rgalign_core.reasoner import Reasoner

    day = ctx.windows()["valid"][0]
    rows = ctx.lake.read_partition(ctx.lake.partition("features", "sessions", day), "features.sessions",
                                   columns=["prompt"]).slice(0, n).to_pylist()
    prompts = [r["prompt"] for r in rows]
    tmpl, m = ctx.cfg["reasoner"]["template"], int(ctx.cfg["reasoner"]["max_new_tokens"])
    old = Reasoner.load(before, template=tmpl).generate(prompts, max_new_tokens=m)
    new = Reasoner.load(after, template=tmpl).generate(prompts, max_new_tokens=m)
    ctx.tracker.text("\n\n".join(f"PROMPT: {p}\nBEFORE: {a}\nAFTER:  {b}" for p, a, b in zip(prompts, old, new)),
                     "generations_before_after.txt")


def measure(ctx: stage.Context, variant: str, reasoner: str) -> dict:
    """Re-encode every sample-window session with ``reasoner`` into ``queries/<variant>`` and train
    QE-Rec on them (``models/qe_rec_<variant>``, every seed of ranker.seeds): the ablation's row."""
    from jobs.encode_queries import encode
    from rgalign_core.train_ranker import run_job

    enc = encode(ctx, reasoner, variant, metric_prefix="encode/")
    ranker = run_job(ctx, "qe_rec", variant, out_name=qe_rec_name(variant))
    # the ranker's figures under train_qe_rec's names (test_gauc_mean, seed0/valid_gauc...), so the
    # MLflow UI's run comparison lines this stage's QE-Rec up with train_qe_rec's in one column
    return {**enc, **{("qe_rec/skipped" if k == "skipped" else k): v for k, v in ranker.items()}}


def summary_config(cfg: dict) -> dict | None:
    """What the summary written after a latent query depends on (for fingerprints); None without
    ``reasoner.summary_cue``."""
    if not cfg["reasoner"]["summary_cue"]:
        return None
    return {"cue": cfg["reasoner"]["summary_cue"], "states": cfg["bootstrap"]["summary_states"],
            "topics": cfg["bootstrap"]["summary_topics"], "retrieval": cfg["teachers"]["retrieval"]}


def session_summaries(ctx: stage.Context, session_ids: list[int], days) -> list[str]:
    """The summary bootstrap_reasoner's corpus writes after a query (the cue, the session's pending
    states and text topics, the topics first in every other one) for each of ``session_ids`` in
    ``features/sessions`` of ``days``. Training on it keeps what the pooled cue token encodes: a
    reasoner tuned on queries alone let it drift (RG-SFT: 0.806 -> 0.786 test GAUC)."""
    from jobs.bootstrap_reasoner import summary_text, summary_topics
    from jobs.teachers_generate import kb_reader, read_sessions

    by_id = {r["session_id"]: r for rows in read_sessions(ctx.lake, days).values() for r in rows}
    missing = [s for s in session_ids if s not in by_id]
    if missing:
        raise stage.StageError(f"{len(missing)} sessions are not in features/sessions of {days[0]}..{days[-1]} "
                               f"(e.g. {missing[0]}): their rows come from another extract_features run; "
                               f"rerun the stages after it for this date")
    rows = [by_id[s] for s in session_ids]
    topics = summary_topics(ctx.cfg, rows, kb_reader(ctx.lake))
    return [summary_text(ctx.cfg, r, t, topics_first=i % 2 == 1) for i, (r, t) in enumerate(zip(rows, topics))]


def read_rewards(ctx: stage.Context, table: str, columns: list[str] | None = None):
    """``rewards/<table>`` over the training window (all days must exist), as one pandas frame."""
    import pandas as pd

    lake = ctx.lake
    paths = [lake.partition("rewards", table, d) for d in ctx.windows()["train"]]
    for p in paths:
        lake.require(p, f"{ctx.stage} input rewards.{table} (run reward_select)")
    frame = pd.concat([lake.read_partition(p, f"rewards.{table}", columns).to_pandas() for p in paths], ignore_index=True)
    return frame, [lake.marker(p).get("fingerprint") for p in paths], paths
