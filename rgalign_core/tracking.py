"""MLflow: one experiment, a parent run per DAG run, a child run per stage.

Each stage process finds (or creates) the parent run tagged with the Airflow run id, then starts
its own child run under it. Nothing relies on state from another process (under the Airflow
scheduler every task is its own process), so the tracking URI and experiment are set here,
every time, from the config.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

DAG_ID = "rgalign_nightly"


def code_version() -> dict[str, str]:
    """The checkout's commit and whether it has uncommitted changes (``unknown`` outside git)."""
    import subprocess

    from rgalign_core.config import PROJECT_ROOT

    def git(*args) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit or "unknown", "git_dirty": "unknown" if status is None else str(bool(status)).lower()}


def configure(cfg: dict) -> str:
    """Point MLflow at the configured store; create the experiment if needed. Returns its id."""
    import mlflow

    ml = cfg["mlflow"]
    uri = ml["tracking_uri"]
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(ml["experiment"])
    if exp is not None:
        return exp.experiment_id
    artifact_root = ml.get("artifact_root")
    location = None
    if artifact_root:
        location = artifact_root if "://" in artifact_root else Path(artifact_root).resolve().as_uri()
    try:
        return client.create_experiment(ml["experiment"], artifact_location=location)
    except Exception:  # created meanwhile by a parallel task
        return client.get_experiment_by_name(ml["experiment"]).experiment_id


def parent_run_id(client, experiment_id: str, airflow_run_id: str, ds: str, code: dict[str, str]) -> str:
    """The parent run of this DAG run: found by tag, created on first use."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.airflow_run_id = '{airflow_run_id}' and tags.rgalign_role = 'dag_run'",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    if found:
        parent = found[0]
        # a stage on other code than the run started with (or on uncommitted code, which cannot be
        # compared): say so where the reviewer looks
        if code["git_commit"] != parent.data.tags.get("git_commit") or code["git_dirty"] == "true":
            client.set_tag(parent.info.run_id, "code_changed_during_run", "true")
        return parent.info.run_id
    run = client.create_run(
        experiment_id,
        run_name=f"{DAG_ID} {ds}",
        tags={"rgalign_role": "dag_run", "dag_id": DAG_ID, "airflow_run_id": airflow_run_id, "logical_date": ds, **code},
    )
    return run.info.run_id


class StageRun:
    """What a stage logs to its child run. Thin wrappers so jobs read as plain steps."""

    def __init__(self, run, parent_id: str):
        import mlflow

        self._mlflow = mlflow
        self.run = run
        self.run_id = run.info.run_id
        self.parent_id = parent_id
        self.client = mlflow.MlflowClient()

    def metrics(self, values: dict, step: int | None = None) -> None:
        clean = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if clean:
            self._mlflow.log_metrics(clean, step=step)

    def params(self, values: dict) -> None:
        # MLflow caps param values at 6000 chars; configs are small, but be safe. Values with line
        # breaks (the summary cue, prompt templates) are logged quoted, or the UI shows them empty.
        self._mlflow.log_params({k: (json.dumps(v) if "\n" in str(v) else str(v))[:5000] for k, v in values.items()})

    def dict(self, obj, name: str) -> None:
        self._mlflow.log_dict(obj, name)

    def text(self, body: str, name: str) -> None:
        self._mlflow.log_text(body, name)

    def figure(self, fig, name: str) -> None:
        self._mlflow.log_figure(fig, name)

    def artifact(self, path: str, artifact_path: str | None = None) -> None:
        self._mlflow.log_artifact(path, artifact_path)

    def dataset(self, lake, paths: list[str], name: str, context: str) -> str:
        """Record a lake dataset (one or more complete partitions) as a run input.

        The digest covers each partition's file names and sizes and its _SUCCESS marker (which
        holds the row count and the producer's fingerprint), so the same data gives the same
        digest without reading it.
        """
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        h = hashlib.sha256()
        rows = 0
        for path in paths:
            fs = lake.fs_for(path)
            for info in sorted(fs.ls(path, detail=True), key=lambda i: i["name"]):
                h.update(f"{Path(info['name']).name}:{info['size']}".encode())
            marker = lake.marker(path)
            rows += int(marker.get("rows", 0))
            h.update(json.dumps(marker, sort_keys=True).encode())
        source_uri = os.path.commonpath(paths) if len(paths) > 1 else paths[0]
        source = resolve_dataset_source(source_uri)
        ds = MetaDataset(source=source, name=name, digest=h.hexdigest()[:16])
        self._mlflow.log_input(ds, context=context, tags={"rows": str(rows), "partitions": str(len(paths))})
        return ds.digest


@contextmanager
def stage_run(cfg: dict, stage: str, ds: str, airflow_run_id: str | None) -> Iterator[StageRun]:
    import mlflow

    from rgalign_core.config import flat

    experiment_id = configure(cfg)
    client = mlflow.MlflowClient()
    airflow_run_id = airflow_run_id or f"manual__{ds}"
    code = code_version()
    parent = parent_run_id(client, experiment_id, airflow_run_id, ds, code)
    tags = {"rgalign_role": "stage", "stage": stage, "dag_id": DAG_ID, "airflow_run_id": airflow_run_id, "logical_date": ds,
            **code}
    t0 = time.time()
    status = "FAILED"
    with mlflow.start_run(experiment_id=experiment_id, run_name=stage, parent_run_id=parent, tags=tags) as run:
        tracker = StageRun(run, parent)
        tracker.params(flat({k: v for k, v in cfg.items() if k != "stage"}))
        try:
            yield tracker
            status = "FINISHED"
        finally:
            mlflow.log_metric("duration_s", time.time() - t0)
            if status == "FAILED":
                mlflow.set_tag("failure", "see the Airflow task log")
    # The parent mirrors its latest stage: a DAG run whose last stage failed shows as failed.
    client.set_terminated(parent, status=status)
