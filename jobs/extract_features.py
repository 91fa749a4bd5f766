"""Point-in-time session features, prompts and training samples, on Spark, from validated logs.

Reads only validated partitions (validate_raw's output) for the days the windows need, runs
sql/session_features.sql and sql/samples.sql, fails on leakage (a feature built from an event at
or after its session), and writes by session day:

    features/sessions/dt=...   one row per chatbot session: features + verbalised prompt
    features/samples/dt=...    one row per (session, shown intent): position, click, features

Each day's partition is swapped in atomically; rerunning a date rewrites the same days with the
same rows and touches no other day.

    python -m jobs.extract_features --ds 2026-11-21
    python -m jobs.extract_features --ds 2026-11-21 --set spark.master=spark://host:7077
    PYTHONPATH=. spark-submit --master local[2] jobs/extract_features.py --ds 2026-11-21
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file by spark-submit: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rgalign_core import stage  # noqa: E402
from rgalign_core.config import fingerprint  # noqa: E402

log = logging.getLogger("rgalign.extract_features")
VERSION = 1  # bump when the SQL's meaning changes, so cached outputs are recomputed
# SQL view name -> the validated table it reads; the job's inputs are exactly these tables.
VIEWS = {"sessions": "chatbot_sessions", "orders": "orders", "events": "behaviour_events", "users": "users",
         "impressions": "intent_impressions", "kb": "kb_intents"}


def run(ctx: stage.Context) -> dict:
    import time

    from rgalign_core import spark as sparkx

    lake, w = ctx.lake, ctx.windows()
    days, raw_days = w["samples"], w["raw"]
    lookback = int(ctx.cfg["windows"]["feature_lookback_days"])
    inputs = {t: [lake.partition("validated", t, d) for d in raw_days] for t in VIEWS.values()}
    for t, paths in inputs.items():
        for p in paths:
            lake.require(p, f"extract_features input {t}")
    input_fp = fingerprint({t: [lake.marker(p).get("fingerprint") for p in ps] for t, ps in inputs.items()})
    fp = fingerprint({"version": VERSION, "sql": [sparkx.sql_text("session_features.sql"), sparkx.sql_text("samples.sql")],
                      "lookback": lookback, "inputs": input_fp})
    outputs = [lake.partition("features", t, d) for t in ("sessions", "samples") for d in days]
    if ctx.up_to_date(outputs, fp):
        log.info("features for %s..%s are up to date; use --force to redo", days[0], days[-1])
        return {"skipped": 1}

    t0 = time.time()
    spark = sparkx.session(ctx.cfg)
    for table, paths in inputs.items():
        ctx.tracker.dataset(lake, paths, f"validated.{table}", context="input")
    session_rows, sample_rows = extract(spark, lake, days, raw_days, lookback, {"fingerprint": fp})
    elapsed = time.time() - t0
    n_sessions, n_samples = sum(session_rows.values()), sum(sample_rows.values())
    n_events = spark.table("events").count()
    for t in ("sessions", "samples"):
        ctx.tracker.dataset(lake, [lake.partition("features", t, d) for d in days], f"features.{t}", context="output")
    empty = [d for d, n in session_rows.items() if n == 0]
    if empty:
        log.warning("no chatbot sessions on %s: their feature partitions are empty", empty)
    log.info("%d sessions, %d samples from %d behaviour events in %.1fs (%.0f events/s)",
             n_sessions, n_samples, n_events, elapsed, n_events / max(elapsed, 1e-9))
    return {
        "sessions": n_sessions, "samples": n_samples, "behaviour_events_read": n_events,
        "spark_seconds": elapsed, "events_per_s": n_events / max(elapsed, 1e-9),
        "click_rate": _click_rate(sparkx.read_partitions(spark, lake, "features", "samples", days, "features.samples")),
        "days_with_no_sessions": len(empty),
        "windows": {k: [d.isoformat() for d in v] for k, v in ctx.windows().items() if k in ("train", "valid", "test")},
    }


def extract(spark, lake, days, raw_days, lookback: int, meta: dict):
    """Register the validated inputs as views, run the SQL, check leakage, write both tables.

    Returns (session rows per day, sample rows per day).
    """
    from rgalign_core import spark as sparkx

    for view, table in VIEWS.items():
        sparkx.read_partitions(spark, lake, "validated", table, raw_days, f"extract_features input {table}") \
            .createOrReplaceTempView(view)
    feats = sparkx.run_sql(spark, "session_features.sql", first_day=days[0].isoformat(),
                           last_day=days[-1].isoformat(), lookback_days=lookback).cache()
    feats.createOrReplaceTempView("session_features")
    check_no_leakage(feats)
    samples = sparkx.run_sql(spark, "samples.sql")
    session_rows = sparkx.write_partitions(feats.drop("max_event_time_used"), lake, "features", "sessions", days, meta,
                                           sort_by=["session_id"])
    sample_rows = sparkx.write_partitions(samples, lake, "features", "samples", days, meta,
                                          sort_by=["session_id", "position"])
    feats.unpersist()
    return session_rows, sample_rows


def check_no_leakage(feats) -> None:
    """Fail if any session's features used an event at or after the session's time."""
    from pyspark.sql import functions as F

    leaks = feats.where(F.col("max_event_time_used") >= F.col("session_time"))
    n = leaks.count()
    if n:
        sample = [r.session_id for r in leaks.select("session_id").limit(5).collect()]
        raise stage.StageError(
            f"leakage: {n} session(s) have features built from events at or after the session time "
            f"(e.g. session_id {sample}); every event filter in sql/session_features.sql must be "
            "`event_time < session_time`"
        )


def _click_rate(samples) -> float:
    from pyspark.sql import functions as F

    row = samples.agg(F.avg("clicked").alias("ctr")).collect()[0]
    return float(row.ctr or 0.0)


def main(argv=None):
    return stage.main("extract_features", run, __doc__, argv)


if __name__ == "__main__":
    main()
