"""Last-token pooling and generation on a small randomly initialised model (no training needed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rgalign_core.reasoner import Reasoner, build_tiny, last_token_pool, train_tokenizer

CORPUS = [
    "Customer state: a gold VIP customer in SG has 1 delayed order. Question: Why is my order delayed?",
    "Customer state: a regular customer in ID, a payment failed 2h ago. Question: My payment failed",
    "Customer state: refund pending for 40h, recent searches: refund status. Question: When will I get my refund?",
] * 20
ARCH = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=8, max_position_embeddings=256)


@pytest.fixture(scope="module")
def reasoner(tmp_path_factory):
    tok = train_tokenizer(CORPUS, 300)
    model = build_tiny(tok, ARCH, seed=0)
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return Reasoner.load(path)


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_same_text_same_embedding_alone_left_or_right_padded(reasoner):
    short = "Customer state: payment failed"
    long_ = "Customer state: a regular customer in ID with a delayed order and a refund pending for 40h"
    alone = reasoner.embed_texts([short], batch_size=1)[0]
    left = reasoner.embed_texts([long_, short], batch_size=2)[1]  # left padding (the default)
    reasoner.tok.padding_side = "right"
    try:
        right = reasoner.embed_texts([long_, short], batch_size=2)[1]
    finally:
        reasoner.tok.padding_side = "left"
    assert _cos(alone, left) >= 0.9999 and _cos(alone, right) >= 0.9999
    # and a different text is not the same vector
    assert _cos(alone, reasoner.embed_texts([long_], batch_size=1)[0]) < 0.999


def test_pooling_picks_the_last_real_token_never_a_pad():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert last_token_pool(hidden, left).flatten().tolist() == [3.0, 7.0]
    assert last_token_pool(hidden, right).flatten().tolist() == [1.0, 7.0]


def test_batches_sorted_by_length_keep_the_input_order(reasoner):
    texts = ["a b", "a much longer text with many words in it", "mid length text"]
    batched = reasoner.embed_texts(texts, batch_size=2, sort=True)
    single = np.stack([reasoner.embed_texts([t], batch_size=1)[0] for t in texts])
    assert all(_cos(x, y) >= 0.9999 for x, y in zip(batched, single))


def test_generation_is_greedy_deterministic_and_bounded(reasoner):
    prompts = ["a gold VIP customer in SG has 1 delayed order.", "a payment failed 2h ago."]
    a = reasoner.generate(prompts, max_new_tokens=6)
    b = reasoner.generate(prompts[::-1], max_new_tokens=6)[::-1]
    assert a == b and all(isinstance(q, str) for q in a)
    assert all(len(reasoner.tok(q, add_special_tokens=False)["input_ids"]) <= 6 + 1 for q in a)


def test_the_summary_cue_is_pooled_and_comes_from_the_model_by_default(reasoner, tmp_path):
    import json

    reasoner.model.save_pretrained(tmp_path)
    reasoner.tok.save_pretrained(tmp_path)
    (tmp_path / "rgalign.json").write_text(json.dumps({"summary_cue": "\nPending:"}))
    trained = Reasoner.load(tmp_path)
    assert trained.query_text("p", "Where is my parcel?").endswith("Where is my parcel?\nPending:")
    assert Reasoner.load(tmp_path, summary_cue="").query_text("p", "q").endswith(" q")
    with_cue, without = trained.embed(["p"], ["q"]), reasoner.embed(["p"], ["q"])
    assert _cos(with_cue[0], without[0]) < 0.999  # a different token is pooled


def test_corpus_summary_lists_the_most_pressing_pending_states():
    from jobs.bootstrap_reasoner import state_summary

    row = {"n_shipped": 1, "h_since_shipped": 5.0, "n_delayed": 1, "h_since_delayed": 30.0,
           "h_since_payment_failed": 2.0, "n_refund_pending": 0}
    assert state_summary(row, 3) == "payment_failed, delayed, shipped"  # problems first, most recent first
    assert state_summary(row, 1) == "payment_failed"
    assert state_summary({}, 3) == "nothing"
    # the text's KB categories (the retrieval teacher's topics) after the states, or before them
    assert state_summary(row, 2, ["payment"]) == "payment_failed, delayed, payment"
    assert state_summary(row, 2, ["payment"], topics_first=True) == "payment, payment_failed, delayed"
    assert state_summary({}, 3, ["returns_refunds"]) == "returns_refunds"


def test_rg_sft_targets_go_on_with_the_summary_bootstrap_wrote():
    """RG-SFT trains query + the bootstrap corpus's summary (so the pooled token keeps what it
    encodes): its config reads bootstrap's summary settings, and the text is the corpus's."""
    from jobs.bootstrap_reasoner import summary_text, summary_topics
    from rgalign_core import config

    cfg = config.load("rg_sft", [])
    assert cfg["rg_sft"]["train_summary"] and cfg["bootstrap"]["summary_topics"] == 1
    assert "train" not in cfg  # `uses: bootstrap_reasoner.bootstrap` takes that block, not bootstrap's training settings
    # the text topics come from the retrieval teacher teachers_generate runs (`uses: ...teachers.retrieval`)
    retrieval = config.load("teachers_generate", [])["teachers"]["retrieval"]
    assert cfg["teachers"] == {"retrieval": retrieval} == config.load("bootstrap_reasoner", [])["teachers"]
    kb = [{"intent_id": 1, "title": "My payment failed", "answer": "Try another card.", "category": "payment", "active": True},
          {"intent_id": 2, "title": "Where is my parcel?", "answer": "Track it.", "category": "logistics", "active": True}]
    row = {"h_since_payment_failed": 2.0, "n_shipped": 1, "h_since_shipped": 5.0, "last_chat_message": "my payment failed again"}
    topics = summary_topics(cfg, [row, {}], kb)
    assert topics == [["payment"], []]  # the second session has no text
    cue = cfg["reasoner"]["summary_cue"]
    assert summary_text(cfg, row, topics[0], topics_first=False) == f"{cue} payment_failed, shipped, payment"
    assert summary_text(cfg, row, topics[0], topics_first=True) == f"{cue} payment, payment_failed, shipped"
    no_cue = config.load("rg_sft", ["reasoner.summary_cue="])
    assert summary_topics(no_cue, [row], kb) == [[]] and summary_text(no_cue, row, [], False) == ""


def test_dpo_rg_cl_and_calibrate_write_the_same_summary_as_rg_sft():
    """DPO's anchor and RG-CL's rows carry the summary RG-SFT trains on: one summary config for all
    four (the alignment stages after RG-SFT would otherwise let the pooled cue token drift)."""
    from rgalign_core import align_stage, config

    sft = align_stage.summary_config(config.load("rg_sft", []))
    assert sft is not None
    for name in ("rg_dpo", "rg_cl", "calibrate"):
        assert align_stage.summary_config(config.load(name, [])) == sft, name
    assert config.load("rg_dpo", [])["rg_dpo"]["anchor_weight"] > 0 and config.load("rg_cl", [])["rg_cl"]["train_summary"]
    assert align_stage.summary_config(config.load("rg_cl", ["reasoner.summary_cue="])) is None


def test_encode_queries_reuses_its_cache_until_the_reasoner_changes(tmp_path, overrides):
    """encode_queries skips a rerun with the same reasoner, and re-encodes every day when the
    weights at the same path change (the cache is keyed by a hash of the weights, not the path)."""
    import datetime as dt

    import pyarrow as pa

    from jobs import encode_queries
    from rgalign_core.lake import Lake

    lake = Lake(str(tmp_path / "lake"))
    days = [dt.date(2026, 3, d) for d in range(1, 6)]
    for i, day in enumerate(days):
        rows = [{"session_id": 10 * i + j, "prompt": CORPUS[j].split(" Question:")[0]} for j in range(3)]
        lake.write_table(lake.partition("features", "sessions", day), pa.Table.from_pylist(rows), {"fingerprint": f"f{day}"})
    tok = train_tokenizer(CORPUS, 300)
    path = tmp_path / "reasoner"

    def save_reasoner(seed):
        build_tiny(tok, ARCH, seed=seed).save_pretrained(path)
        tok.save_pretrained(path)

    def run():
        sets = {"windows.train_days": 2, "windows.valid_days": 1, "windows.test_days": 1, "reasoner.base_model": str(path),
                "reasoner.max_new_tokens": 4}
        result = encode_queries.main(["--ds", "2026-03-05", *overrides(**sets)])
        parts = sorted((tmp_path / "lake" / "queries" / "base").glob("dt=*"))
        return result, {p.name: lake.read_partition(str(p), "queries").to_pydict() for p in parts}

    save_reasoner(0)
    first, tables = run()
    assert first.get("sessions") and len(tables) >= 4
    again, same = run()
    assert again == {"skipped": 1} and same == tables
    save_reasoner(1)
    third, changed = run()
    assert third.get("sessions") == first["sessions"] and changed.keys() == tables.keys()
    for day, table in changed.items():
        assert table["reasoner_version"][0] != tables[day]["reasoner_version"][0]
        assert not np.allclose(np.array(table["embedding"]), np.array(tables[day]["embedding"]))
