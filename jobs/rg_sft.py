"""RG-SFT: fine-tune the reasoner on the reward model's best-of-N latent queries.

Reads ``rewards/best/dt=`` of the training window (reward_select: for each clicked session, the
teacher candidate that made the frozen QE-Rec rank the clicked intent highest), and trains the base
reasoner (``models/reasoner/ds=``, or ``reasoner.base_model``) on prompt -> best query with the
next-token loss on the query tokens. With ``rg_sft.train_summary`` (default) the target goes on
with the summary the base reasoner was bootstrapped to write after the query (the summary cue, the
session's pending states and text topics, as in bootstrap_reasoner's corpus): the query embedding
pools the cue's token, and fine-tuning on queries alone let what it encodes drift (0.806 -> 0.786
test GAUC in the ablation). Through the shared DeepSpeed loop
(rgalign_core/ds_trainer.py) with length-bucketed batches cut to their longest row. Writes
``models/reasoner_sft/ds=<ds>/``, then measures it for the ablation: re-encodes every sample-window
session (``queries/sft/dt=``) and trains QE-Rec on those queries (``models/qe_rec_sft/ds=``).

    python -m jobs.rg_sft --ds 2026-11-21
    python -m jobs.rg_sft --ds 2026-11-21 --set rg_sft.train.steps=50 --set rg_sft.train.nproc=2
    python -m jobs.rg_sft --ds 2026-11-21 --set rg_sft.train.bucket=false   # random batches
"""
from __future__ import annotations

import logging

from rgalign_core import stage
from rgalign_core.config import fingerprint

log = logging.getLogger("rgalign.rg_sft")
VERSION = 1


def run(ctx: stage.Context) -> dict:
    import numpy as np

    from rgalign_core import align_stage, alignment
    from rgalign_core.reasoner import model_version, reasoner_dir

    cfg, lake = ctx.cfg, ctx.lake
    scfg = cfg["rg_sft"]
    base = align_stage.reasoner_path(ctx, "base")
    best, in_fps, paths = align_stage.read_rewards(ctx, "best", ["session_id", "prompt", "best_query"])
    best = best[best.best_query.str.len() > 0]
    if best.empty:
        raise stage.StageError("rewards/best has no non-empty best query in the training window: nothing to fine-tune on")
    out = reasoner_dir(lake, ctx.ds, "sft")
    summary = align_stage.summary_config(cfg) if scfg["train_summary"] else None
    fp = fingerprint({"version": VERSION, "parent": model_version(base), "rg_sft": scfg, "template": cfg["reasoner"]["template"],
                      "summary": summary, "inputs": in_fps})
    ctx.tracker.params({"parent_reasoner": base, "examples": len(best)})
    ctx.tracker.dataset(lake, paths, "rewards.best", context="training")
    result = {"examples": len(best)}
    if ctx.up_to_date([out], fp):
        log.info("the sft reasoner for %s is up to date; use --force to retrain", ctx.ds)
    else:
        tok = align_stage.tokenizer(base)
        targets = best.best_query.tolist()
        if summary:
            summaries = align_stage.session_summaries(ctx, best.session_id.tolist(), ctx.windows()["train"])
            targets = [q + s for q, s in zip(targets, summaries)]
        arrays = alignment.sft_arrays(tok, cfg["reasoner"]["template"], best.prompt.tolist(), targets, int(scfg["max_len"]))
        n_target = int((arrays["labels"] != alignment.IGNORE).sum())
        log.info("RG-SFT: %d examples, %d target tokens of %d", len(best), n_target, int(arrays["length"].sum()))
        history = align_stage.train_reasoner(ctx, "rg_sft", "sft", arrays, base, out, fp, scfg["train"])
        align_stage.plot_history(ctx, history, ["loss", "tokens_per_s"], "rg_sft")
        align_stage.compare_generations(ctx, base, out)
        result.update({"first_loss": history[0]["loss"], "final_loss": history[-1]["loss"], "target_tokens": n_target,  # query + summary
                       "tokens_per_s": float(np.mean([h["tokens_per_s"] for h in history[1:]] or [history[-1]["tokens_per_s"]]))})
    result["reasoner_version"] = model_version(out)
    return {**result, **align_stage.measure(ctx, "sft", out)}


def main(argv=None):
    return stage.main("rg_sft", run, __doc__, argv)


if __name__ == "__main__":
    main()
