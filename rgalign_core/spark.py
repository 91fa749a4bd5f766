"""SparkSession from config, SQL files from sql/, and atomic partitioned writes to the lake."""
from __future__ import annotations

import json
import logging
import os
import uuid
from rgalign_core.config import PROJECT_ROOT

log = logging.getLogger("rgalign.spark")
SQL_DIR = PROJECT_ROOT / "sql"


def session(cfg: dict):
    """The SparkSession for a stage. Under ``spark-submit`` the submit's master wins."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    sc = cfg["spark"]
    builder = SparkSession.builder.appName(f"{sc.get('app_name', 'rgalign')}-{cfg.get('stage', 'job')}")
    if not os.environ.get("PYSPARK_GATEWAY_PORT") and sc.get("master"):  # not launched by spark-submit
        builder = builder.master(sc["master"])
    for k, v in (sc.get("conf") or {}).items():
        builder = builder.config(k, str(v))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def sql_text(name: str) -> str:
    return (SQL_DIR / name).read_text()


def run_sql(spark, name: str, **params):
    """Run ``sql/<name>`` with named parameters (``:param`` markers in the file)."""
    return spark.sql(sql_text(name), args=params)


def read_partitions(spark, lake, area: str, table: str, days, what: str):
    """A DataFrame over complete partitions of one lake table, with its ``dt`` column."""
    paths = [lake.partition(area, table, d) for d in days]
    for p in paths:
        lake.require(p, what)
    base = lake.table(area, table)
    return spark.read.option("basePath", base).parquet(*paths)


def write_partitions(df, lake, area: str, table: str, days, meta: dict, sort_by: list[str]) -> dict[str, int]:
    """Write ``df`` partitioned by ``dt`` into the lake, one atomic swap per day.

    Spark writes into a hidden temp folder; each ``dt=`` folder is then renamed into place with
    its ``_SUCCESS`` marker. Days in ``days`` that have no rows get an empty partition (so a
    rerun for the same date replaces exactly the same set of partitions and no other).
    Returns rows per day.
    """
    import pyarrow.parquet as pq

    table_root = lake.table(area, table)
    fs = lake.fs_for(table_root)
    tmp = f"{table_root}/._tmp-spark-{uuid.uuid4().hex[:8]}"
    counts = {r["dt"].isoformat(): r["n"] for r in df.groupBy("dt").count().withColumnRenamed("count", "n").collect()}
    try:
        (df.repartition("dt").sortWithinPartitions(*sort_by)
           .write.mode("overwrite").partitionBy("dt").parquet(tmp))
        schema = None
        for d in days:
            key = d.isoformat()
            src = f"{tmp}/dt={key}"
            dst = lake.partition(area, table, d)
            part_tmp = f"{table_root}/._tmp-{key}-{uuid.uuid4().hex[:8]}"
            fs.makedirs(part_tmp, exist_ok=True)
            if fs.exists(src):
                files = sorted(p for p in fs.ls(src, detail=False) if p.endswith(".parquet"))
                for i, f in enumerate(files):  # stable names: a rerun gives the same file set
                    fs.mv(f, f"{part_tmp}/part-{i:05d}.parquet")
                schema = schema or pq.read_schema(f"{part_tmp}/part-00000.parquet", filesystem=fs)
            else:
                # No rows that day: an empty file with the right schema keeps readers simple.
                schema = schema or _schema_of(df)
                pq.write_table(schema.empty_table(), f"{part_tmp}/part-00000.parquet", filesystem=fs)
            with fs.open(f"{part_tmp}/_SUCCESS", "w") as f:
                f.write(json.dumps({"rows": int(counts.get(key, 0)), **meta}, sort_keys=True))
            lake._swap_in(fs, part_tmp, dst)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp, recursive=True)
    return {d.isoformat(): int(counts.get(d.isoformat(), 0)) for d in days}


def _schema_of(df):
    return df.limit(0).toArrow().drop_columns(["dt"]).schema
