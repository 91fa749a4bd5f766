"""DPO: preference-optimise the RG-SFT reasoner on the reward model's (best, worst) query pairs.

Reads ``rewards/pairs/dt=`` of the training window (reward_select: per clicked session, the
candidate the frozen QE-Rec liked most as ``chosen`` and least as ``rejected``, with their reward
margin), keeps pairs whose margin exceeds ``rg_dpo.min_margin``, and trains the sft reasoner
(``models/reasoner_sft/ds=``) with the DPO loss against a frozen copy of itself as reference
(β = ``rg_dpo.beta``), through the shared DeepSpeed loop. With ``rg_dpo.anchor_weight`` > 0 the loss
adds that x the next-token loss on the chosen query followed by its session's summary (the cue,
pending states and text topics, as RG-SFT trains on): DPO alone moves only the query tokens' logits,
and the pooled cue token the query embedding is read from drifts with them. Logs the loss and, as TRL does,
``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies`` and ``rewards/margins``. Writes
``models/reasoner_dpo/ds=<ds>/``, then re-encodes the queries (``queries/dpo``) and trains QE-Rec
on them (``models/qe_rec_dpo``) for the ablation.

    python -m jobs.rg_dpo --ds 2026-11-21
    python -m jobs.rg_dpo --ds 2026-11-21 --set rg_dpo.beta=0.5 --set rg_dpo.min_margin=0.05
"""
from __future__ import annotations

import logging

from rgalign_core import stage
from rgalign_core.config import fingerprint

log = logging.getLogger("rgalign.rg_dpo")
VERSION = 1


def run(ctx: stage.Context) -> dict:
    import numpy as np

    from rgalign_core import align_stage, alignment
    from rgalign_core.reasoner import model_version, reasoner_dir

    cfg, lake = ctx.cfg, ctx.lake
    dcfg = cfg["rg_dpo"]
    parent = align_stage.reasoner_path(ctx, "sft")
    pairs, in_fps, paths = align_stage.read_rewards(ctx, "pairs", ["session_id", "prompt", "chosen", "rejected", "margin"])
    n_all = len(pairs)
    pairs = pairs[(pairs.margin > float(dcfg["min_margin"])) & (pairs.chosen != pairs.rejected)]
    ctx.tracker.params({"parent_reasoner": parent, "pairs_total": n_all, "pairs_kept": len(pairs)})
    ctx.tracker.dataset(lake, paths, "rewards.pairs", context="training")
    if len(pairs) < int(dcfg["train"]["global_batch"]):
        raise stage.StageError(f"{len(pairs)} DPO pairs have a margin > rg_dpo.min_margin={dcfg['min_margin']} (of {n_all}): "
                               f"fewer than one batch ({dcfg['train']['global_batch']}); lower the margin or the batch")
    out = reasoner_dir(lake, ctx.ds, "dpo")
    anchor_weight = float(dcfg["anchor_weight"])
    summary = align_stage.summary_config(cfg) if anchor_weight else None
    fp = fingerprint({"version": VERSION, "parent": model_version(parent), "rg_dpo": dcfg, "template": cfg["reasoner"]["template"],
                      "summary": summary, "inputs": in_fps})
    result = {"pairs_total": n_all, "pairs_kept": len(pairs), "margin_median": float(np.median(pairs.margin))}
    if ctx.up_to_date([out], fp):
        log.info("the dpo reasoner for %s is up to date; use --force to retrain", ctx.ds)
    else:
        tok = align_stage.tokenizer(parent)
        anchor = None
        if anchor_weight:
            summaries = align_stage.session_summaries(ctx, pairs.session_id.tolist(), ctx.windows()["train"])
            anchor = [q + s for q, s in zip(pairs.chosen, summaries)]
        arrays = alignment.dpo_arrays(tok, cfg["reasoner"]["template"], pairs.prompt.tolist(), pairs.chosen.tolist(),
                                      pairs.rejected.tolist(), int(dcfg["max_len"]), anchor=anchor)
        history = align_stage.train_reasoner(ctx, "rg_dpo", "dpo", arrays, parent, out, fp, dcfg["train"],
                                             extra={"ref_model_dir": parent, "beta": float(dcfg["beta"]),
                                                    "anchor_weight": anchor_weight})
        align_stage.plot_history(ctx, history, ["loss", "dpo_loss", "anchor_nll", "rewards/accuracies", "rewards/margins"],
                                 "rg_dpo")
        align_stage.compare_generations(ctx, parent, out)
        last = history[-1]
        # "loss" is DPO + the anchor; "dpo_loss" alone starts at log 2 (the policy is its reference)
        result.update({"first_loss": history[0]["loss"], "final_loss": last["loss"],
                       "first_dpo_loss": history[0]["dpo_loss"], "final_dpo_loss": last["dpo_loss"],
                       "final_reward_accuracy": last.get("rewards/accuracies"), "final_reward_margin": last.get("rewards/margins")})
    result["reasoner_version"] = model_version(out)
    return {**result, **align_stage.measure(ctx, "dpo", out)}


def main(argv=None):
    return stage.main("rg_dpo", run, __doc__, argv)


if __name__ == "__main__":
    main()
