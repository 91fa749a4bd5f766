"""Train QE-Rec: the baseline's towers plus a query tower over the latent-query embeddings.

Reads ``queries/<ranker.query_variant>/dt=…`` (encode_queries' output for ``base``) next to the
samples. Trains ``ranker.seeds`` seeds with early stopping on validation GAUC, and writes each
seed's model (safetensors + config) and its test-window predictions to ``models/qe_rec/ds=<ds>/``
(another variant's to ``models/qe_rec_<variant>/``, where its alignment stage writes the QE-Rec it
trains, so the reward model stays the base one).

    python -m jobs.train_qe_rec --ds 2026-11-21
    python -m jobs.train_qe_rec --ds 2026-11-21 --set ranker.query_variant=sft   # the queries rg_sft wrote
"""
from __future__ import annotations

from rgalign_core import stage


def run(ctx: stage.Context) -> dict:
    from rgalign_core.align_stage import qe_rec_name
    from rgalign_core.train_ranker import run_job

    variant = ctx.cfg["ranker"]["query_variant"]
    return run_job(ctx, "qe_rec", query_variant=variant, out_name=qe_rec_name(variant))


def main(argv=None):
    return stage.main("train_qe_rec", run, __doc__, argv)


if __name__ == "__main__":
    main()
