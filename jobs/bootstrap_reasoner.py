"""Build and train the built-in tiny reasoner LLM on the domain corpus, with DeepSpeed.

Only for ``reasoner.base_model: builtin:tiny`` (with a real checkpoint path there is nothing to
bootstrap and the task logs that and returns). The corpus: KB intents (title + answer) and, for
each training session, its verbalised prompt followed by the candidate latent queries of the
non-LLM teachers (rules over the discrete state, retrieval over the session's text), each followed
by the summary cue (``reasoner.summary_cue``), the session's most pressing pending states and the
KB categories its text is about (``state_summary``; every other document puts the categories
first), so the token the query embedding pools at learns to predict both. A byte-level
BPE tokenizer is trained on it, a small Qwen3 is built from ``reasoner.tiny``, and the shared
DeepSpeed loop (rgalign_core/ds_trainer.py) trains it as a causal LM, one document per row
(``train.rows: document``, length-bucketed, so a prompt and its query are always seen together)
or on packed blocks (``train.rows: packed``, which split most prompt + query documents across two
blocks: the model then learns the query without its prompt and writes the same one for everyone),
launched
by the ``deepspeed`` launcher on ``train.nproc`` processes. The result, safetensors + tokenizer +
config, is written atomically to ``models/reasoner/ds=<ds>/`` and logged to MLflow.

    python -m jobs.bootstrap_reasoner --ds 2026-11-21
    python -m jobs.bootstrap_reasoner --ds 2026-11-21 --set train.steps=50 --set train.nproc=2
    python -m jobs.bootstrap_reasoner --ds 2026-11-21 --set train.ds_config=conf/deepspeed/zero2.json
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from rgalign_core import stage
from rgalign_core.config import PROJECT_ROOT, fingerprint

log = logging.getLogger("rgalign.bootstrap_reasoner")
VERSION = 1


def require_reasoner(ctx: stage.Context) -> str:
    """The reasoner for this logical date, or a StageError that says what to run or set."""
    from rgalign_core.reasoner import reasoner_dir, resolve_reasoner

    path = resolve_reasoner(ctx.lake, ctx.ds, ctx.cfg)
    if path is None:
        base = ctx.cfg["reasoner"]["base_model"]
        if base == "builtin:tiny":
            raise stage.StageError(f"no reasoner at {reasoner_dir(ctx.lake, ctx.ds)}: run bootstrap_reasoner for {ctx.ds} first")
        raise stage.StageError(f"reasoner.base_model={base!r}: no config.json there; give a local Hugging Face checkpoint directory")
    return path


def state_summary(row: dict, k: int, topics: list[str] = (), topics_first: bool = False) -> str:
    """What the corpus writes after the summary cue: the session's ``k`` most pressing pending
    states, as the rules teacher ranks them (discrete features only), and the KB categories its
    text is about (``topics``, from the retrieval teacher), first or last. Never clicks or the truth."""
    from rgalign_core.teachers import pending_states

    states = pending_states(row)[:k]
    parts = list(topics) + states if topics_first else states + list(topics)
    return ", ".join(parts) or "nothing"


def summary_topics(cfg: dict, rows: list[dict], kb) -> list[list[str]]:
    """The KB categories each session's text is about, ``bootstrap.summary_topics`` of them (the
    retrieval teacher's ``topics``; ``kb`` as for the teacher); empty without a summary cue."""
    from rgalign_core import teachers

    k_topics = int(cfg["bootstrap"]["summary_topics"])
    if not (cfg["reasoner"]["summary_cue"] and k_topics):
        return [[] for _ in rows]
    retrieval = teachers.build("builtin:retrieval", cfg, kb=kb, seed=int(cfg["bootstrap"]["seed"]))
    try:
        return retrieval.topics(rows, k_topics)
    finally:
        retrieval.close()


def summary_text(cfg: dict, row: dict, topics: list[str], topics_first: bool) -> str:
    """What follows a latent query in training: the summary cue, then ``state_summary``; "" when
    ``reasoner.summary_cue`` is empty (the query's own last token is pooled)."""
    cue = cfg["reasoner"]["summary_cue"]
    return f"{cue} {state_summary(row, int(cfg['bootstrap']['summary_states']), topics, topics_first)}" if cue else ""


def build_corpus(ctx: stage.Context) -> tuple[list[str], dict, int]:
    """KB texts, and each training session's prompt followed by the non-LLM teachers' queries, each
    with the summary cue and the session's pending states and text topics after it."""
    from jobs.teachers_generate import kb_reader, read_sessions
    from rgalign_core import teachers
    from rgalign_core.reasoner import EOS, format_prompt

    cfg, lake = ctx.cfg, ctx.lake
    template = cfg["reasoner"]["template"]
    kb = lake.read_partition(lake.partition("validated", "kb_intents", ctx.ds), "validated.kb_intents").to_pylist()
    docs = [f"Question: {r['title']}\nAnswer: {r['answer']}{EOS}" for r in kb]
    rows = [r for day_rows in read_sessions(lake, ctx.windows()["train"]).values() for r in day_rows]
    kb_for_day = kb_reader(lake)  # one cache, so each day's KB is read once for all teachers
    topics = summary_topics(cfg, rows, kb_for_day)
    counts = {"corpus_sessions_with_topics": sum(bool(t) for t in topics)}
    for spec in cfg["bootstrap"]["corpus_teachers"]:
        teacher = teachers.build(spec, cfg, kb=kb_for_day, seed=int(cfg["bootstrap"]["seed"]))
        n = 0
        for row, row_topics, queries in zip(rows, topics, teacher.generate(rows, int(cfg["bootstrap"]["queries_per_teacher"]))):
            for j, q in enumerate(queries):
                # The pooled token predicts the summary's first word, so it encodes what can come
                # first: alternating which source leads makes it carry both the states and the topics.
                summary = summary_text(cfg, row, row_topics, topics_first=j % 2 == 1)
                docs.append(f"{format_prompt(template, row['prompt'])} {q}{summary}{EOS}")
                n += 1
        counts[f"corpus_queries.{spec.split(':')[-1]}"] = n
        teacher.close()
    return docs, counts, len(rows)


def pack(tokenizer, docs: list[str], block: int):
    import numpy as np

    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    flat = np.fromiter((t for doc in ids for t in doc), dtype=np.int32)
    n = len(flat) // block
    return flat[: n * block].reshape(n, block), len(flat)


def run(ctx: stage.Context) -> dict:
    import numpy as np

    from rgalign_core import ds_trainer
    from rgalign_core.reasoner import Reasoner, build_tiny, model_version, reasoner_dir, train_tokenizer

    cfg, lake = ctx.cfg, ctx.lake
    if cfg["reasoner"]["base_model"] != "builtin:tiny":
        log.info("reasoner.base_model is a checkpoint (%s): nothing to bootstrap", cfg["reasoner"]["base_model"])
        return {"skipped": 1}
    days = ctx.windows()["train"]
    out = reasoner_dir(lake, ctx.ds)
    for d in days:
        lake.require(lake.partition("features", "sessions", d), "bootstrap_reasoner input features.sessions")
    in_fp = [lake.marker(lake.partition("features", "sessions", d)).get("fingerprint") for d in days]
    fp = fingerprint({"version": VERSION, "reasoner": cfg["reasoner"], "bootstrap": cfg["bootstrap"], "train": cfg["train"],
                      "retrieval": cfg["teachers"]["retrieval"], "inputs": in_fp})
    if ctx.up_to_date([out], fp):
        log.info("reasoner for %s is up to date; use --force to retrain", ctx.ds)
        return {"skipped": 1}

    docs, counts, n_sessions = build_corpus(ctx)
    tokenizer = train_tokenizer(docs, int(cfg["reasoner"]["tiny"]["vocab_size"]))
    tcfg = cfg["train"]
    rows_mode = tcfg.get("rows", "document")
    if rows_mode == "packed":
        blocks, n_tokens = pack(tokenizer, docs, int(tcfg["block_size"]))
        data_file, objective, bucket = "blocks.npy", "causal_lm", None
        log.info("corpus: %d documents, %d tokens, %d blocks of %d", len(docs), n_tokens, len(blocks), tcfg["block_size"])
    elif rows_mode == "document":
        from rgalign_core.alignment import document_arrays

        arrays = document_arrays(tokenizer, docs, int(tcfg["block_size"]))
        n_tokens = int(arrays["length"].sum())
        data_file, objective, bucket = "rows.npz", "sft", "length"
        log.info("corpus: %d documents, %d tokens, one row each (at most %d tokens)", len(docs), n_tokens, tcfg["block_size"])
    else:
        raise stage.StageError(f"train.rows={rows_mode!r}: use document or packed")
    arch = {k: v for k, v in cfg["reasoner"]["tiny"].items() if k != "vocab_size"}
    model = build_tiny(tokenizer, arch, seed=int(cfg["bootstrap"]["seed"]))
    n_params = sum(p.numel() for p in model.parameters())

    work = Path(tempfile.mkdtemp(prefix="rgalign-bootstrap-"))
    # Checkpoints outlive the task: an Airflow retry of the same date and config resumes from the
    # last saved step instead of starting over; they are removed once the model is in place.
    ckpt = Path(lake.root) / "checkpoints" / "bootstrap_reasoner" / f"ds={ctx.ds_str}" / fp
    resume = (ckpt / "latest").exists()
    if resume:
        log.info("resuming from the checkpoint in %s", ckpt)
    try:
        model.save_pretrained(work / "init", safe_serialization=True)
        if rows_mode == "packed":
            np.save(work / data_file, blocks)
        else:
            np.savez(work / data_file, **arrays)
        with lake.write_partition(out, {"fingerprint": fp}) as tmp:
            spec = {
                "name": "bootstrap", "config_section": "train", "objective": objective, "model_dir": str(work / "init"), "data": str(work / data_file),
                "bucket_by": bucket,
                "ds_config": str(PROJECT_ROOT / tcfg["ds_config"]), "global_batch": int(tcfg["global_batch"]),
                "train_steps": int(tcfg["steps"]), "lr": float(tcfg["lr"]), "warmup_steps": int(tcfg["warmup_steps"]),
                "seed": int(tcfg["seed"]), "log_every": int(tcfg["log_every"]), "save_every": int(tcfg.get("save_every", 0)),
                "checkpoint_dir": str(ckpt), "resume": resume, "out_dir": tmp,
                "peak_tflops_per_device": tcfg.get("peak_tflops_per_device"),
                "mlflow_tracking_uri": cfg["mlflow"]["tracking_uri"], "mlflow_run_id": ctx.tracker.run_id,
            }
            history = ds_trainer.launch(spec, int(tcfg["nproc"]), work / "run")
            tokenizer.save_pretrained(tmp)
            Path(tmp, "rgalign.json").write_text(json.dumps({"template": cfg["reasoner"]["template"], "summary_cue": cfg["reasoner"]["summary_cue"], "base_model": "builtin:tiny",
                                                             "ds": ctx.ds_str, "corpus_tokens": n_tokens}, indent=2))
        version = model_version(out)
        reasoner = Reasoner.load(out)
        rows = lake.read_partition(lake.partition("features", "sessions", days[-1]), "features.sessions").slice(0, 8).to_pylist()
        queries = reasoner.generate([r["prompt"] for r in rows], max_new_tokens=int(cfg["reasoner"]["max_new_tokens"]))
        ctx.tracker.text("\n\n".join(f"PROMPT: {r['prompt']}\nQUERY:  {q}" for r, q in zip(rows, queries)), "sample_generations.txt")
        ctx.tracker.artifact(out, "reasoner")
        ctx.tracker.text("\n".join(json.dumps(h) for h in history), "train_history.jsonl")
        from rgalign_core.align_stage import plot_history

        plot_history(ctx, history, ["loss", "tokens_per_s"], "bootstrap")
        shutil.rmtree(ckpt.parent, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    last = history[-1]
    return {"final_loss": last["loss"], "first_loss": history[0]["loss"], "tokens_per_s": float(np.mean([h["tokens_per_s"] for h in history[1:]] or [last["tokens_per_s"]])),
            "corpus_tokens": n_tokens, "corpus_documents": len(docs), "corpus_sessions": n_sessions, "parameters": n_params, "steps": int(tcfg["steps"]),
            "nproc": int(tcfg["nproc"]), "reasoner_version": version, **counts}


def main(argv=None):
    return stage.main("bootstrap_reasoner", run, __doc__, argv)


if __name__ == "__main__":
    main()
