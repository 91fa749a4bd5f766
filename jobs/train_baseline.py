"""Train the production baseline: a two-tower ranker (AutoInt + MoE user tower, intent tower).

No query: only the discrete user/context features and the intents. Trains ``ranker.seeds``
seeds on the train window with early stopping on validation GAUC, and writes each seed's model
(safetensors + config) and its test-window predictions to ``models/two_tower/ds=<ds>/``.

    python -m jobs.train_baseline --ds 2026-11-21
    python -m jobs.train_baseline --ds 2026-11-21 --set ranker.epochs=3 --set 'ranker.seeds=[0]'
"""
from __future__ import annotations

from rgalign_core import stage


def run(ctx: stage.Context) -> dict:
    from rgalign_core.train_ranker import run_job

    return run_job(ctx, "two_tower", query_variant=None)


def main(argv=None):
    return stage.main("train_baseline", run, __doc__, argv)


if __name__ == "__main__":
    main()
