"""The DAG: parses cheaply, is wired as documented, and runs end to end on the real engines."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT, VENV_BIN

DS = "2026-11-21"
# Keep the reasoner's training short in tests; the default trains for train.steps in its config.
FAST = ["train.steps=20", "train.log_every=5", "ranker.seeds=[0, 1]", "ranker.epochs=2",
        "rg_sft.train.steps=8", "rg_dpo.train.steps=8", "rg_cl.train.steps=8", "calibrate.cl_steps=4",
        "calibrate.finetune_epochs=1", "rg_sft.train.log_every=2", "rg_dpo.train.log_every=2", "rg_cl.train.log_every=2",
        # 2-epoch rankers on the tiny world: the query does not help yet, and the gate's baseline checks
        # would (rightly) stop publish; its checks are tested in test_publish.py
        "publish.gate.min_gain_over_baseline=-1", "publish.gate.min_session_gauc_gain_over_baseline=-1"]
HEAVY = ("torch", "pyspark", "deepspeed", "transformers", "mlflow", "pandas", "pyarrow", "sklearn")


def test_dag_parses_without_errors_or_heavy_imports(tmp_path):
    code = f"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={str(PROJECT_ROOT / 'dags')!r})
dag = bag.dags["rgalign_nightly"]
print(json.dumps({{
    "errors": {{k: str(v) for k, v in bag.import_errors.items()}},
    "heavy": [m for m in {HEAVY!r} if m in sys.modules],
    "tasks": sorted(t.task_id for t in dag.tasks),
    "edges": sorted((t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids),
    "params": sorted(dag.params.keys()),
    "retries": {{t.task_id: t.retries for t in dag.tasks}},
    "pools": {{t.task_id: t.pool for t in dag.tasks}},
    "tags": sorted(dag.tags), "catchup": dag.catchup, "doc": bool(dag.doc_md),
}}))
"""
    env = {"AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["errors"] == {}
    assert info["heavy"] == []
    assert info["tasks"] == ["bootstrap_reasoner", "calibrate", "choose_source", "encode_queries", "evaluate",
                             "extract_features", "publish", "reward_select", "rg_cl", "rg_dpo", "rg_sft", "simulate_logs",
                             "teachers_generate", "train_baseline", "train_qe_rec", "validate_raw"]
    assert info["edges"] == [["bootstrap_reasoner", "encode_queries"], ["bootstrap_reasoner", "teachers_generate"],
                             ["calibrate", "evaluate"],
                             ["choose_source", "simulate_logs"], ["choose_source", "validate_raw"],
                             ["encode_queries", "train_qe_rec"], ["evaluate", "publish"],
                             ["extract_features", "bootstrap_reasoner"], ["extract_features", "train_baseline"],
                             ["reward_select", "rg_sft"], ["rg_cl", "calibrate"], ["rg_dpo", "rg_cl"], ["rg_sft", "rg_dpo"],
                             ["simulate_logs", "validate_raw"], ["teachers_generate", "reward_select"],
                             ["train_baseline", "evaluate"], ["train_qe_rec", "reward_select"],
                             ["validate_raw", "extract_features"]]
    assert info["params"] == ["force", "lake_root", "overrides", "scale", "seed", "source"]
    assert all(r >= 2 for r in info["retries"].values())
    assert {t for t, p in info["pools"].items() if p == "rgalign_heavy"} == {
        "extract_features", "bootstrap_reasoner", "encode_queries", "train_baseline", "train_qe_rec", "reward_select",
        "rg_sft", "rg_dpo", "rg_cl", "calibrate", "publish"}
    assert "rgalign" in info["tags"] and info["catchup"] is False and info["doc"]


def _mlflow_runs(work: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{work}/mlflow.db")
    return mlflow.search_runs(experiment_names=["rgalign"], output_format="list")


def _complete(lake: Path, area: str, table: str) -> list[str]:
    return sorted(p.parent.name for p in (lake / area / table).glob("dt=*/_SUCCESS"))


@pytest.fixture(scope="module")
def dag_run(airflow_env):
    """One `airflow dags test` of the whole DAG at tiny scale, shared by the tests below."""
    proc = subprocess.run(
        [airflow_env["airflow"], "dags", "test", "rgalign_nightly", DS, "--conf", json.dumps({"scale": "tiny", "overrides": FAST})],
        env=airflow_env["env"], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=1800,
    )
    return proc, airflow_env


def test_dags_test_runs_every_stage_on_real_engines(dag_run):
    proc, env = dag_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lake = env["work"] / "lake"
    assert len(_complete(lake, "raw", "behaviour_events")) == 27
    assert len(_complete(lake, "validated", "intent_impressions")) == 27
    assert len(_complete(lake, "features", "samples")) == 20  # 14 train + 3 valid + 3 test days
    report = json.loads((lake / "reports" / "extract_features" / f"ds={DS}" / "report.json").read_text())
    assert report["samples"] > 1000 and report["sessions"] > 200

    runs = _mlflow_runs(env["work"])
    parents = [r for r in runs if r.data.tags.get("rgalign_role") == "dag_run"]
    assert len(parents) == 1 and parents[0].data.tags["logical_date"] == DS
    children = {r.data.tags["stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert set(children) == {"simulate_logs", "validate_raw", "extract_features", "bootstrap_reasoner",
                             "teachers_generate", "encode_queries", "train_baseline", "train_qe_rec", "reward_select",
                             "rg_sft", "rg_dpo", "rg_cl", "calibrate", "evaluate", "publish"}
    assert all(r.info.status == "FINISHED" for r in children.values())
    extract = children["extract_features"]
    assert extract.data.metrics["samples"] == report["samples"]
    assert {d.dataset.name for d in extract.inputs.dataset_inputs} >= {"validated.behaviour_events", "features.samples"}
    assert extract.data.params["spark.master"] == "local[*]"
    boot = children["bootstrap_reasoner"]
    assert boot.data.metrics["final_loss"] < boot.data.metrics["first_loss"]
    assert "bootstrap/loss" in boot.data.metrics and boot.data.metrics["tokens_per_s"] > 0
    assert len(_complete(lake, "queries", "base")) == 20 and len(_complete(lake, "teachers", "candidates")) == 14
    assert (lake / "models" / "reasoner" / f"ds={DS}" / "model.safetensors").exists()
    assert {"seed=0", "seed=1"} <= {p.name for p in (lake / "models" / "qe_rec" / f"ds={DS}").iterdir()}
    assert children["train_qe_rec"].data.metrics["test_gauc_mean"] > 0.5
    # ranker.refit (the default): each seed is the refit on train + valid, its first pass kept beside it,
    # and the stages that judge on the validation window read the first pass
    seed0 = lake / "models" / "qe_rec" / f"ds={DS}" / "seed=0"
    assert json.loads((seed0 / "config.json").read_text())["trained_on"] == "train+valid"
    assert json.loads((seed0 / "held_out" / "config.json").read_text())["trained_on"] == "train"
    from safetensors.torch import load_file

    refit, first = load_file(seed0 / "model.safetensors"), load_file(seed0 / "held_out" / "model.safetensors")
    assert [k for k in refit if refit[k].is_floating_point() and refit[k].equal(first[k])] == []
    assert children["train_qe_rec"].data.metrics["seed0/refit_train_loss"] > 0
    assert children["rg_cl"].data.params["projection_from"].endswith("qe_rec_dpo/ds=" + DS + "/seed=0/held_out")
    assert not (lake / "models" / "qe_rec_calibrated" / f"ds={DS}" / "seed=0" / "held_out").exists()
    assert len(_complete(lake, "rewards", "best")) == 14
    # the reviewer's view: the ablation table and plots on the DAG run's parent run
    import mlflow

    parent_artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parents[0].info.run_id, "evaluation")}
    assert {"evaluation/ablation.md", "evaluation/ablation.png", "evaluation/gauc_by_slice.png",
            "evaluation/calibration_curves.png", "evaluation/metrics_by_seed.csv"} <= parent_artifacts
    # ... and the figures a reviewer compares across nights, keyed by model (not by the row's label)
    parent_metrics = mlflow.MlflowClient().get_run(parents[0].info.run_id).data.metrics
    assert {"test_gauc.two_tower", "test_session_gauc.qe_rec", "test_gauc_std.qe_rec", "cold_start_recall_at_3.qe_rec_cl", "test_ece.qe_rec_calibrated",
            "test_gauc.ref_oracle", "overall_gauc_z", "cold_start_recall_at_3_z"} <= set(parent_metrics)
    assert parent_metrics["test_gauc.qe_rec"] == pytest.approx(children["train_qe_rec"].data.metrics["test_gauc_mean"], abs=1e-4)
    # an alignment stage's QE-Rec under train_qe_rec's metric names: one column in the UI's run comparison
    for stage_name, model in (("rg_sft", "qe_rec_sft"), ("rg_dpo", "qe_rec_dpo"), ("rg_cl", "qe_rec_cl")):
        m = children[stage_name].data.metrics
        assert m["test_gauc_mean"] == pytest.approx(parent_metrics[f"test_gauc.{model}"], abs=1e-4)
        assert {"valid_gauc_mean", "test_recall_at_3_mean", "seed0/valid_gauc"} <= set(m)
    assert parents[0].data.tags["git_commit"] and parents[0].data.tags["git_dirty"] in ("true", "false")
    # the alignment stages: each a new reasoner version, its queries, a QE-Rec on them, and its logs
    for variant in ("sft", "dpo", "cl"):
        assert (lake / "models" / f"reasoner_{variant}" / f"ds={DS}" / "model.safetensors").exists()
        assert len(_complete(lake, "queries", variant)) == 20
        assert (lake / "models" / f"qe_rec_{variant}" / f"ds={DS}" / "test_predictions.parquet").exists()
    assert (lake / "models" / "reasoner_cl" / f"ds={DS}" / "query_projection.safetensors").exists()
    # each stage trained every weight of the reasoner it started from (a stage that copied it would not)
    chain = ["reasoner", "reasoner_sft", "reasoner_dpo", "reasoner_cl"]
    weights = {m: load_file(lake / "models" / m / f"ds={DS}" / "model.safetensors") for m in chain}
    for parent, child in zip(chain, chain[1:]):
        assert weights[parent].keys() == weights[child].keys()
        assert [k for k in weights[child] if weights[child][k].equal(weights[parent][k])] == [], child
    assert "rg_sft/loss" in children["rg_sft"].data.metrics
    dpo = children["rg_dpo"].data.metrics
    assert dpo["first_dpo_loss"] == pytest.approx(0.6931, abs=1e-3)  # the policy starts as its reference
    assert dpo["first_loss"] > dpo["first_dpo_loss"]  # + the anchor's NLL on chosen query + summary
    assert {"rg_dpo/rewards/accuracies", "rg_dpo/rewards/margins", "rg_dpo/anchor_nll", "rg_dpo/dpo_loss"} <= set(dpo)
    cl = children["rg_cl"].data.metrics
    assert {"valid_before/alignment_gap", "valid_after/alignment_gap", "rg_cl/pair_accuracy", "rg_cl/lm_loss"} <= set(cl)
    assert cl["summary_tokens"] > 0  # RG-CL's rows go on after the cue with the summary
    cl_plots = {a.path for a in mlflow.MlflowClient().list_artifacts(children["rg_cl"].info.run_id)}
    assert {"rg_cl_curves.png", "rg_cl_validation_before_after.png"} <= cl_plots
    cal = children["calibrate"].data.metrics
    assert {"loop/valid_gauc", "test_ece_before", "test_ece_after", "kept_round"} <= set(cal)
    assert (lake / "models" / "qe_rec_calibrated" / f"ds={DS}" / "calibration.json").exists()
    ablation = mlflow.MlflowClient().download_artifacts(parents[0].info.run_id, "evaluation/ablation.md")
    text = Path(ablation).read_text()
    assert all(v in text for v in ("+ RG-SFT", "+ DPO", "+ RG-CL", "+ calibration loop", "oracle"))
    # publish: the first night's model is the champion, and top-K rows for every active user
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("rgalign-qe-rec", "champion")
    assert int(champion.version) == 1 and champion.tags["gate"] == "passed" and champion.tags["ds"] == DS
    assert int(client.get_model_version_by_alias("rgalign-qe-rec", "challenger").version) == 1
    assert 'models:/rgalign-qe-rec@champion' in client.get_registered_model("rgalign-qe-rec").description
    pub = children["publish"].data.metrics
    assert pub["promoted"] == 1 and pub["served_version"] == 1 and pub["users"] > 10
    import pandas as pd

    topk = pd.read_parquet(lake / "serving" / "topk" / f"dt={DS}")
    assert len(topk) == 3 * pub["users"] == pub["topk_rows"] and topk.groupby("user_id")["rank"].apply(lambda r: sorted(r) == [1, 2, 3]).all()
    assert (topk.model_version == 1).all() and topk.prob.between(0, 1).all()


def test_the_registered_champion_serves_from_the_registry_alone(dag_run, tmp_path):
    """A host with only the MLflow registry (no lake, no project on PYTHONPATH) loads the champion and
    ranks sessions as the serving table does."""
    proc, env = dag_run
    assert proc.returncode == 0
    lake = env["work"] / "lake"
    code = f"""
import glob, json, sys
import mlflow, pandas as pd
mlflow.set_tracking_uri({env['env']['MLFLOW_TRACKING_URI']!r})
model = mlflow.pyfunc.load_model("models:/rgalign-qe-rec@champion")
served = pd.read_parquet({str(lake / 'serving' / 'topk' / f'dt={DS}')!r})
sessions = pd.read_parquet({str(lake / 'features' / 'sessions' / f'dt={DS}')!r})
sessions = sessions[sessions.session_id.isin(served.session_id)].head(8)
out = model.predict(sessions, params={{"k": 3}})
j = out.merge(served, on=["session_id", "rank"], suffixes=("", "_served"))
import rgalign_core
print(json.dumps({{"rows": len(out), "joined": len(j), "same_intent": float((j.intent_id == j.intent_id_served).mean()),
                  "max_prob_gap": float((j.prob - j.prob_served).abs().max()), "code": rgalign_core.__file__}}))
"""
    run_env = {k: v for k, v in env["env"].items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["rows"] == info["joined"] == 3 * 8
    assert info["same_intent"] == 1.0 and info["max_prob_gap"] < 1e-5
    assert str(PROJECT_ROOT) not in info["code"]  # the registry's copy of the code, not this checkout


def _weights(root: Path) -> dict[str, str]:
    from rgalign_core.reasoner import model_version

    return {p.name: model_version(p) for p in sorted(root.glob("ds=*"))}


def _markers(lake: Path, area: str, table: str, key: str = "dt") -> dict[str, str]:
    return {p.name: (p / "_SUCCESS").read_text() for p in sorted((lake / area / table).glob(f"{key}=*"))}


def _job(module: str, env: dict, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m jobs.<module> --ds DS`` with the test's FAST settings and ``overrides`` on top."""
    sets = [a for o in FAST + list(overrides) for a in ("--set", o)]
    return subprocess.run([str(VENV_BIN / "python"), "-m", f"jobs.{module}", "--ds", DS, *sets],
                          env=env, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=timeout)


def _scratch_mlflow(env: dict, tmp_path: Path) -> dict:
    """The DAG run's environment with an MLflow store of its own (the module's store stays as the night left it)."""
    return {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/scratch.db", "RGALIGN_MLFLOW_ARTIFACT_ROOT": str(tmp_path / "art")}


def test_a_first_night_whose_challenger_fails_the_gate_fails_publish_and_serves_nothing_new(dag_run, tmp_path):
    """A new registry (no champion yet) and a challenger the gate rejects: publish stops with a message
    that says so, and the lake's serving table is the one that was there."""
    proc, env = dag_run
    assert proc.returncode == 0
    lake = env["work"] / "lake"
    before = _markers(lake, "serving", "topk")
    fresh = _scratch_mlflow(env["env"], tmp_path)
    out = _job("publish", fresh, "publish.gate.min_gain_over_baseline=1.0")
    assert out.returncode != 0
    assert f"failed the gate and there is no champion to serve: nothing published for {DS}" in out.stderr, out.stderr[-3000:]
    assert _markers(lake, "serving", "topk") == before
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=fresh["MLFLOW_TRACKING_URI"])  # not the module's global store
    assert client.get_model_version("rgalign-qe-rec", "1").tags["gate"] == "rejected"
    assert "champion" not in client.get_registered_model("rgalign-qe-rec").aliases


@pytest.mark.parametrize("task, area, table, key", [
    ("extract_features", "features", "samples", "dt"),
    ("teachers_generate", "teachers", "candidates", "dt"),
    ("encode_queries", "queries", "base", "dt"),
    ("bootstrap_reasoner", "models", "reasoner", "ds"),
    ("rg_sft", "models", "reasoner_sft", "ds"),
    ("rg_dpo", "models", "reasoner_dpo", "ds"),
    ("rg_cl", "models", "reasoner_cl", "ds"),
    ("calibrate", "models", "qe_rec_calibrated", "ds"),
    ("publish", "serving", "topk", "dt"),
])
def test_tasks_test_reruns_one_stage_alone(dag_run, task, area, table, key):
    """`airflow tasks test` has no upstream XComs: the task finds its inputs from the date."""
    import shutil

    proc, env = dag_run
    assert proc.returncode == 0
    lake = env["work"] / "lake"
    before = _markers(lake, area, table, key)
    assert before
    before_weights = _weights(lake / area / table) if area == "models" and table.startswith("reasoner") else None
    shutil.rmtree(lake / area / table)
    out = subprocess.run([env["airflow"], "tasks", "test", "rgalign_nightly", task, DS,
                          "--task-params", json.dumps({"overrides": FAST})],
                         env=env["env"], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=600)
    # `tasks test` exits 0 even when the task fails: check the outputs, not the exit code.
    after = _markers(lake, area, table, key)
    assert after == before, out.stdout[-3000:] + out.stderr[-3000:]
    if area == "models" and table.startswith("reasoner"):  # the same weights, not only the same inputs
        assert _weights(lake / area / table) == before_weights


def test_publish_rerun_with_its_output_in_place_is_skipped(dag_run):
    """A second `tasks test publish` with the serving table in place registers nothing and rewrites nothing."""
    import mlflow

    proc, env = dag_run
    assert proc.returncode == 0
    lake = env["work"] / "lake"
    before = _markers(lake, "serving", "topk")
    mlflow.set_tracking_uri(env["env"]["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    versions = sorted(int(v.version) for v in client.search_model_versions("name='rgalign-qe-rec'"))
    champion = client.get_model_version_by_alias("rgalign-qe-rec", "champion").version
    out = subprocess.run([env["airflow"], "tasks", "test", "rgalign_nightly", "publish", DS,
                          "--task-params", json.dumps({"overrides": FAST})],
                         env=env["env"], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=600)
    logs = out.stdout + out.stderr
    assert "is up to date" in logs, logs[-3000:]
    assert _markers(lake, "serving", "topk") == before
    assert sorted(int(v.version) for v in client.search_model_versions("name='rgalign-qe-rec'")) == versions
    assert client.get_model_version_by_alias("rgalign-qe-rec", "champion").version == champion


def test_lake_source_skips_the_simulator(dag_run, tmp_path):
    """source=lake: validate the company's raw tables (here: the first run's) into a new lake."""
    proc, env = dag_run
    assert proc.returncode == 0
    new_lake = tmp_path / "lake2"
    run_env = {**env["env"], "RGALIGN_RAW_ROOT": str(env["work"] / "lake" / "raw")}
    out = subprocess.run(
        [env["airflow"], "dags", "test", "rgalign_nightly", DS,
         "--conf", json.dumps({"source": "lake", "lake_root": str(new_lake), "overrides": FAST})],
        env=run_env, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=1800,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert not (new_lake / "raw").exists()  # nothing simulated into the new lake
    assert len(_complete(new_lake, "features", "samples")) == 20
    # the second night's publish (same MLflow store) is gated against the first night's champion,
    # which it loads from the registry and scores with its own reasoner
    runs = [r for r in _mlflow_runs(env["work"]) if r.data.tags.get("stage") == "publish"]
    assert len(runs) >= 2
    latest = max(runs, key=lambda r: r.info.start_time)
    assert "champion/gauc" in latest.data.metrics and latest.data.metrics["model_version"] >= 2
    assert len(_complete(new_lake, "serving", "topk")) == 1

    # a challenger that fails the gate is registered and becomes the challenger; the champion keeps
    # its alias and is what the serving table is scored with
    import mlflow
    import pandas as pd

    client = mlflow.MlflowClient()
    champion = int(client.get_model_version_by_alias("rgalign-qe-rec", "champion").version)
    # seed 1 of the same night: a new model (a new version), scored against the champion
    out = _job("publish", env["env"], f"lake.root={new_lake}", "publish.model_seed=1", "publish.gate.min_gain_over_champion=1.0")
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((new_lake / "reports" / "publish" / f"ds={DS}" / "report.json").read_text())
    assert report["promoted"] == 0 and report["served_version"] == champion != report["model_version"]
    rejected = client.get_model_version("rgalign-qe-rec", str(report["model_version"]))
    assert rejected.tags["gate"] == "rejected"
    assert int(client.get_model_version_by_alias("rgalign-qe-rec", "challenger").version) == report["model_version"]
    assert int(client.get_model_version_by_alias("rgalign-qe-rec", "champion").version) == champion
    assert (pd.read_parquet(new_lake / "serving" / "topk" / f"dt={DS}").model_version == champion).all()


def test_calibrate_stops_at_the_first_round_that_does_not_improve_and_keeps_the_best(dag_run, tmp_path):
    """calibrate.min_delta decides the loop: a bar no round can pass stops after round 1 and keeps
    round 0 (RG-CL's QE-Rec); a bar every round passes runs every round and keeps the last. A rerun
    with the night's settings then writes back the night's output (the rounds are cached)."""
    proc, env = dag_run
    assert proc.returncode == 0
    lake = env["work"] / "lake"
    out_dir = lake / "models" / "qe_rec_calibrated" / f"ds={DS}"
    before = _markers(lake, "models", "qe_rec_calibrated", "ds")
    scratch = _scratch_mlflow(env["env"], tmp_path)

    def calibrate(*extra):
        out = _job("calibrate", scratch, *extra, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads((out_dir / "calibration.json").read_text())

    never = calibrate("calibrate.min_delta=1.0")
    assert [c["round"] for c in never["curve"]] == [0, 1] and never["kept_round"] == 0 and never["query_variant"] == "cl"
    always = calibrate("calibrate.min_delta=-1.0", "calibrate.rounds=2")
    assert [c["round"] for c in always["curve"]] == [0, 1, 2] and always["kept_round"] == 2
    assert always["query_variant"] == "cal2" and always["reasoner"].endswith("reasoner_cal2/ds=" + DS)
    calibrate()
    assert _markers(lake, "models", "qe_rec_calibrated", "ds") == before
