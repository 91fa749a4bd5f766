"""Checks of the raw tables against the data contract (``rgalign_core.contract``), in pyarrow.

Two kinds of problem, handled differently (see ``docs/data_contract.md``):

* **Bad tables** stop the task: ``read_raw`` and ``conform`` raise ``BadTable`` when a partition
  is missing, has no (readable) Parquet file, lacks a contract column, has a column of a type
  that cannot be converted without loss, or has no rows. Nothing is written for that partition.
* **Bad rows** are quarantined: ``check_rows`` splits a conformed table into the rows that pass
  and the rows that fail, the latter with a ``reason``. The checks run in the order below; a row
  gets the reason of the first check it fails, and each check only looks at the rows that passed
  the ones before it (so e.g. the first *otherwise valid* occurrence of a key is the one kept):

  1. ``null_<col>``            a key or required column is null (keys first, then required)
  2. ``unknown_<col>``         an enum column holds a value outside the contract's enum (null is
                               allowed unless the column is required)
  3. ``duplicate_key``         a later row with the same key as an earlier row of the partition
  4. ``outside_partition_day`` the time column is not inside ``[day 00:00, day+1 00:00)`` UTC
  5. ``unknown_session``       (intent_impressions) session_id is not a valid session of the day
  6. ``unknown_intent``        (intent_impressions) intent_id is not in the day's valid kb_intents

Everything is vectorised (pyarrow.compute / numpy over whole columns): a partition of tens of
millions of rows costs a few passes over its key columns, no Python loop over rows.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rgalign_core import contract
from rgalign_core.lake import Lake, parse_ds
from rgalign_core.stage import StageError

log = logging.getLogger("rgalign.validate")

# Bump when the checks change, so every validated partition is recomputed.
VERSION = 1

REASON_COLUMN = "reason"
DUPLICATE_KEY = "duplicate_key"
OUTSIDE_DAY = "outside_partition_day"

# Time zones whose instants are UTC wall time: converting to naive UTC is the identity.
UTC_ZONES = {"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Z", "+00:00", "00:00", "GMT", "Etc/GMT", "Zulu", "Etc/Zulu"}


class BadTable(StageError):
    """A raw partition that cannot be validated at all: the task stops, nothing is written."""


@dataclass(frozen=True)
class Reference:
    """A column whose values must exist among the valid keys of another table of the same day."""

    column: str
    table: str  # referenced table; its valid key values are passed to check_rows in ``known``
    reason: str


REFERENCES: dict[str, tuple[Reference, ...]] = {
    "intent_impressions": (
        Reference("session_id", "chatbot_sessions", "unknown_session"),
        Reference("intent_id", "kb_intents", "unknown_intent"),
    ),
}


def reasons(spec: contract.Table) -> list[str]:
    """Every reason ``check_rows`` can give for this table, in check order."""
    out = [f"null_{c}" for c in _not_null_columns(spec)]
    out += [f"unknown_{c}" for c in spec.enums]
    out.append(DUPLICATE_KEY)
    if spec.time_column:
        out.append(OUTSIDE_DAY)
    out += [r.reason for r in REFERENCES.get(spec.name, ())]
    return out


def contract_fingerprint(spec: contract.Table) -> dict:
    """What of the contract the validation of ``spec`` depends on (for output fingerprints)."""
    return {
        "schema": str(spec.schema),
        "keys": list(spec.keys),
        "required": list(spec.required),
        "enums": {k: list(v) for k, v in spec.enums.items()},
        "time_column": spec.time_column,
        "references": [(r.column, r.table, r.reason) for r in REFERENCES.get(spec.name, ())],
    }


# ---- reading a raw partition ---------------------------------------------------------------------


def _spec(table: str | contract.Table) -> contract.Table:
    if isinstance(table, contract.Table):
        return table
    try:
        return contract.TABLES[table]
    except KeyError:
        raise ValueError(f"unknown raw table {table!r}; the contract has {sorted(contract.TABLES)}") from None


def raw_files(lake: Lake, table: str | contract.Table, day: dt.date | str) -> list[tuple[str, int]]:
    """The Parquet files of a raw partition as ``(path, size)``, sorted by path.

    Raw partitions may come from a company's own warehouse without our ``_SUCCESS`` marker, so a
    folder that exists and holds ``*.parquet`` files counts as present (files whose name starts
    with ``_`` or ``.`` are ignored, as Spark and Hive do).
    """
    spec = _spec(table)
    path = lake.partition("raw", spec.name, day)
    fs = lake.fs_for(path)
    if not fs.isdir(path):
        raise BadTable(f"{spec.name}: raw partition {path} does not exist (the table has no data for {parse_ds(day)})")
    infos = fs.ls(path, detail=True)
    files = sorted(
        (i["name"], int(i.get("size") or 0))
        for i in infos
        if i.get("type") != "directory"
        and i["name"].endswith(".parquet")
        and not PurePosixPath(i["name"]).name.startswith(("_", "."))
    )
    if not files:
        raise BadTable(f"{spec.name}: raw partition {path} has no Parquet (*.parquet) file")
    return files


def raw_listing(lake: Lake, table: str | contract.Table, day: dt.date | str) -> list[tuple[str, int]]:
    """File names (without folder) and sizes of a raw partition: what its fingerprint covers."""
    return [(PurePosixPath(p).name, size) for p, size in raw_files(lake, table, day)]


def read_raw(lake: Lake, table: str | contract.Table, day: dt.date | str) -> pa.Table:
    """Read every Parquet file of the raw partition ``lake.partition("raw", table, day)``.

    Raises ``BadTable`` (naming table and partition) when the folder is missing, holds no
    Parquet file, a file is not readable Parquet, or the files' schemas cannot be combined.
    The result is as stored; ``conform`` brings it to the contract's schema.
    """
    import pyarrow.parquet as pq

    spec = _spec(table)
    path = lake.partition("raw", spec.name, day)
    fs = lake.fs_for(path)
    tables = []
    for f, _ in raw_files(lake, spec, day):
        try:
            with fs.open(f, "rb") as fh:
                tables.append(pq.read_table(fh))
        except (pa.ArrowException, OSError, ValueError) as e:
            raise BadTable(f"{spec.name}: raw partition {path}: file {PurePosixPath(f).name} is not readable Parquet ({e})") from e
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowException, TypeError) as e:
        first = tables[0].schema
        diffs = [
            f"column {fld.name!r}: {first.field(fld.name).type} vs {fld.type}"
            for t in tables[1:] for fld in t.schema
            if fld.name in first.names and first.field(fld.name).type != fld.type
        ]
        raise BadTable(
            f"{spec.name}: raw partition {path}: its Parquet files have incompatible schemas "
            f"({'; '.join(sorted(set(diffs))) or e})"
        ) from e


# ---- table-level checks ---------------------------------------------------------------------------


def _is_stringish(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _coerce(col: pa.ChunkedArray, want: pa.DataType) -> tuple[pa.ChunkedArray | None, str]:
    """``col`` converted to ``want`` if that is lossless/harmless, else ``(None, why)``."""
    got = col.type
    if got == want:
        return col, ""
    if pa.types.is_null(got):  # an all-null column (e.g. written by pandas): nulls of any type
        return pa.chunked_array([pa.nulls(len(col), want)]), ""
    safe = True
    if pa.types.is_integer(want):
        ok = pa.types.is_integer(got)
    elif pa.types.is_floating(want):
        ok = pa.types.is_floating(got) or pa.types.is_integer(got)
    elif pa.types.is_string(want):
        ok = _is_stringish(got) or (pa.types.is_dictionary(got) and _is_stringish(got.value_type))
    elif pa.types.is_timestamp(want):
        ok = pa.types.is_timestamp(got)
        if ok and got.tz is not None and got.tz not in UTC_ZONES:
            return None, (
                f"timestamps with time zone {got.tz!r}; expected naive UTC (or tz=UTC) {want}: "
                "partitions are UTC days, so convert the feed to UTC"
            )
        # Sub-microsecond digits (ns from pandas / Spark INT96) are dropped: harmless.
        safe = not (ok and got.unit == "ns")
    elif pa.types.is_date(want):
        ok = pa.types.is_date(got)
    else:
        ok = False
    if not ok:
        return None, f"type {got}, expected {want}"
    try:
        return col.cast(want, safe=safe), ""
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        return None, f"type {got} whose values do not convert to {want} without loss ({e})"


def conform(table: pa.Table, spec: contract.Table, partition: str) -> pa.Table:
    """The raw ``table`` with exactly the contract's columns, in contract order and types.

    Extra columns are dropped (with a warning). Raises ``BadTable`` naming the table, the
    partition path and the column for a missing column or a type that cannot be converted without
    loss (allowed: integer widths that fit, large/dictionary strings, timestamps of any unit or
    tz=UTC, date64, float widths, integers to float), and for a partition with no rows.
    """
    where = f"{spec.name}: raw partition {partition}"
    names = table.column_names
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BadTable(f"{where}: column {dupes[0]!r} appears more than once")
    missing = [f.name for f in spec.schema if f.name not in names]
    if missing:
        raise BadTable(f"{where}: column {missing[0]!r} is missing (missing columns: {missing}; has {names})")
    extra = [n for n in names if n not in spec.schema.names]
    if extra:
        log.warning("%s: dropping columns not in the contract: %s", where, extra)
    cols = []
    for field in spec.schema:
        col, why = _coerce(table.column(field.name), field.type)
        if col is None:
            raise BadTable(f"{where}: column {field.name!r} has {why}")
        cols.append(col)
    if table.num_rows == 0:
        raise BadTable(f"{where}: the partition is empty (0 rows)")
    return pa.Table.from_arrays(cols, schema=spec.schema)


def check_bad_fraction(spec: contract.Table, partition: str, rows: int, bad: int,
                       max_fraction: float | None, min_bad_rows: int = 0) -> None:
    """Stop (``BadTable``) when too many rows of a partition are bad: a broken feed, not noise.

    Trips when ``bad > max_fraction * rows`` and ``bad >= min_bad_rows`` (the floor keeps a tiny
    partition, where one bad row is already a large share, from failing the run).
    """
    if max_fraction is None or rows == 0:
        return
    if bad > max_fraction * rows and bad >= min_bad_rows:
        raise BadTable(
            f"{spec.name}: raw partition {partition}: {bad} of {rows} rows ({bad / rows:.1%}) fail validation, "
            f"more than validate.max_bad_row_fraction={max_fraction}; the feed looks broken "
            "(see the reasons logged above; raise the limit with --set validate.max_bad_row_fraction=... if this is expected)"
        )


# ---- row-level checks -----------------------------------------------------------------------------


def _not_null_columns(spec: contract.Table) -> list[str]:
    return list(dict.fromkeys([*spec.keys, *spec.required]))


def _mask(values) -> np.ndarray:
    """A boolean pyarrow result as a numpy bool array, null counted as False."""
    return np.asarray(pc.fill_null(values, False).to_numpy(zero_copy_only=False), dtype=bool)


def _value_set(values) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    elif not isinstance(values, pa.Array):
        values = pa.array(list(values))
    return pc.unique(values.drop_null())


def check_rows(table: pa.Table, spec: contract.Table, day: dt.date | str,
               known: dict | None = None) -> tuple[pa.Table, pa.Table]:
    """Split a conformed partition into ``(good, bad)``; ``bad`` has an extra ``reason`` column.

    ``known`` maps each table ``spec`` references (see ``REFERENCES``) to the valid key values of
    that table for the same day (a pyarrow Array / ChunkedArray or any sequence), e.g.
    ``{"chatbot_sessions": valid_sessions["session_id"], "kb_intents": valid_kb["intent_id"]}``.
    Good rows are returned unchanged and in their original order.
    """
    day = parse_ds(day)
    known = known or {}
    n = table.num_rows
    names: list[str] = []
    code = np.zeros(n, dtype=np.int16)  # 0 = good so far, k = names[k - 1]

    def fail(mask: np.ndarray, reason: str) -> None:
        names.append(reason)
        code[(code == 0) & mask] = len(names)

    for c in _not_null_columns(spec):
        fail(_mask(pc.is_null(table[c])), f"null_{c}")
    for c, allowed in spec.enums.items():
        col = table[c]
        bad = pc.and_(pc.is_valid(col), pc.invert(pc.is_in(col, value_set=pa.array(list(allowed), col.type))))
        fail(_mask(bad), f"unknown_{c}")

    # Duplicates among the rows still good: keep the first occurrence of each key.
    pending = code == 0
    first = np.zeros(n, dtype=bool)
    if pending.any():
        sub = table.select(list(spec.keys)).append_column("__row", pa.array(np.arange(n, dtype=np.int64)))
        sub = sub.filter(pa.array(pending))
        firsts = sub.group_by(list(spec.keys)).aggregate([("__row", "min")])["__row_min"]
        first[firsts.to_numpy()] = True
    fail(pending & ~first, DUPLICATE_KEY)

    if spec.time_column:
        t = table[spec.time_column]
        lo = pa.scalar(dt.datetime.combine(day, dt.time()), type=t.type)
        hi = pa.scalar(dt.datetime.combine(day + dt.timedelta(days=1), dt.time()), type=t.type)
        fail(_mask(pc.or_(pc.less(t, lo), pc.greater_equal(t, hi))), OUTSIDE_DAY)

    for ref in REFERENCES.get(spec.name, ()):
        if ref.table not in known:
            raise ValueError(f"check_rows({spec.name}) needs the valid {ref.table} keys in known[{ref.table!r}]")
        col = table[ref.column]
        values = _value_set(known[ref.table]).cast(col.type)
        bad = pc.and_(pc.is_valid(col), pc.invert(pc.is_in(col, value_set=values)))
        fail(_mask(bad), ref.reason)

    is_bad = code > 0
    good = table.filter(pa.array(~is_bad))
    bad_rows = table.filter(pa.array(is_bad))
    reason = pa.DictionaryArray.from_arrays(
        pa.array(code[is_bad].astype(np.int32) - 1), pa.array(names, pa.string())
    ).cast(pa.string())
    return good, bad_rows.append_column(pa.field(REASON_COLUMN, pa.string()), reason)


def reason_counts(bad: pa.Table) -> dict[str, int]:
    """``{reason: rows}`` of a quarantine table, sorted by reason."""
    if bad.num_rows == 0:
        return {}
    vc = pc.value_counts(bad[REASON_COLUMN])
    return dict(sorted(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist())))
