"""Validate the raw tables against the data contract: valid rows to validated/, bad rows to quarantine/.

For every day whose raw logs the pipeline needs (windows()["raw"], ending at --ds) and every
contract table, reads ``<raw_root>/<table>/dt=<day>/*.parquet``, conforms it to the contract's
schema and checks every row (rgalign_core.validate). Rows that pass go to
``validated/<table>/dt=<day>/``; rows that fail go, with a ``reason`` column, to
``quarantine/<table>/dt=<day>/`` (written even when empty, so the partition is marked done).
A table-level problem (missing partition or column, wrong type, empty or unreadable partition,
too many bad rows) stops the task and writes nothing for that partition. A (table, day) whose
raw files and validator are unchanged since its outputs were written is skipped.

    python -m jobs.validate_raw --ds 2026-11-21
    python -m jobs.validate_raw --ds 2026-11-21 --set validate.max_bad_row_fraction=0.2 --force
    RGALIGN_RAW_ROOT=s3://company-dwh/chatbot python -m jobs.validate_raw --ds 2026-11-21
"""
from __future__ import annotations

import datetime as dt
import logging

from rgalign_core import stage
from rgalign_core.config import fingerprint

log = logging.getLogger("rgalign.validate_raw")

# Snapshots first; intent_impressions last, as it is checked against the day's valid
# chatbot_sessions and kb_intents.
ORDER = ("kb_intents", "users", "orders", "behaviour_events", "chatbot_sessions", "intent_impressions")


def partition_fingerprint(lake, table: str, day: dt.date) -> str:
    """Validator version + contract + the raw files (names and sizes) the outputs were made from.

    intent_impressions also depends on the raw files of the tables it references, so a changed
    chatbot_sessions or kb_intents partition revalidates that day's impressions too.
    """
    from rgalign_core import contract, validate

    spec = contract.TABLES[table]
    deps = {r.table: validate.raw_listing(lake, r.table, day) for r in validate.REFERENCES.get(table, ())}
    return fingerprint({
        "validator": validate.VERSION,
        "contract": validate.contract_fingerprint(spec),
        "raw_files": validate.raw_listing(lake, table, day),
        "references": deps,
    })


def known_keys(lake, table: str, day: dt.date) -> dict:
    """The valid key values of the tables ``table`` references, from that day's validated partitions."""
    from rgalign_core import contract, validate

    known = {}
    for ref in validate.REFERENCES.get(table, ()):
        (key,) = contract.TABLES[ref.table].keys
        path = lake.partition("validated", ref.table, day)
        known[ref.table] = lake.read_partition(path, f"validated {ref.table}", columns=[key])[key]
    return known


def validate_partition(ctx: stage.Context, table: str, day: dt.date, fp: str) -> tuple[int, dict[str, int]]:
    """Validate one raw partition and write its outputs. Returns (valid rows, {reason: rows})."""
    from rgalign_core import contract, validate

    lake = ctx.lake
    spec = contract.TABLES[table]
    raw_path = lake.partition("raw", table, day)
    tbl = validate.conform(validate.read_raw(lake, spec, day), spec, raw_path)
    good, bad = validate.check_rows(tbl, spec, day, known_keys(lake, table, day))
    counts = validate.reason_counts(bad)
    vcfg = ctx.cfg.get("validate") or {}
    validate.check_bad_fraction(
        spec, raw_path, tbl.num_rows, bad.num_rows,
        vcfg.get("max_bad_row_fraction"), int(vcfg.get("min_bad_rows_to_fail") or 0),
    )
    lake.write_table(lake.partition("validated", table, day), good, meta={"fingerprint": fp})
    lake.write_table(lake.partition("quarantine", table, day), bad, meta={"fingerprint": fp, "reasons": counts})
    return good.num_rows, counts


def run(ctx: stage.Context) -> dict:
    from tqdm import tqdm

    lake = ctx.lake
    days = ctx.windows()["raw"]
    log.info("validating %d tables x %d days (%s..%s) from %s", len(ORDER), len(days), days[0], days[-1], lake.raw_root)
    valid_rows = {t: 0 for t in ORDER}
    quarantined: dict[str, dict[str, int]] = {t: {} for t in ORDER}
    per_day: dict[str, dict[str, dict]] = {t: {} for t in ORDER}
    done = skipped = 0
    with tqdm(total=len(ORDER) * len(days), desc="validate partitions", unit="part") as bar:
        for day in days:
            for table in ORDER:
                fp = partition_fingerprint(lake, table, day)
                outs = [lake.partition("validated", table, day), lake.partition("quarantine", table, day)]
                if ctx.up_to_date(outs, fp):
                    good = int(lake.marker(outs[0]).get("rows", 0))
                    counts = {k: int(v) for k, v in lake.marker(outs[1]).get("reasons", {}).items()}
                    skipped += 1
                else:
                    good, counts = validate_partition(ctx, table, day, fp)
                    done += 1
                if counts:
                    log.debug("%s dt=%s: %d valid, quarantined %s", table, day, good, counts)
                valid_rows[table] += good
                for reason, n in counts.items():
                    quarantined[table][reason] = quarantined[table].get(reason, 0) + n
                per_day[table][day.isoformat()] = {"valid": good, "quarantined": counts}
                bar.update(1)

    for table in ORDER:
        bad = sum(quarantined[table].values())
        log.info("%-18s %9d valid rows, %6d quarantined %s", table, valid_rows[table], bad, quarantined[table] or "")
    if skipped:
        log.info("%d of %d partitions were up to date and skipped (use --force to redo)", skipped, skipped + done)

    flat = {f"valid_rows.{t}": n for t, n in valid_rows.items()}
    flat.update({f"quarantined.{t}.{r}": n for t, reasons in quarantined.items() for r, n in reasons.items()})
    ctx.tracker.metrics(flat)
    totals = {
        "valid_rows_total": sum(valid_rows.values()),
        "quarantined_total": sum(n for reasons in quarantined.values() for n in reasons.values()),
        "partitions_validated": done,
        "partitions_skipped": skipped,
    }
    summary = {
        "ds": ctx.ds_str, "days": [d.isoformat() for d in days], "raw_root": lake.raw_root, **totals,
        "valid_rows": valid_rows, "quarantined": quarantined, "by_day": per_day,
    }
    ctx.tracker.dict(summary, "validation_summary.json")
    # Nested dicts go to the stage's report.json only; the flat metrics were logged above.
    return {**totals, "valid_rows": valid_rows, "quarantined": quarantined}


def main(argv=None):
    return stage.main("validate_raw", run, __doc__, argv)


if __name__ == "__main__":
    main()
