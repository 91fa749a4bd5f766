"""Teachers write candidate latent queries for every chatbot session of the training days.

For each day of ``teachers.days`` (``train`` = windows()["train"] of --ds, or ``train+valid``)
reads ``features/sessions/dt=<day>/`` (complete partitions only), runs every teacher of
``teachers.specs`` (see rgalign_core/teachers.py: OpenAI-compatible endpoints, local HF models,
the current reasoner, rules, KB retrieval) for ``n_per_teacher`` candidates per session, drops
candidates repeated across teachers (the first teacher in the list keeps its own) and writes

    teachers/candidates/dt=<day>/   session_id, teacher_id, candidate_idx, latent_query

atomically, one partition per day. ``builtin:reasoner`` is the reasoner of this --ds
(``models/reasoner/ds=<ds>/``, or ``reasoner.base_model`` when that is a checkpoint dir); when
there is none yet the teacher is skipped with a warning.
``builtin:retrieval`` searches the validated ``kb_intents`` snapshot of the session's day.
Teachers never read the simulator's truth/ nor clicks. A day whose output was made from the same
inputs and teacher settings is skipped (--force redoes it).

    python -m jobs.teachers_generate --ds 2026-11-21
    python -m jobs.teachers_generate --ds 2026-11-21 --set 'teachers.specs=[builtin:rules,builtin:retrieval]'
    OPENAI_API_KEY=... python -m jobs.teachers_generate --ds 2026-11-21 \\
        --set 'teachers.specs=[builtin:rules,"openai:http://gpu-box:8000/v1#Qwen/Qwen2.5-7B-Instruct"]'
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import time
from pathlib import Path

from rgalign_core import stage
from rgalign_core.config import fingerprint

log = logging.getLogger("rgalign.teachers_generate")
VERSION = 1  # bump when the teachers' output meaning changes, so cached outputs are recomputed
DAY_SETS = ("train", "valid")
CANDIDATE_COLUMNS = ("session_id", "teacher_id", "candidate_idx", "latent_query")


def candidates_schema():
    import pyarrow as pa

    return pa.schema([("session_id", pa.int64()), ("teacher_id", pa.string()), ("candidate_idx", pa.int16()),
                      ("latent_query", pa.string())])


def teacher_days(ctx: stage.Context) -> list[dt.date]:
    """``teachers.days``: 'train', 'valid' or 'train+valid' -> the days of those windows."""
    spec = str(ctx.cfg["teachers"].get("days") or "train")
    names = [p.strip() for p in spec.split("+") if p.strip()]
    bad = [p for p in names if p not in DAY_SETS]
    if bad or not names:
        raise stage.StageError(f"teachers.days={spec!r}: use 'train', 'valid' or 'train+valid' "
                               "(test days stay unseen by training stages)")
    w = ctx.windows()
    return sorted({d for p in names for d in w[p]})


def metric_key(teacher_id: str) -> str:
    """MLflow metric names allow letters, digits, _ - . / and spaces."""
    return re.sub(r"[^\w.\-/]+", "_", teacher_id)


def model_fingerprint(lake, path: str) -> str:
    """The bootstrapped model's marker fingerprint, or a checkpoint's file names, sizes and times."""
    if lake.is_complete(path):
        return str(lake.marker(path).get("fingerprint") or lake.marker(path))
    files = sorted(Path(path).glob("*"))
    return fingerprint([path] + [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files if f.is_file()])


def resolve_specs(ctx: stage.Context, specs: list[str]) -> tuple[list[str], str | None, list[str]]:
    """(specs to run, the reasoner's model dir if used, specs skipped)."""
    run, skipped = [], []
    model, looked = (None, "")
    if "builtin:reasoner" in specs:
        from rgalign_core.reasoner import reasoner_dir, resolve_reasoner

        model = resolve_reasoner(ctx.lake, ctx.ds, ctx.cfg)
        looked = reasoner_dir(ctx.lake, ctx.ds)
    for spec in specs:
        if spec == "builtin:reasoner" and model is None:
            log.warning("builtin:reasoner skipped: no reasoner model at %s (run bootstrap_reasoner for ds=%s first)",
                        looked, ctx.ds)
            skipped.append(spec)
            continue
        run.append(spec)
    return run, (model if "builtin:reasoner" in run else None), skipped


def settings_fingerprint(tcfg: dict, specs: list[str]) -> dict:
    """What changes the candidates (not concurrency, timeouts or retries). No secrets in here."""
    o = tcfg.get("openai") or {}
    return {
        "version": VERSION, "specs": specs, "n": int(tcfg["n_per_teacher"]), "seed": tcfg.get("seed"),
        "batch_size": tcfg.get("batch_size"), "prompt": tcfg.get("prompt"), "max_query_chars": tcfg.get("max_query_chars"),
        "openai": {k: o.get(k) for k in ("temperature", "max_tokens", "use_n", "extra_body")} if any(
            s.startswith("openai:") for s in specs) else None,
        "hf": tcfg.get("hf") if any(s.startswith(("hf:", "builtin:reasoner")) for s in specs) else None,
        "retrieval": tcfg.get("retrieval") if "builtin:retrieval" in specs else None,
    }


def kb_reader(lake):
    """day -> that day's validated kb_intents rows (cached): each session sees the KB of its day."""
    cache: dict[dt.date, list[dict]] = {}

    def kb_for_day(day: dt.date) -> list[dict]:
        if day not in cache:
            cache[day] = lake.read_partition(lake.partition("validated", "kb_intents", day), "validated.kb_intents",
                                             columns=["intent_id", "title", "answer", "category", "active"]).to_pylist()
        return cache[day]

    return kb_for_day


def read_sessions(lake, days) -> dict[dt.date, list[dict]]:
    """features/sessions rows by day, each with its ``dt`` (the partition's day)."""
    out = {}
    for d in days:
        rows = lake.read_partition(lake.partition("features", "sessions", d), "features.sessions").to_pylist()
        for r in rows:
            r["dt"] = d
        out[d] = rows
    return out


def run(ctx: stage.Context) -> dict:
    import pyarrow as pa
    from tqdm import tqdm

    from rgalign_core import teachers as T

    tcfg, lake = T.settings_from_config(ctx.cfg), ctx.lake
    n = int(tcfg["n_per_teacher"])
    batch_size = max(1, int(tcfg.get("batch_size") or 64))
    days = teacher_days(ctx)
    specs, reasoner_dir, skipped = resolve_specs(ctx, [str(s) for s in tcfg["specs"]])
    for spec in specs:
        T.parse_spec(spec)  # a typo fails before any work
    if not specs:
        raise stage.StageError(f"no teacher to run: teachers.specs={tcfg['specs']} (skipped: {skipped})")
    use_kb = "builtin:retrieval" in specs

    session_paths = {d: lake.partition("features", "sessions", d) for d in days}
    kb_paths = {d: lake.partition("validated", "kb_intents", d) for d in days} if use_kb else {}
    for d in days:  # every input must be complete before any teacher runs
        lake.require(session_paths[d], "teachers_generate input features.sessions")
        if use_kb:
            lake.require(kb_paths[d], "teachers_generate input validated.kb_intents")

    settings = settings_fingerprint(tcfg, specs)
    if reasoner_dir:
        settings["reasoner_model"] = model_fingerprint(lake, reasoner_dir)
    outputs = {d: lake.partition("teachers", "candidates", d) for d in days}
    fps = {d: fingerprint({"settings": settings, "sessions": lake.marker(session_paths[d]).get("fingerprint"),
                           "kb": lake.marker(kb_paths[d]).get("fingerprint") if use_kb else None}) for d in days}
    todo = [d for d in days if not ctx.up_to_date([outputs[d]], fps[d])]
    if not todo:
        log.info("teacher candidates for %s..%s are up to date; use --force to redo", days[0], days[-1])
        return {"skipped": 1}
    if len(todo) < len(days):
        log.info("%d of %d days are up to date; generating %s", len(days) - len(todo), len(days), [str(d) for d in todo])

    ctx.tracker.dataset(lake, [session_paths[d] for d in todo], "features.sessions", context="input")
    if use_kb:
        ctx.tracker.dataset(lake, [kb_paths[d] for d in todo], "validated.kb_intents", context="input")

    kb_for_day = kb_reader(lake)
    sessions_by_day = read_sessions(lake, todo)
    n_sessions = sum(len(r) for r in sessions_by_day.values())
    samples = pick_samples(sessions_by_day, int(tcfg.get("samples_in_report") or 10))

    teachers = T.build_teachers(specs, tcfg, kb=kb_for_day if use_kb else None, reasoner_dir=reasoner_dir)
    ids = [t.teacher_id for t in teachers]
    ctx.tracker.params({"teachers.resolved": ",".join(ids), "teachers.skipped": ",".join(skipped) or "none",
                        "teachers.days_resolved": f"{todo[0]}..{todo[-1]} ({len(todo)} days)"})
    log.info("teachers %s (skipped %s), %d candidates each, on %d sessions of %d day(s)",
             ids, skipped or "none", n, n_sessions, len(todo))

    seconds = {t: 0.0 for t in ids}
    stats = {t: {"candidates": 0, "sessions": 0, "words": 0} for t in ids}
    removed_total, rows_written = 0, 0
    sample_rows: dict[int, dict[str, list[str]]] = {}
    n_batches = sum((len(r) + batch_size - 1) // batch_size for r in sessions_by_day.values())
    try:
        with tqdm(total=n_batches, desc="teacher batches", unit="batch") as bar:
            for d in todo:
                sessions = sessions_by_day[d]
                kept: list[tuple[int, str, int, str]] = []
                for start in range(0, len(sessions), batch_size):
                    batch = sessions[start:start + batch_size]
                    per_teacher = []
                    for t in teachers:
                        t0 = time.time()
                        cands = t.generate(batch, n)
                        seconds[t.teacher_id] += time.time() - t0
                        if len(cands) != len(batch):
                            raise stage.StageError(f"teacher {t.teacher_id} returned {len(cands)} lists for "
                                                   f"{len(batch)} sessions")
                        per_teacher.append((t.teacher_id, [list(c)[:n] for c in cands]))
                    rows, removed = T.dedupe([s["session_id"] for s in batch], per_teacher)
                    removed_total += removed
                    kept += rows
                    bar.update(1)
                covered: dict[str, set] = {t: set() for t in ids}
                for sid, tid, _, q in kept:
                    stats[tid]["candidates"] += 1
                    stats[tid]["words"] += len(q.split())
                    covered[tid].add(sid)
                    if sid in samples:
                        sample_rows.setdefault(sid, {}).setdefault(tid, []).append(q)
                for t in ids:
                    stats[t]["sessions"] += len(covered[t])
                kept.sort(key=lambda r: (r[0], r[1], r[2]))
                table = pa.Table.from_pylist([dict(zip(CANDIDATE_COLUMNS, r)) for r in kept], schema=candidates_schema())
                rows_written += lake.write_table(outputs[d], table, {"fingerprint": fps[d], "teachers": ids})
    finally:
        for t in teachers:
            t.close()

    ctx.tracker.dataset(lake, [outputs[d] for d in todo], "teachers.candidates", context="output")
    ctx.tracker.text(samples_markdown(samples, sample_rows, ids, skipped, n), "teacher_samples.md")
    metrics: dict = {"sessions": n_sessions, "candidates": rows_written, "duplicates_removed": removed_total,
                     "teachers": len(ids), "teachers_skipped": len(skipped), "days": len(todo),
                     "days_up_to_date": len(days) - len(todo)}
    total_words = 0
    for t in ids:
        k, s = metric_key(t), stats[t]
        total_words += s["words"]
        metrics[f"candidates.{k}"] = s["candidates"]
        metrics[f"sessions_covered.{k}"] = s["sessions"]
        metrics[f"coverage.{k}"] = s["sessions"] / max(n_sessions, 1)
        metrics[f"query_words_mean.{k}"] = s["words"] / max(s["candidates"], 1)
        metrics[f"seconds.{k}"] = seconds[t]
    metrics["query_words_mean"] = total_words / max(rows_written, 1)
    log.info("%d candidates for %d sessions (%d duplicates removed); per teacher: %s", rows_written, n_sessions,
             removed_total, {t: (stats[t]["candidates"], round(seconds[t], 1)) for t in ids})
    return {**metrics, "teacher_ids": ids, "skipped_specs": skipped, "days_generated": [d.isoformat() for d in todo]}


def pick_samples(sessions_by_day: dict[dt.date, list[dict]], k: int) -> dict[int, dict]:
    """About k sessions spread evenly over all days, for the reviewer's report: session_id -> row."""
    flat = [s for d in sorted(sessions_by_day) for s in sessions_by_day[d]]
    if not flat or k <= 0:
        return {}
    step = max(len(flat) / k, 1.0)
    picked = {int(i * step) for i in range(min(k, len(flat)))}
    return {flat[i]["session_id"]: flat[i] for i in sorted(picked)}


def samples_markdown(samples: dict[int, dict], cands: dict[int, dict[str, list[str]]], ids: list[str],
                     skipped: list[str], n: int) -> str:
    lines = ["# Teacher candidates: samples", "",
             f"Teachers (priority order for de-duplication): {', '.join(f'`{t}`' for t in ids)}; "
             f"{n} candidate(s) each before de-duplication."]
    if skipped:
        lines.append(f"Skipped: {', '.join(f'`{s}`' for s in skipped)}.")
    lines.append("")
    for sid, s in samples.items():
        lines += [f"## session {sid} ({s['dt']}, entry point {s.get('entry_point')})", "", f"> {s['prompt']}", ""]
        for t in ids:
            got = cands.get(sid, {}).get(t, [])
            lines.append(f"- **{t}**: " + (" · ".join(f"“{q}”" for q in got) if got else "_(none)_"))
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    return stage.main("teachers_generate", run, __doc__, argv)


if __name__ == "__main__":
    main()
