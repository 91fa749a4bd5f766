"""Shared test setup: every test writes to its own tmp lake and MLflow store, never the repo's."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def stage_overrides(tmp: Path, **extra) -> list[str]:
    """--set arguments that point a job at a tmp lake and a tmp MLflow store."""
    sets = {
        "lake.root": str(tmp / "lake"),
        "mlflow.tracking_uri": f"sqlite:///{tmp}/mlflow.db",
        "mlflow.artifact_root": str(tmp / "mlartifacts"),
        "spark.master": "local[2]",
        **extra,
    }
    out = []
    for k, v in sets.items():
        out += ["--set", f"{k}={v}"]
    return out


@pytest.fixture
def overrides(tmp_path):
    return lambda **extra: stage_overrides(tmp_path, **extra)


@pytest.fixture(scope="session")
def airflow_env(tmp_path_factory):
    """An Airflow home with a migrated SQLite DB and the heavy pool, for DAG-level tests."""
    home = tmp_path_factory.mktemp("airflow_home")
    work = tmp_path_factory.mktemp("airflow_work")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(PROJECT_ROOT),
        "RGALIGN_TASK_RETRIES": "0",
        "RGALIGN_LAKE_ROOT": str(work / "lake"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db",
        "RGALIGN_MLFLOW_ARTIFACT_ROOT": str(work / "mlartifacts"),
    }
    airflow = str(VENV_BIN / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([airflow, "pools", "set", "rgalign_heavy", "1", "tests"], env=env, check=True, capture_output=True)
    return {"env": env, "work": work, "airflow": airflow}
