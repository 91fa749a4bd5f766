"""Train QE-Rec: the baseline's towers plus a query tower over the latent-query embeddings.

Reads ``queries/<ranker.query_variant>/dt=…`` (encode_queries' output) next to the samples.
Trains ``ranker.seeds`` seeds with early stopping on validation GAUC, and writes each seed's
model (safetensors + config) and its test-window predictions to ``models/qe_rec/ds=<ds>/``.

    python -m jobs.train_qe_rec --ds 2026-11-21
    python -m jobs.train_qe_rec --ds 2026-11-21 --set ranker.query_variant=rg_sft
"""
from __future__ import annotations

from rgalign_core import stage


def run(ctx: stage.Context) -> dict:
    from rgalign_core.train_ranker import run_job

    return run_job(ctx, "qe_rec", query_variant=ctx.cfg["ranker"]["query_variant"])


def main(argv=None):
    return stage.main("train_qe_rec", run, __doc__, argv)


if __name__ == "__main__":
    main()
