"""What every job shares: its command line, config, lake, MLflow child run and report.

A job module defines ``run(ctx) -> dict`` (the metrics it wants logged) and calls
``stage.main("<stage>", run, __doc__)``. The same entry point serves the Airflow task, a
``python -m jobs.<stage>`` rerun and the tests.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import sys
import time
from typing import Callable

from rgalign_core import config as config_mod
from rgalign_core.lake import Lake, day_range, parse_ds

log = logging.getLogger("rgalign")


class StageError(RuntimeError):
    """A problem the user must fix (bad input table, missing partition, leakage...)."""


@dataclasses.dataclass
class Context:
    stage: str
    ds: dt.date
    cfg: dict
    lake: Lake
    force: bool
    tracker: object  # tracking.StageRun

    @property
    def ds_str(self) -> str:
        return self.ds.isoformat()

    def windows(self) -> dict[str, list[dt.date]]:
        return windows(self.ds, self.cfg)

    def up_to_date(self, paths: list[str], fingerprint: str) -> bool:
        """True when every output partition is complete and was made with this fingerprint."""
        if self.force:
            return False
        return all(self.lake.is_complete(p) and self.lake.marker(p).get("fingerprint") == fingerprint for p in paths)


def windows(ds: dt.date, cfg: dict) -> dict[str, list[dt.date]]:
    """Train / valid / test days ending at ds, and every day whose raw logs the features need."""
    w = cfg["windows"]
    test = day_range(ds, w["test_days"])
    valid = day_range(test[0] - dt.timedelta(days=1), w["valid_days"])
    train = day_range(valid[0] - dt.timedelta(days=1), w["train_days"])
    samples = train + valid + test
    raw = day_range(ds, len(samples) + w["feature_lookback_days"])
    return {"train": train, "valid": valid, "test": test, "samples": samples, "raw": raw}


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True
    )
    for noisy in ("py4j", "alembic", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def config_help(stage: str) -> str:
    """--help's last line: which config files this stage reads (only those that exist)."""
    own = config_mod.CONF_DIR / f"{stage}.yaml"
    files = "conf/pipeline.yaml" + (f" merged with conf/{stage}.yaml" if own.exists() else "")
    return (f"Config: {files}; see their headers and comments for every key. Any key can be overridden "
            f"with --set (a key no config file has is set with a warning).")


def parser(stage: str, doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m jobs.{stage}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=config_help(stage),
    )
    p.add_argument("--ds", required=True, help="logical date YYYY-MM-DD (Airflow's {{ ds }}); inputs and outputs are found from it")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set windows.train_days=7 (repeatable; value parsed as YAML)")
    p.add_argument("--run-id", default=None,
                   help="Airflow run id: groups this stage's MLflow run under the DAG run's parent (default manual__<ds>)")
    p.add_argument("--force", action="store_true", help="recompute even when the outputs exist and are up to date")
    return p


def main(stage: str, run: Callable[[Context], dict], doc: str | None = None, argv: list[str] | None = None) -> dict:
    args = parser(stage, doc).parse_args(argv)
    setup_logging()
    ds = parse_ds(args.ds)
    cfg = config_mod.load(stage, args.overrides)
    return execute(stage, run, ds, cfg, force=args.force, airflow_run_id=args.run_id)


def execute(stage: str, run: Callable[[Context], dict], ds: dt.date, cfg: dict, force: bool = False,
            airflow_run_id: str | None = None) -> dict:
    from rgalign_core import tracking

    lake = Lake(cfg["lake"]["root"], cfg["lake"].get("raw_root"))
    log.info("%s for ds=%s, lake=%s", stage, ds, lake.root)
    t0 = time.time()
    with tracking.stage_run(cfg, stage, ds.isoformat(), airflow_run_id) as tracker:
        ctx = Context(stage=stage, ds=ds, cfg=cfg, lake=lake, force=force, tracker=tracker)
        result = run(ctx) or {}
        tracker.metrics({k: v for k, v in result.items()})
        report = {"stage": stage, "ds": ds.isoformat(), "mlflow_run_id": tracker.run_id, **result}
        lake.write_json(lake.report(stage, ds), report)
    log.info("%s done in %.1fs: %s", stage, time.time() - t0,
             {k: v for k, v in result.items() if not isinstance(v, (dict, list))})
    return result
