"""rgalign_nightly: the nightly training pipeline for zero-query intent recommendation.

This file only wires stages. Each task runs one job, ``python -m jobs.<stage> --ds {{ ds }}``,
in its own process; the work lives in ``jobs/`` and ``rgalign_core/``. Nothing heavy (torch,
pyspark, deepspeed, mlflow...) is imported here: Airflow parses this file often.
"""
from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import CronDataIntervalTimetable, Param, TriggerRule, dag, task

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PYTHON = os.environ.get("RGALIGN_PYTHON", sys.executable)
# Heavy tasks (Spark, training) share this pool so a small box runs one at a time.
# Created by `make airflow-init`: airflow pools set rgalign_heavy 1 "..."
HEAVY_POOL = "rgalign_heavy"
RETRIES = int(os.environ.get("RGALIGN_TASK_RETRIES", "2"))
# The date a run processes. A scheduled run's ds is the start of its data interval (the day
# whose logs are complete). A manual run triggered without a logical date processes the day
# before it was triggered.
DS = "{{ ds | default((dag_run.run_after - macros.timedelta(days=1)).strftime('%Y-%m-%d')) }}"

DOC_MD = """
# rgalign_nightly

Every night: logs → validated tables → point-in-time features (Spark) → the reasoner LLM
(bootstrap with DeepSpeed, teachers' candidate queries, latent-query embeddings) → rankers
(two-tower baseline, QE-Rec) → reward model's best-of-N → alignment (RG-SFT, DPO, RG-CL, the
calibration loop) → evaluation → publish (model registry gate, top-K per user for serving). Each
task is one job in `jobs/`, each recorded as an MLflow child run under one parent run per DAG run.

| task | job | writes (under the lake root) |
|---|---|---|
| `choose_source` | — | picks `simulate_logs` or straight to `validate_raw` |
| `simulate_logs` | `jobs/simulate_logs.py` | `raw/<table>/dt=…`, `truth/…` |
| `validate_raw` | `jobs/validate_raw.py` | `validated/<table>/dt=…`, `quarantine/<table>/dt=…` |
| `extract_features` | `jobs/extract_features.py` + `sql/*.sql` | `features/sessions/dt=…`, `features/samples/dt=…` |
| `bootstrap_reasoner` | `jobs/bootstrap_reasoner.py` (DeepSpeed) | `models/reasoner/ds=…` (built-in tiny LLM only) |
| `teachers_generate` | `jobs/teachers_generate.py` | `teachers/candidates/dt=…` |
| `encode_queries` | `jobs/encode_queries.py` | `queries/base/dt=…` (latent query + embedding) |
| `train_baseline` | `jobs/train_baseline.py` | `models/two_tower/ds=…` (3 seeds + test predictions) |
| `train_qe_rec` | `jobs/train_qe_rec.py` | `models/qe_rec/ds=…` (3 seeds + test predictions) |
| `reward_select` | `jobs/reward_select.py` | `rewards/{best,pairs,scored}/dt=…` (RG-SFT targets, DPO pairs) |
| `rg_sft` | `jobs/rg_sft.py` (DeepSpeed) | `models/reasoner_sft/ds=…`, `queries/sft/dt=…`, `models/qe_rec_sft/ds=…` |
| `rg_dpo` | `jobs/rg_dpo.py` (DeepSpeed) | `models/reasoner_dpo/ds=…`, `queries/dpo/dt=…`, `models/qe_rec_dpo/ds=…` |
| `rg_cl` | `jobs/rg_cl.py` (DeepSpeed) | `models/reasoner_cl/ds=…`, `queries/cl/dt=…`, `models/qe_rec_cl/ds=…` |
| `calibrate` | `jobs/calibrate.py` | per round `models/reasoner_cal<r>`, `queries/cal<r>`, `models/qe_rec_cal<r>`; `models/qe_rec_calibrated/ds=…` |
| `evaluate` | `jobs/evaluate.py` | ablation table + plots on the parent MLflow run |
| `publish` | `jobs/publish.py` | registry version of `rgalign-qe-rec` (aliases `challenger`, `champion`), `serving/topk/dt=…` |

**Rerun one stage** for a date (inputs are found from the date, never from XComs):

    airflow tasks test rgalign_nightly extract_features 2026-11-21

**Params**: `source` (simulator | lake), `lake_root` (empty = config default), `scale`
(simulator size), `seed`, `force` (recompute outputs that are already up to date),
`overrides` (config values for every job, e.g. `["ranker.epochs=10", "encode.batch_size=32"]`;
`train.*` is bootstrap_reasoner's, each alignment stage has its own `rg_sft.train.*`...).
"""


def job(stage: str, **kwargs) -> BashOperator:
    """A task that runs ``jobs/<stage>.py`` for the run's logical date and params."""
    command = (
        f"{PYTHON} -m jobs.{stage} --ds {DS} --run-id '{{{{ run_id }}}}'"
        " --set source={{ params.source }} --set sim.scale={{ params.scale }} --set sim.seed={{ params.seed }}"
        "{% if params.lake_root %} --set lake.root={{ params.lake_root }}{% endif %}"
        "{% for o in params.overrides %} --set '{{ o }}'{% endfor %}"
        "{% if params.force %} --force{% endif %}"
    )
    return BashOperator(
        task_id=stage,
        bash_command=command,
        cwd=str(PROJECT_ROOT),
        env={"PYTHONPATH": str(PROJECT_ROOT), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"},
        append_env=True,
        **kwargs,
    )


@dag(
    dag_id="rgalign_nightly",
    # Interval timetable: the run at 00:00 on day D+1 has ds = D, the day it processes.
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=DOC_MD,
    tags=["rgalign", "training", "recommendation"],
    default_args={"owner": "rgalign", "retries": RETRIES, "retry_delay": timedelta(minutes=2)},
    params={
        "source": Param("simulator", type="string", enum=["simulator", "lake"],
                        description="simulator: generate logs; lake: read the company's raw tables"),
        "lake_root": Param("", type="string", description="lake root (path or fsspec URI); empty = conf/pipeline.yaml"),
        "scale": Param("small", type="string", enum=["tiny", "small", "medium", "large"],
                       description="simulator size (see conf/simulate_logs.yaml)"),
        "seed": Param(17, type="integer", minimum=0, description="simulator seed"),
        "force": Param(False, type="boolean", description="recompute outputs that are already up to date"),
        "overrides": Param([], type="array", items={"type": "string"},
                           description='config overrides passed to every job, e.g. ["ranker.epochs=10", "rg_sft.train.steps=50"]'),
    },
)
def rgalign_nightly():
    @task.branch
    def choose_source(params=None) -> str:
        return "simulate_logs" if params["source"] == "simulator" else "validate_raw"

    simulate = job("simulate_logs")
    validate = job("validate_raw", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    features = job("extract_features", pool=HEAVY_POOL)
    bootstrap = job("bootstrap_reasoner", pool=HEAVY_POOL)
    teachers = job("teachers_generate")
    encode = job("encode_queries", pool=HEAVY_POOL)
    baseline = job("train_baseline", pool=HEAVY_POOL)
    qe_rec = job("train_qe_rec", pool=HEAVY_POOL)
    reward = job("reward_select", pool=HEAVY_POOL)
    sft = job("rg_sft", pool=HEAVY_POOL)
    dpo = job("rg_dpo", pool=HEAVY_POOL)
    cl = job("rg_cl", pool=HEAVY_POOL)
    calibrate = job("calibrate", pool=HEAVY_POOL)
    evaluate = job("evaluate")
    publish = job("publish", pool=HEAVY_POOL)

    choose_source() >> [simulate, validate]
    simulate >> validate >> features >> [bootstrap, baseline]
    bootstrap >> [teachers, encode]
    encode >> qe_rec
    [qe_rec, teachers] >> reward >> sft >> dpo >> cl >> calibrate
    [baseline, calibrate] >> evaluate >> publish


rgalign_nightly()
