"""Latent queries and their embeddings: the reasoner reads each session's prompt, writes the query,
and its last-token pooled hidden state over prompt + query becomes the query embedding.

For every session in the sample windows (train + valid + test days): build the prompt from the
template (``reasoner.template``), generate the latent query greedily (at most
``reasoner.max_new_tokens``), then embed prompt + query with last-token pooling. Batches are
sorted by length. Writes ``queries/<variant>/dt=<day>/`` with ``session_id, latent_query,
embedding`` (fixed-size float32 list) and ``reasoner_version``; a partition made by another
reasoner version is recomputed, never reused.

    python -m jobs.encode_queries --ds 2026-11-21
    python -m jobs.encode_queries --ds 2026-11-21 --set encode.batch_size=64
    python -m jobs.encode_queries --ds 2026-11-21 --set reasoner.base_model=/models/Qwen3-4B
"""
from __future__ import annotations

import logging
import time

from rgalign_core import stage
from rgalign_core.config import fingerprint

log = logging.getLogger("rgalign.encode_queries")
VERSION = 1


def run(ctx: stage.Context) -> dict:
    from jobs.bootstrap_reasoner import require_reasoner

    return encode(ctx, require_reasoner(ctx), ctx.cfg["encode"]["variant"])


def encode(ctx: stage.Context, model_path: str, variant: str, metric_prefix: str = "") -> dict:
    """Queries and embeddings of every sample-window session by the reasoner at ``model_path``,
    into ``queries/<variant>/dt=``; the alignment stages call it for their reasoner versions."""
    from rgalign_core.reasoner import Reasoner, model_version, queries_table

    cfg, lake = ctx.cfg, ctx.lake
    ecfg = cfg["encode"]
    days = ctx.windows()["samples"]
    version = model_version(model_path)
    inputs = [lake.partition("features", "sessions", d) for d in days]
    for p in inputs:
        lake.require(p, "features.sessions")
    fp = fingerprint({"version": VERSION, "reasoner_version": version, "template": cfg["reasoner"]["template"],
                      "summary_cue": cfg["reasoner"]["summary_cue"], "max_new_tokens": cfg["reasoner"]["max_new_tokens"],
                      "inputs": [lake.marker(p).get("fingerprint") for p in inputs]})
    outputs = [lake.partition("queries", variant, d) for d in days]
    ctx.tracker.params({f"{metric_prefix}reasoner_path": model_path, f"{metric_prefix}reasoner_version": version})
    if ctx.up_to_date(outputs, fp):
        log.info("queries for %s..%s are up to date (reasoner %s)", days[0], days[-1], version)
        return {f"{metric_prefix}skipped": 1}

    reasoner = Reasoner.load(model_path, template=cfg["reasoner"]["template"], summary_cue=cfg["reasoner"]["summary_cue"])
    dim = reasoner.hidden_size
    totals = {"sessions": 0, "generate_s": 0.0, "embed_s": 0.0, "new_tokens": 0}
    for day, src, dst in zip(days, inputs, outputs):
        sessions = lake.read_partition(src, "features.sessions", columns=["session_id", "prompt"])
        prompts = sessions["prompt"].to_pylist()
        t0 = time.time()
        queries = reasoner.generate(prompts, max_new_tokens=int(cfg["reasoner"]["max_new_tokens"]),
                                    batch_size=int(ecfg["batch_size"]), progress=True)
        t1 = time.time()
        emb = reasoner.embed(prompts, queries, batch_size=int(ecfg["batch_size"]), progress=True)
        t2 = time.time()
        table = queries_table(sessions["session_id"], queries, emb, version)
        lake.write_table(dst, table, {"fingerprint": fp, "reasoner_version": version, "dim": dim})
        n_tok = sum(len(t) for t in reasoner.tok(queries, add_special_tokens=False)["input_ids"])
        totals["sessions"] += len(prompts)
        totals["generate_s"] += t1 - t0
        totals["embed_s"] += t2 - t1
        totals["new_tokens"] += n_tok
        log.info("%s: %d sessions, generate %.1fs (%.1f seq/s), embed %.1fs (%.1f seq/s)", day, len(prompts),
                 t1 - t0, len(prompts) / max(t1 - t0, 1e-9), t2 - t1, len(prompts) / max(t2 - t1, 1e-9))
    sample = lake.read_partition(outputs[-1], "queries")
    ctx.tracker.text("\n".join(f"{s}\t{q}" for s, q in zip(sample["session_id"].to_pylist()[:50], sample["latent_query"].to_pylist()[:50])),
                     f"{metric_prefix}sample_queries.tsv")
    ctx.tracker.dataset(lake, outputs, f"queries.{variant}", context="output")
    n = max(totals["sessions"], 1)
    written = [q for d in outputs for q in lake.read_partition(d, "queries", ["latent_query"])["latent_query"].to_pylist()]
    result = {
        "sessions": totals["sessions"], "embedding_dim": dim, "reasoner_version": version,
        "generate_seq_per_s": n / max(totals["generate_s"], 1e-9),
        "generate_tokens_per_s": totals["new_tokens"] / max(totals["generate_s"], 1e-9),
        "embed_seq_per_s": n / max(totals["embed_s"], 1e-9),
        "mean_query_tokens": totals["new_tokens"] / n,
        # a reasoner that writes the same query for everyone gives the ranker nothing per session
        "distinct_query_share": len(set(written)) / n,
        "empty_queries": sum(1 for q in written if not q),
    }
    return {f"{metric_prefix}{k}": v for k, v in result.items()}


def main(argv=None):
    return stage.main("encode_queries", run, __doc__, argv)


if __name__ == "__main__":
    main()
