"""RG-CL: contrastive alignment of the reasoner's embedding with QE-Rec's ranking space.

The reasoner (``models/reasoner_dpo/ds=``) embeds each training session's prompt + latent query
(``queries/dpo``) + the summary cue, pooled at the cue's token; QE-Rec's query projection (from
``models/qe_rec_dpo/ds=/seed=<rg_cl.model_seed>``, trained on those embeddings; its first pass
``held_out/`` when ``ranker.refit`` retrained it on the validation days) maps it to the
ranking space, where an InfoNCE loss pulls it towards the frozen QE-Rec intent-tower vector of the
clicked intent and away from the session's other shown intents and the other sessions' clicked
intents in the batch (temperature ``rg_cl.tau``), plus ``rg_cl.lm_weight`` x the next-token loss on
the query tokens so the reasoner still writes queries; with ``rg_cl.train_summary`` (default) the rows
go on after the cue with the session's summary (pending states, text topics, as RG-SFT trains on), the
loss covers it too and the embedding is pooled at the cue (a causal LM's cue state does not see what
follows), so the cue token keeps encoding the summary while InfoNCE moves it. Only the reasoner and the projection train (the
intent vectors are computed once, under no_grad, from the frozen QE-Rec). Sessions without a click
are skipped. Logs the loss, pair accuracy and alignment gap during training, and on the held-out
validation window before and after. Writes ``models/reasoner_cl/ds=<ds>/`` (the reasoner and
``query_projection.safetensors``), then re-encodes the queries (``queries/cl``) and trains QE-Rec
on them (``models/qe_rec_cl``) for the ablation.

    python -m jobs.rg_cl --ds 2026-11-21
    python -m jobs.rg_cl --ds 2026-11-21 --set rg_cl.tau=0.05 --set rg_cl.train.steps=100
"""
from __future__ import annotations

import logging

import numpy as np

from rgalign_core import stage
from rgalign_core.config import fingerprint

log = logging.getLogger("rgalign.rg_cl")
VERSION = 1


def contrastive_arrays(ctx: stage.Context, reasoner: str, qe_path: str, query_variant: str, days) -> dict:
    """RG-CL rows for the clicked sessions of ``days``: token ids of prompt + latent query + cue (and
    the summary after it with ``rg_cl.train_summary``) and the frozen QE-Rec intent vectors
    (positive, session negatives)."""
    import pandas as pd

    from rgalign_core import align_stage, alignment, ranking_data
    from rgalign_core.train_ranker import load_model

    lake, cfg = ctx.lake, ctx.cfg
    model, vocab, _ = load_model(qe_path)
    data = ranking_data.load(lake, days, [], vocab=vocab)
    t = alignment.intent_targets(model, data, np.arange(data.n))
    sids = data.session_id[t.pop("rows")]
    frames = []
    for d in days:
        s = lake.read_partition(lake.partition("features", "sessions", d), "features.sessions", ["session_id", "prompt"]).to_pandas()
        q = lake.read_partition(lake.partition("queries", query_variant, d), f"queries.{query_variant}",
                                ["session_id", "latent_query"]).to_pandas()
        frames.append(s.merge(q, on="session_id", how="left"))
    text = pd.concat(frames).set_index("session_id").reindex(sids)
    if text.latent_query.isna().any():
        raise stage.StageError(f"{int(text.latent_query.isna().sum())} clicked sessions have no query in queries/{query_variant}: "
                               f"rerun the stage that encodes it")
    tok = align_stage.tokenizer(reasoner)
    cue = cfg["reasoner"]["summary_cue"]
    tails = None
    if summary_spec(cfg):  # the rows carry a summary exactly when the fingerprint says so
        tails = [s[len(cue):] for s in align_stage.session_summaries(ctx, sids.tolist(), days)]  # the cue is in the pooled part
    arrays = alignment.sft_arrays(tok, cfg["reasoner"]["template"], text.prompt.tolist(), text.latent_query.tolist(),
                                  int(cfg["rg_cl"]["max_len"]), eos=False, summary_cue=cue, tails=tails)
    return {**arrays, **t}


def summary_spec(cfg: dict) -> dict | None:
    """What RG-CL's summaries depend on, for its fingerprint and calibrate's."""
    from rgalign_core import align_stage

    return align_stage.summary_config(cfg) if cfg["rg_cl"]["train_summary"] else None


def _plot_before_after(ctx: stage.Context, before: dict, after: dict, name: str) -> None:
    """The validation window's InfoNCE, pair accuracy and alignment gap before and after training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(before), figsize=(3.2 * len(before), 3.0))
    for ax, key in zip(axes, before):
        bars = ax.bar(["before", "after"], [before[key], after[key]], color=["#999999", "#1f77b4"])
        ax.bar_label(bars, fmt="%.3f")
        ax.set(title={"loss": "InfoNCE loss"}.get(key, key.replace("_", " ")))
        ax.margins(y=0.2)
    fig.suptitle(f"{name}: the validation window, before and after training")
    fig.tight_layout()
    ctx.tracker.figure(fig, f"{name}_validation_before_after.png")
    plt.close(fig)


def align(ctx: stage.Context, name: str, parent: str, qe_path: str, query_variant: str, out: str, fp: str, train_cfg: dict) -> dict:
    """Train reasoner ``parent`` + the projection of ``qe_path`` with InfoNCE into ``out``; returns
    the training history's summary and the validation report before and after."""
    from rgalign_core import align_stage, alignment

    ccfg = ctx.cfg["rg_cl"]
    w = ctx.windows()
    train = contrastive_arrays(ctx, parent, qe_path, query_variant, w["train"])
    valid = contrastive_arrays(ctx, parent, qe_path, query_variant, w["valid"])
    tau = float(ccfg["tau"])
    before = alignment.alignment_report(alignment.load_query_aligner(parent, qe_path), valid, tau)
    log.info("%s: %d training sessions with a click; validation before: %s", name, len(train["length"]), before)
    history = align_stage.train_reasoner(ctx, name, "rg_cl", train, parent, out, fp, train_cfg,
                                         extra={"projection_dir": qe_path, "tau": tau, "lm_weight": float(ccfg["lm_weight"]),
                                                "trainable_layers": ccfg["trainable_layers"]})
    after = alignment.alignment_report(alignment.load_query_aligner(out, out), valid, tau)
    log.info("%s: validation after: %s", name, after)
    align_stage.plot_history(ctx, history, ["info_nce", "lm_loss", "pair_accuracy", "alignment_gap"], name)
    _plot_before_after(ctx, before, after, name)
    summary_tokens = int(((train["labels"] != alignment.IGNORE)
                          & (np.arange(train["labels"].shape[1]) > train["pool_index"][:, None])).sum()) if "pool_index" in train else 0
    return {"train_sessions": len(train["length"]), "summary_tokens": summary_tokens,
            "first_loss": history[0]["loss"], "final_loss": history[-1]["loss"],
            **{f"valid_before/{k}": v for k, v in before.items()}, **{f"valid_after/{k}": v for k, v in after.items()}}


def run(ctx: stage.Context) -> dict:
    from rgalign_core import align_stage
    from rgalign_core.reasoner import model_version, reasoner_dir

    cfg, lake = ctx.cfg, ctx.lake
    ccfg = cfg["rg_cl"]
    parent = align_stage.reasoner_path(ctx, "dpo")
    qe_path = align_stage.qe_rec_path(ctx, "dpo", int(ccfg["model_seed"]))
    days = ctx.windows()["train"] + ctx.windows()["valid"]
    inputs = [lake.partition(a, t, d) for d in days for a, t in (("features", "samples"), ("features", "sessions"), ("queries", "dpo"))]
    for p in inputs:
        lake.require(p, "rg_cl input")
    out = reasoner_dir(lake, ctx.ds, "cl")
    fp = fingerprint({"version": VERSION, "parent": model_version(parent), "qe_rec": lake.marker(qe_path.rsplit("/", 1)[0]).get("fingerprint"),
                      "rg_cl": ccfg, "template": cfg["reasoner"]["template"],
                      "summary_cue": cfg["reasoner"]["summary_cue"], "summary": summary_spec(cfg),
                      "inputs": [lake.marker(p).get("fingerprint") for p in inputs]})
    from rgalign_core.train_ranker import held_out_path

    judge = held_out_path(qe_path)  # with ranker.refit, the first pass: the validation report stays out of sample
    ctx.tracker.params({"parent_reasoner": parent, "projection_from": judge})
    result = {}
    if ctx.up_to_date([out], fp):
        log.info("the cl reasoner for %s is up to date; use --force to retrain", ctx.ds)
    else:
        result = align(ctx, "rg_cl", parent, judge, "dpo", out, fp, ccfg["train"])
        align_stage.compare_generations(ctx, parent, out)
    result["reasoner_version"] = model_version(out)
    return {**result, **align_stage.measure(ctx, "cl", out)}


def main(argv=None):
    return stage.main("rg_cl", run, __doc__, argv)


if __name__ == "__main__":
    main()
