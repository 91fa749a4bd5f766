"""The lake's path convention and atomic partition writes.

Layout under the lake root (a local path or any fsspec URI)::

    raw/<table>/dt=YYYY-MM-DD/          what the company (or the simulator) provides
    truth/<table>/dt=YYYY-MM-DD/        simulator's hidden truth: tests and oracle only
    validated/<table>/dt=YYYY-MM-DD/    rows that passed validate_raw
    quarantine/<table>/dt=YYYY-MM-DD/   rows that failed, with the reason
    features/<table>/dt=YYYY-MM-DD/     extract_features output, by session day
    reports/<stage>/ds=YYYY-MM-DD/      small JSON summaries a stage leaves per logical date

A partition is complete only when its ``_SUCCESS`` marker exists; writers build the partition in a
hidden temp folder beside it and rename it into place, so a failed task leaves nothing a reader
would take for output. Readers go through ``read_partition``, which refuses a partition without
the marker.
"""
from __future__ import annotations

import datetime as dt
import json
import uuid
from contextlib import contextmanager
from typing import Iterator

import fsspec

SUCCESS = "_SUCCESS"


class MissingPartition(FileNotFoundError):
    """An input partition is absent or incomplete (no _SUCCESS marker)."""


def parse_ds(ds: str | dt.date) -> dt.date:
    if isinstance(ds, dt.date):
        return ds
    try:
        return dt.date.fromisoformat(ds)
    except ValueError as e:
        raise ValueError(f"--ds must be a date YYYY-MM-DD, got {ds!r}") from e


def day_range(end: dt.date, days: int) -> list[dt.date]:
    """The ``days`` dates ending at ``end`` inclusive, oldest first."""
    return [end - dt.timedelta(days=days - 1 - i) for i in range(days)]


class Lake:
    def __init__(self, root: str, raw_root: str | None = None):
        self.root = root.rstrip("/")
        # Raw tables may live outside the lake (a company's own warehouse path).
        self.raw_root = (raw_root or f"{self.root}/raw").rstrip("/")
        self.fs, _ = fsspec.core.url_to_fs(self.root)

    # ---- paths -------------------------------------------------------------------------------
    def area(self, area: str) -> str:
        return self.raw_root if area == "raw" else f"{self.root}/{area}"

    def table(self, area: str, table: str) -> str:
        return f"{self.area(area)}/{table}"

    def partition(self, area: str, table: str, day: dt.date | str, key: str = "dt") -> str:
        return f"{self.table(area, table)}/{key}={parse_ds(day).isoformat()}"

    def report(self, stage: str, ds: dt.date | str) -> str:
        return f"{self.partition('reports', stage, ds, key='ds')}/report.json"

    def fs_for(self, path: str):
        fs, _ = fsspec.core.url_to_fs(path)
        return fs

    # ---- state -------------------------------------------------------------------------------
    def is_complete(self, path: str) -> bool:
        return self.fs_for(path).exists(f"{path}/{SUCCESS}")

    def marker(self, path: str) -> dict:
        fs = self.fs_for(path)
        with fs.open(f"{path}/{SUCCESS}", "r") as f:
            text = f.read()
        return json.loads(text) if text.strip() else {}

    def require(self, path: str, what: str) -> None:
        if not self.is_complete(path):
            maker = self.producer(path)
            raise MissingPartition(
                f"{what}: partition {path} is missing or incomplete (no {SUCCESS}). "
                + (f"It is written by {maker}: run that task for this date first." if maker
                   else "Run the upstream task for that date first.")
            )

    def producer(self, path: str) -> str | None:
        """The task that writes ``path`` (by its area and table), for error messages; None if unknown."""
        if path.startswith(self.raw_root + "/"):
            return "simulate_logs (or your export of the raw tables)"
        if not path.startswith(self.root + "/"):
            return None
        area, _, rest = path[len(self.root) + 1:].partition("/")
        table = rest.split("/", 1)[0]
        by_area = {"truth": "simulate_logs", "validated": "validate_raw", "quarantine": "validate_raw",
                   "features": "extract_features", "teachers": "teachers_generate", "rewards": "reward_select",
                   "serving": "publish", "reports": table}
        if area in by_area:
            return by_area[area]
        variant = table
        if area == "models":
            fixed = {"reasoner": "bootstrap_reasoner", "two_tower": "train_baseline", "qe_rec": "train_qe_rec"}
            if table in fixed:
                return fixed[table]
            variant = next((table[len(p):] for p in ("reasoner_", "qe_rec_") if table.startswith(p)), None)
        elif area != "queries":
            return None
        by_variant = {"base": "encode_queries", "sft": "rg_sft", "dpo": "rg_dpo", "cl": "rg_cl", "calibrated": "calibrate"}
        return by_variant.get(variant) or ("calibrate" if variant and variant.startswith("cal") else None)

    # ---- atomic writes -----------------------------------------------------------------------
    @contextmanager
    def write_partition(self, path: str, meta: dict | None = None) -> Iterator[str]:
        """Yield a temp folder to fill; on success it replaces ``path`` and gets ``_SUCCESS``.

        On an exception the temp folder is removed and ``path`` is left as it was.
        """
        fs = self.fs_for(path)
        parent, name = path.rsplit("/", 1)
        tmp = f"{parent}/._tmp-{name}-{uuid.uuid4().hex[:8]}"
        fs.makedirs(tmp, exist_ok=True)
        try:
            yield tmp
            with fs.open(f"{tmp}/{SUCCESS}", "w") as f:
                f.write(json.dumps(meta or {}, sort_keys=True))
        except BaseException:
            fs.rm(tmp, recursive=True)
            raise
        self._swap_in(fs, tmp, path)

    @staticmethod
    def _swap_in(fs, tmp: str, path: str) -> None:
        # Move the old partition aside first so the rename of the new one is a single step;
        # a reader sees either the old complete partition or the new one (on a local FS).
        old = None
        if fs.exists(path):
            old = f"{path.rsplit('/', 1)[0]}/._old-{path.rsplit('/', 1)[1]}-{uuid.uuid4().hex[:8]}"
            fs.mv(path, old, recursive=True)
        fs.mv(tmp, path, recursive=True)
        if old:
            fs.rm(old, recursive=True)

    def write_table(self, path: str, table, meta: dict | None = None) -> int:
        """Write one pyarrow Table as ``path/part-00000.parquet``, atomically."""
        import pyarrow.parquet as pq

        meta = {"rows": table.num_rows, **(meta or {})}
        with self.write_partition(path, meta) as tmp:
            with self.fs_for(tmp).open(f"{tmp}/part-00000.parquet", "wb") as f:
                pq.write_table(table, f, compression="zstd")
        return table.num_rows

    def write_json(self, path: str, obj) -> None:
        fs = self.fs_for(path)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with fs.open(tmp, "w") as f:
            f.write(json.dumps(obj, indent=2, sort_keys=True, default=str))
        fs.mv(tmp, path)

    # ---- reads -------------------------------------------------------------------------------
    def read_partition(self, path: str, what: str, columns: list[str] | None = None):
        """Read a complete partition as a pyarrow Table (all its Parquet files)."""
        import pyarrow.parquet as pq

        self.require(path, what)
        fs = self.fs_for(path)
        files = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".parquet"))
        if not files:
            raise MissingPartition(f"{what}: partition {path} has a {SUCCESS} marker but no Parquet files")
        import pyarrow as pa

        return pa.concat_tables([pq.read_table(f, columns=columns, filesystem=fs) for f in files])

    def parquet_files(self, path: str) -> list[str]:
        fs = self.fs_for(path)
        return sorted(p for p in fs.ls(path, detail=False) if p.endswith(".parquet"))
