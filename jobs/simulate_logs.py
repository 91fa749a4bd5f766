"""Simulate a company's chatbot logs into the lake's raw area (the default data source).

Writes every raw table of the data contract for the days the pipeline needs, ending at --ds,
plus the hidden truth (latent need and relevance per session) under truth/, which only tests
and the oracle evaluation read. Same seed and date -> the same bytes.

    python -m jobs.simulate_logs --ds 2026-11-21
    python -m jobs.simulate_logs --ds 2026-11-21 --set sim.scale=medium --set sim.seed=3
"""
from __future__ import annotations

import datetime as dt
import logging

from rgalign_core import stage
from rgalign_core.config import fingerprint

log = logging.getLogger("rgalign.simulate_logs")


def sim_params(ctx: stage.Context):
    from rgalign_core.simulator import SimParams

    sim = ctx.cfg["sim"]
    scale = sim.get("scale") or "small"
    if scale not in ctx.cfg["scales"]:
        raise stage.StageError(f"sim.scale={scale!r} is not one of {sorted(ctx.cfg['scales'])}")
    users = sim.get("users") or ctx.cfg["scales"][scale]["users"]
    days = sim.get("days") or len(ctx.windows()["raw"])
    origin = dt.date.fromisoformat(str(sim["origin"])) if sim.get("origin") else None
    return SimParams(
        users=int(users), seed=int(sim["seed"]), end=ctx.ds, days=int(days), warmup_days=int(sim["warmup_days"]),
        origin=origin, intents_shown=int(sim["intents_shown"]), corrupt_rate=float(sim.get("corrupt_rate", 0.0)),
    )


def run(ctx: stage.Context) -> dict:
    import pyarrow.compute as pc
    from tqdm import tqdm

    from rgalign_core.simulator import simulate

    params = sim_params(ctx)
    fp = fingerprint({"sim": str(params), "version": 1})
    lake = ctx.lake
    days = [params.first_day + dt.timedelta(days=i) for i in range(params.days)]
    from rgalign_core.contract import TABLES, TRUTH_TABLES

    outputs = [lake.partition("raw", t, d) for t in TABLES for d in days]
    outputs += [lake.partition("truth", t, d) for t in TRUTH_TABLES for d in days]
    ctx.tracker.params({"sim.users_effective": params.users, "sim.days_effective": params.days})
    if ctx.up_to_date(outputs, fp):
        log.info("raw partitions for %s..%s are up to date (fingerprint %s); use --force to redo", days[0], days[-1], fp)
        return {"skipped": 1}

    raw, truth, report = simulate(params)
    log.info("simulated %s", {k: v for k, v in report.items() if k != "injected_bad_rows"})
    rows = {}
    with tqdm(total=len(outputs), desc="write partitions", unit="part") as bar:
        for area, tables in (("raw", raw), ("truth", truth)):
            for name, tbl in tables.items():
                for d in days:
                    part = tbl.filter(pc.equal(tbl["dt"], d)).drop_columns(["dt"])
                    lake.write_table(lake.partition(area, name, d), part, {"fingerprint": fp, "source": "simulator"})
                    rows[f"{area}.{name}"] = rows.get(f"{area}.{name}", 0) + part.num_rows
                    bar.update(1)
    ctx.tracker.dict(report, "simulator_report.json")
    metrics = {f"rows.{k}": v for k, v in rows.items()}
    metrics.update({k: v for k, v in report.items() if isinstance(v, int)})
    metrics["injected_bad_rows"] = report["injected_bad_rows"]
    return metrics


def main(argv=None):
    return stage.main("simulate_logs", run, __doc__, argv)


if __name__ == "__main__":
    main()
