"""The ranker zoo on a tiny synthetic RankData: every model runs, learns, is deterministic."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rgalign_core import train_ranker
from rgalign_core.models import MODELS
from rgalign_core.ranking_data import CATEGORICAL, NUMERIC, RankData, Vocab

TINY = {"field_dim": 4, "dim": 8, "heads": 2, "autoint_layers": 1, "experts": 2, "hidden": 16, "dropout": 0.0}
TRAIN = {"lr": 1e-2, "weight_decay": 0.0, "batch_sessions": 16, "epochs": 3, "patience": 3, "listwise_weight": 1.0, "bce_weight": 0.5}


def tiny_data(n=96, k=4, qdim=6, seed=0) -> RankData:
    """Sessions whose clicked intent is predictable from one categorical field and the query."""
    rng = np.random.default_rng(seed)
    vocab = Vocab(intent_ids=list(range(1, 9)), categories=["a", "b", "c", "d", "e", "f", "g", "h"], title_words=["x", "y", "z"])
    intents = np.stack([rng.permutation(8)[:k] + 1 for _ in range(n)])
    entry = rng.integers(1, 4, n)
    target = np.array([row[e % k] for row, e in zip(intents, entry)])
    clicked = (intents == target[:, None]).astype(np.float32)
    clicked[rng.random(n) < 0.2] = 0  # some sessions without a click
    cat = np.zeros((n, len(CATEGORICAL)), np.int64)
    cat[:, 0] = entry
    query = np.zeros((n, qdim), np.float32)
    query[np.arange(n), target % qdim] = 1.0
    t = {
        "cat": torch.from_numpy(cat), "num": torch.from_numpy(rng.random((n, len(NUMERIC))).astype(np.float32)),
        "num_missing": torch.from_numpy((rng.random((n, len(NUMERIC))) < 0.3).astype(np.float32)), "intent": torch.from_numpy(intents),
        "intent_cat": torch.from_numpy(intents % 8), "intent_title": torch.from_numpy(rng.integers(0, 4, (n, k, 12))),
        "intent_age": torch.zeros(n, k), "position": torch.arange(k).repeat(n, 1), "clicked": torch.from_numpy(clicked),
        "mask": torch.ones(n, k, dtype=torch.bool), "query": torch.from_numpy(query),
    }
    return RankData(session_id=np.arange(n), user_id=np.arange(n) % 12, day=np.zeros(n, "datetime64[D]"),
                    region=np.array(["SG"] * n), tensors=t, intent_id=intents, intent_category=np.full((n, k), "a", object),
                    cold=np.zeros((n, k), bool), vocab=vocab, query_dim=qdim)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_trains_and_every_parameter_moves(name):
    data = tiny_data()
    model = train_ranker.build(name, train_ranker.schema_of(data), TINY, seed=0)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    b = data.batch(np.arange(32))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):  # QE-Rec's fusion head starts at zero: what feeds it moves from the 2nd step
        opt.zero_grad()
        loss = train_ranker.loss_fn(model(b, with_position=True), b, 1.0, 0.5)
        loss.backward()
        opt.step()
    unchanged = [k for k, v in model.named_parameters() if torch.equal(v, before[k])]
    assert unchanged == []
    assert model(b).shape == (32, 4)


@pytest.mark.parametrize("name, golden", [("two_tower", 1.7375), ("qe_rec", 1.7355)])
def test_golden_first_loss(name, golden):
    data = tiny_data()
    model = train_ranker.build(name, train_ranker.schema_of(data), TINY, seed=0)
    b = data.batch(np.arange(32))
    loss = train_ranker.loss_fn(model(b, with_position=True), b, 1.0, 0.5)
    assert float(loss.detach()) == pytest.approx(golden, abs=1e-4)


def test_fit_is_deterministic_and_learns():
    data = tiny_data()
    idx = np.arange(data.n)
    runs = []
    for _ in range(2):
        model = train_ranker.build("qe_rec", train_ranker.schema_of(data), TINY, seed=1)
        model, hist = train_ranker.fit(model, data, idx[:64], idx[64:], TRAIN, seed=1)
        runs.append([h["train_loss"] for h in hist])
    assert runs[0] == runs[1]
    assert runs[0][-1] < runs[0][0]


@pytest.mark.parametrize("name", ["two_tower", "qe_rec"])
def test_fit_changes_every_parameter_of_the_model_it_keeps(name):
    """fit's own loop (id dropout, mark_seen, the best epoch's state reloaded), not a hand loop."""
    data = tiny_data()
    idx = np.arange(data.n)
    model = train_ranker.build(name, train_ranker.schema_of(data), TINY, seed=3)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    kept, hist = train_ranker.fit(model, data, idx[:64], idx[64:], {**TRAIN, "epochs": 3, "patience": 3}, seed=3)
    assert [k for k, v in kept.named_parameters() if torch.equal(v, before[k])] == []
    best = max(h["valid_gauc"] for h in hist)
    assert train_ranker.evaluate(kept, data, idx[64:])["gauc"] == pytest.approx(best, abs=1e-9)  # the best epoch's state


def test_fixed_epochs_trains_exactly_that_many_and_keeps_the_last():
    """ranker.refit's second pass: no validation to stop on, every epoch trained, the last state kept,
    and the intents of the whole index it is given (valid days included) marked as seen."""
    data = tiny_data()
    tr = np.flatnonzero((data.tensors["intent"] != 8).all(1).numpy())
    everything = np.arange(data.n)
    model = train_ranker.build("qe_rec", train_ranker.schema_of(data), TINY, seed=4)
    model, hist = train_ranker.fit(model, data, everything, tr, {**TRAIN, "epochs": 9, "patience": 1}, seed=4, fixed_epochs=4)
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4] and "valid_gauc" not in hist[0]
    assert bool(model.intent.seen_ids[8])  # seen in the refit's index, so no longer read as the unknown id
    again = train_ranker.build("qe_rec", train_ranker.schema_of(data), TINY, seed=4)
    again, _ = train_ranker.fit(again, data, everything, tr, {**TRAIN, "epochs": 9, "patience": 1}, seed=4, fixed_epochs=4)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_learning_rate_drops_on_each_validation_plateau():
    """lr_decay/lr_plateau: the rate an epoch trains at halves after every lr_plateau epochs in a row
    without a better validation GAUC, and stays put after an epoch that improved."""
    data = tiny_data()
    idx = np.arange(data.n)
    model = train_ranker.build("two_tower", train_ranker.schema_of(data), TINY, seed=2)
    cfg = {**TRAIN, "epochs": 12, "patience": 5, "lr_decay": 0.5, "lr_plateau": 2}
    _, hist = train_ranker.fit(model, data, idx[:64], idx[64:], cfg, seed=2)
    best, bad, lr = -1.0, 0, cfg["lr"]
    for row in hist:
        assert row["lr"] == pytest.approx(lr)
        if row["valid_gauc"] > best + 1e-5:
            best, bad = row["valid_gauc"], 0
        else:
            bad += 1
            lr *= 0.5 if bad % 2 == 0 else 1.0
    assert hist[-1]["lr"] < cfg["lr"]  # the fixture plateaus, so the rule was exercised


def test_query_tower_uses_the_query():
    """Same user features, different queries -> different scores (the query tower is wired in)."""
    data = tiny_data()
    model = train_ranker.build("qe_rec", train_ranker.schema_of(data), TINY, seed=0).eval()
    b = data.batch(np.arange(4))
    other = dict(b, query=torch.roll(b["query"], 1, dims=-1))
    assert not torch.allclose(model(b), model(other))


def test_query_dropout_zeroes_whole_queries_in_training_only():
    """In training a share of sessions score with their projected query zeroed; inference always reads it."""
    data = tiny_data()
    model = train_ranker.build("qe_rec", train_ranker.schema_of(data), {**TINY, "query_dropout": 0.5}, seed=0)
    b = data.batch(np.arange(64))
    zero_query = dict(b, query=torch.zeros_like(b["query"]))
    model.eval()
    assert not torch.isclose(model(b), model(zero_query)).all(1).any()  # every session reads its query
    model.train()  # no other dropout in TINY
    model.query_dropout = 1.0
    no_query = model(b)  # every session's projected query zeroed
    model.query_dropout = 0.5
    dropped = torch.isclose(model(b), no_query).all(1)
    assert 0 < int(dropped.sum()) < 64


def test_qe_rec_started_from_the_baseline_scores_as_the_baseline_until_trained():
    """start_from_baseline: QE-Rec's first scores are the two-tower's of the same seed, whatever the
    query; after training they differ and depend on the query."""
    data = tiny_data()
    schema = train_ranker.schema_of(data)
    b = data.batch(np.arange(32))
    baseline = train_ranker.build("two_tower", schema, TINY, seed=3).eval()
    model = train_ranker.build("qe_rec", schema, {**TINY, "start_from_baseline": True}, seed=3).eval()
    with torch.no_grad():
        assert torch.allclose(model(b), baseline(b), atol=1e-6)
        assert torch.allclose(model(dict(b, query=torch.randn_like(b["query"]))), baseline(b), atol=1e-6)
    default = train_ranker.build("qe_rec", schema, TINY, seed=3).eval()
    with torch.no_grad():
        assert not torch.allclose(default(b), baseline(b), atol=1e-3)  # the default start is its own
    model, _ = train_ranker.fit(model, data, np.arange(96), np.arange(96), {**TRAIN, "epochs": 2}, seed=3)
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model(b), model(dict(b, query=torch.roll(b["query"], 1, dims=-1))), atol=1e-4)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_intents_unseen_in_training_score_as_the_unknown_id(name):
    """A cold-start intent's id embedding never gets a gradient; fit marks the seen ids so an
    unseen one is read as the trained unknown id 0, not as seed-dependent random noise."""
    data = tiny_data()
    tr = np.flatnonzero((data.tensors["intent"] != 8).all(1).numpy())  # intent 8 never in training
    te = np.flatnonzero((data.tensors["intent"] == 8).any(1).numpy())
    assert len(tr) > 16 and len(te) > 0
    model = train_ranker.build(name, train_ranker.schema_of(data), {**TINY, "id_dropout": 0.2}, seed=0)
    model, _ = train_ranker.fit(model, data, tr, tr, {**TRAIN, "epochs": 1}, seed=0)
    assert not bool(model.intent.seen_ids[8]) and bool(model.intent.seen_ids[1:8].all())
    b = data.batch(te)
    unknown = {**b, "intent": b["intent"].masked_fill(b["intent"] == 8, 0)}
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(b), model(unknown))
        other = {**b, "intent": b["intent"].masked_fill(b["intent"] == 8, 7)}
        assert not torch.equal(model(b), model(other))  # a seen id is read as itself


@pytest.mark.parametrize("name", sorted(MODELS))
def test_without_the_intent_id_an_intent_scores_by_its_category_title_and_age(name):
    """``intent_id: false``: two intents with the same category, title and age score the same."""
    data = tiny_data()
    model = train_ranker.build(name, train_ranker.schema_of(data), {**TINY, "intent_id": False}, seed=0)
    model, _ = train_ranker.fit(model, data, np.arange(64), np.arange(64, 96), {**TRAIN, "epochs": 1}, seed=0)
    b = data.batch(np.arange(16))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(b), model({**b, "intent": torch.roll(b["intent"], 1, dims=-1)}))
        assert not torch.equal(model(b), model({**b, "intent_cat": torch.roll(b["intent_cat"], 1, dims=-1)}))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_title_encoder_gives_an_unseen_intent_its_titles_sentence_embedding(name, tmp_path, monkeypatch):
    """``title_encoder``: the intent tower reads each intent's title as a frozen sentence embedding,
    an intent the training window never showed included, and the saved model keeps those vectors
    and their width, so loading it needs no encoder."""
    from rgalign_core import text_encoder
    from rgalign_core.text_encoder import shared

    titles = ["Where is my parcel?", "My payment failed", "How do I return an item?", "My voucher is about to expire",
              "How do I reset my password?", "The app keeps crashing", "The seller is not replying",
              "Claim form: delivered but not received"]
    data = tiny_data()
    data.vocab.intent_titles = titles
    tr = np.flatnonzero((data.tensors["intent"] != 8).all(1).numpy())  # intent 8 never in training
    te = np.flatnonzero((data.tensors["intent"] == 8).any(1).numpy())
    cfg = {**TINY, "title_encoder": "minilm"}
    schema = train_ranker.schema_of(data, cfg)
    model, _ = train_ranker.fit(train_ranker.build(name, schema, cfg, seed=0), data, tr, tr, {**TRAIN, "epochs": 1}, seed=0)
    encoder = shared("minilm")
    assert torch.allclose(model.intent.title_text[1:], torch.from_numpy(encoder.encode(titles)))
    assert not bool(model.intent.seen_ids[8])  # read as the unknown id, but not as an unknown title
    b = data.batch(te)
    model.eval()
    with torch.no_grad():
        scores = model(b)
        train_ranker.save(model, tmp_path, name, schema, cfg, data.vocab, {})
        with monkeypatch.context() as m:  # a serving host without the encoder
            m.setattr(text_encoder, "resolve", lambda name: pytest.fail(f"loading looked for encoder {name}"))
            loaded, vocab, _ = train_ranker.load_model(tmp_path)
        assert vocab.intent_titles == titles and torch.equal(loaded(b), scores)
        model.intent.read_titles(encoder.encode(titles[:7] + ["How do I change the app language?"]))
        moved = model(b) != scores
    assert moved[b["intent"] == 8].all() and not moved[b["intent"] != 8].any()


def test_held_out_path_is_a_refit_seeds_first_pass_else_the_seed_itself(tmp_path):
    from rgalign_core.train_ranker import HELD_OUT, held_out_path

    seed = tmp_path / "seed=0"
    seed.mkdir()
    (seed / "model.safetensors").write_bytes(b"")
    assert held_out_path(seed) == str(seed)
    (seed / HELD_OUT).mkdir()  # a directory without a model is not a first pass
    assert held_out_path(seed) == str(seed)
    (seed / HELD_OUT / "model.safetensors").write_bytes(b"")
    assert held_out_path(seed) == str(seed / HELD_OUT)
