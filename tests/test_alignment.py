"""The alignment losses on tiny fixtures: golden first-step values, every trainable parameter moves,
frozen ones (the DPO reference, the QE-Rec intent tower) do not; and the arrays they read."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from rgalign_core import alignment, train_ranker
from rgalign_core.reasoner import build_tiny, train_tokenizer
from tests.test_rankers import TINY, tiny_data

ARCH = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=8, max_position_embeddings=256)
TEMPLATE = "Customer state: {prompt}\nQuestion the customer wants to ask:"
PROMPTS = ["order delayed 3 days, searched where is my parcel", "payment failed twice today", "voucher expires tomorrow",
           "item arrived broken, messaged seller", "refund pending for 5 days", "new device login yesterday",
           "app crashed at checkout", "parcel delivered but not received"]
BEST = ["Where is my parcel?", "Why did my payment fail?", "How do I use my voucher?", "My item arrived damaged",
        "When will I get my refund?", "I don't recognise this login", "The app keeps crashing", "I did not receive my parcel"]
WORST = BEST[1:] + BEST[:1]
CUE = "\nPending:"
SUMMARIES = [f"{CUE} {s}" for s in ["shipping_delay", "payment_failed", "voucher_expiring", "item_damaged", "refund_pending",
                                     "account_security", "app_issue", "parcel_missing"]]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(PROMPTS + BEST + [TEMPLATE] * 3, 400)


def model_of(tok, seed=0):
    m = build_tiny(tok, ARCH, seed=seed)
    m.config.use_cache = False
    return m


def batch_of(arrays: dict) -> dict:
    return {k: (torch.from_numpy(v).long() if v.dtype.kind in "iu" else torch.from_numpy(v)) for k, v in arrays.items()}


def steps(model, loss_of, n=3, lr=1e-2):
    """n AdamW steps of loss_of(model); returns the losses."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(n):
        loss = loss_of(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def moved(model, before: dict) -> list[str]:
    return [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]


# ---- arrays --------------------------------------------------------------------------------------

def test_sft_arrays_label_only_the_query_and_its_eos(tok):
    a = alignment.sft_arrays(tok, TEMPLATE, PROMPTS, BEST, max_len=64)
    for i, q in enumerate(BEST):
        n = int(a["length"][i])
        labelled = a["labels"][i][a["labels"][i] != alignment.IGNORE]
        assert tok.decode(labelled) == f" {q}{tok.eos_token}"
        assert a["attention_mask"][i, :n].all() and not a["attention_mask"][i, n:].any()
        np.testing.assert_array_equal(a["input_ids"][i, n - len(labelled):n], labelled)


def test_long_prompts_are_cut_from_the_left(tok):
    long = " ".join(PROMPTS * 6)
    a = alignment.sft_arrays(tok, TEMPLATE, [long], ["Where is my parcel?"], max_len=40)
    assert int(a["length"][0]) == 40
    assert tok.decode(a["input_ids"][0][:40]).endswith(" Where is my parcel?" + tok.eos_token)


# ---- RG-SFT --------------------------------------------------------------------------------------

def test_sft_golden_loss_and_every_parameter_moves(tok):
    model = model_of(tok)
    b = batch_of(alignment.sft_arrays(tok, TEMPLATE, PROMPTS, BEST, max_len=64))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    torch.manual_seed(0)
    losses = steps(model, lambda m: alignment.sft_loss(m, b)[0])
    assert losses[0] == pytest.approx(GOLDEN["sft"], abs=1e-4)
    assert losses[-1] < losses[0]
    assert moved(model, before) == [k for k, _ in model.named_parameters()]


def test_sft_loss_is_the_mean_cross_entropy_of_the_query_tokens_only(tok):
    """By hand: each labelled token (the query and its eos, never the prompt or padding) predicted
    from the position before it, averaged over those tokens."""
    import torch.nn.functional as F

    model = model_of(tok)
    a = alignment.sft_arrays(tok, TEMPLATE, PROMPTS, BEST, max_len=64)
    b = batch_of(a)
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        terms = [F.cross_entropy(logits[i, t - 1], b["labels"][i, t], reduction="none")
                 for i in range(len(PROMPTS)) for t in range(1, b["labels"].shape[1]) if b["labels"][i, t] != alignment.IGNORE]
        by_hand = torch.stack(terms).mean()
        loss, _ = alignment.sft_loss(model, b)
    assert len(terms) == sum(len(tok(f" {q}").input_ids) + 1 for q in BEST)  # the query tokens and eos
    assert float(loss) == pytest.approx(float(by_hand), abs=1e-5)


# ---- DPO -----------------------------------------------------------------------------------------

def test_dpo_starts_at_log2_moves_the_policy_and_not_the_reference(tok):
    policy = model_of(tok)
    ref = copy.deepcopy(policy).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    ref_before = {k: v.clone() for k, v in ref.named_parameters()}
    before = {k: v.detach().clone() for k, v in policy.named_parameters()}
    b = batch_of(alignment.dpo_arrays(tok, TEMPLATE, PROMPTS, BEST, WORST, max_len=64))
    metrics = []

    def loss_of(m):
        loss, _, mt = alignment.dpo_loss(m, ref, b, beta=0.5)
        metrics.append(mt)
        return loss

    losses = steps(policy, loss_of, n=4, lr=3e-3)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 0
    assert losses[1] == pytest.approx(GOLDEN["dpo_step2"], abs=1e-4)
    assert losses[-1] < losses[0]
    assert metrics[-1]["rewards/accuracies"] > 0.5 and metrics[-1]["rewards/margins"] > 0
    assert moved(policy, before) == [k for k, _ in policy.named_parameters()]
    assert moved(ref, ref_before) == []


def test_dpo_anchor_adds_the_weighted_nll_of_the_chosen_query_and_its_summary(tok):
    policy = model_of(tok)
    ref = copy.deepcopy(policy).eval()
    anchor = [q + s for q, s in zip(BEST, SUMMARIES)]
    a = alignment.dpo_arrays(tok, TEMPLATE, PROMPTS, BEST, WORST, max_len=64, anchor=anchor)
    labelled = a["anchor_labels"][0][a["anchor_labels"][0] != alignment.IGNORE]
    assert tok.decode(labelled) == f" {BEST[0]}{SUMMARIES[0]}{tok.eos_token}"
    assert (a["length"] >= a["anchor_attention_mask"].sum(1)).all()
    b = batch_of(a)
    with torch.no_grad():
        plain, _, _ = alignment.dpo_loss(policy, ref, b, beta=0.5)
        anchored, _, m = alignment.dpo_loss(policy, ref, b, beta=0.5, anchor_weight=0.7)
        nll, _ = alignment.sft_loss(policy, batch_of(alignment.sft_arrays(tok, TEMPLATE, PROMPTS, anchor, max_len=64)))
    assert float(plain) == pytest.approx(math.log(2), abs=1e-6)
    assert float(anchored) == pytest.approx(math.log(2) + 0.7 * float(nll), abs=1e-5)
    assert m["anchor_nll"] == pytest.approx(float(nll), abs=1e-5) and m["dpo_loss"] == pytest.approx(math.log(2), abs=1e-6)
    before = {k: v.detach().clone() for k, v in policy.named_parameters()}
    losses = steps(policy, lambda m: alignment.dpo_loss(m, ref, b, beta=0.5, anchor_weight=0.7)[0], n=3, lr=3e-3)
    assert losses[-1] < losses[0]
    assert moved(policy, before) == [k for k, _ in policy.named_parameters()]


# ---- RG-CL ---------------------------------------------------------------------------------------

def test_info_nce_matches_a_hand_computation_and_masks_false_negatives():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    negs = torch.tensor([[[0.0, 1.0], [1.0, 0.0]], [[1.0, 0.0], [3.0, 3.0]]])
    neg_mask = torch.tensor([[True, False], [True, True]])
    pos_id, neg_id = torch.tensor([5, 7]), torch.tensor([[6, 8], [9, 7]])  # row 1's second negative is its own positive
    loss, m = alignment.info_nce(q, pos, negs, neg_mask, pos_id, neg_id, tau=0.5)
    c = 1 / math.sqrt(2)
    # row 0: positive cos c; session negative (0,1): 0; in-batch (row 1's positive (0,1)): 0
    row0 = -math.log(math.exp(c / 0.5) / (math.exp(c / 0.5) + 2 * math.exp(0)))
    # row 1: positive 1; session negative (1,0): 0 (the other one is masked); in-batch (1,1)/√2: c
    row1 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(0) + math.exp(c / 0.5)))
    assert float(loss) == pytest.approx((row0 + row1) / 2, abs=1e-6)
    assert m["pair_accuracy"] == pytest.approx(1.0)
    assert m["alignment_gap"] == pytest.approx((c + 1) / 2 - 0.0, abs=1e-6)


@pytest.fixture(scope="module")
def qe_rec_dir(tmp_path_factory):
    data = tiny_data(n=len(PROMPTS) * 4, qdim=ARCH["hidden_size"])
    model = train_ranker.build("qe_rec", train_ranker.schema_of(data), TINY, seed=0)
    path = tmp_path_factory.mktemp("qe") / "seed=0"
    train_ranker.save(model, path, "qe_rec", train_ranker.schema_of(data), TINY, data.vocab, {"seed": 0})
    return path, data


def test_rg_cl_trains_reasoner_and_projection_only_and_leaves_the_intent_tower(tok, qe_rec_dir, tmp_path):
    path, data = qe_rec_dir
    model_of(tok).save_pretrained(tmp_path / "reasoner")
    tok.save_pretrained(tmp_path / "reasoner")
    qe, _, _ = train_ranker.load_model(path)
    tower_before = {k: v.clone() for k, v in qe.intent.named_parameters()}
    targets = alignment.intent_targets(qe, data, np.arange(data.n))
    rows = targets.pop("rows")
    n = len(rows)
    assert n == int((data.tensors["clicked"].numpy().sum(1) > 0).sum())  # sessions without a click are skipped
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    text = alignment.sft_arrays(tok, TEMPLATE, prompts, [BEST[i % len(BEST)] for i in range(n)], max_len=64, eos=False)
    b = batch_of({**text, **targets})
    aligner = alignment.load_query_aligner(str(tmp_path / "reasoner"), str(path))
    before = {k: v.detach().clone() for k, v in aligner.named_parameters()}
    torch.manual_seed(0)
    losses = steps(aligner, lambda m: alignment.rg_cl_loss(m, b, tau=0.1, lm_weight=1.0)[0], n=3, lr=3e-3)
    assert losses[0] == pytest.approx(GOLDEN["rg_cl"], abs=1e-4)
    assert losses[-1] < losses[0]
    assert moved(aligner, before) == [k for k, _ in aligner.named_parameters()]
    assert all(not p.requires_grad for p in qe.intent.parameters())
    assert all(torch.equal(v, tower_before[k]) for k, v in qe.intent.named_parameters())
    # the projection starts as QE-Rec's own query tower
    qe_query = dict(qe.query.named_parameters())
    assert all(torch.equal(before[f"projection.{k}"], v) for k, v in qe_query.items())


def test_rg_cl_trainable_layers_trains_only_the_last_layers_norm_and_projection(tok, qe_rec_dir, tmp_path):
    path, data = qe_rec_dir
    model_of(tok).save_pretrained(tmp_path / "reasoner")
    tok.save_pretrained(tmp_path / "reasoner")
    qe, _, _ = train_ranker.load_model(path)
    targets = alignment.intent_targets(qe, data, np.arange(data.n))
    n = len(targets.pop("rows"))
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    b = batch_of({**alignment.sft_arrays(tok, TEMPLATE, prompts, [BEST[i % len(BEST)] for i in range(n)], max_len=64, eos=False),
                  **targets})
    aligner = alignment.load_query_aligner(str(tmp_path / "reasoner"), str(path), trainable_layers=1)
    before = {k: v.detach().clone() for k, v in aligner.named_parameters()}
    torch.manual_seed(0)
    steps(aligner, lambda m: alignment.rg_cl_loss(m, b, tau=0.1, lm_weight=1.0)[0], n=2, lr=3e-3)
    last = ARCH["num_hidden_layers"] - 1
    expected = [k for k, _ in aligner.named_parameters()
                if k.startswith(("projection.", f"reasoner.model.layers.{last}.", "reasoner.model.norm."))]
    assert moved(aligner, before) == expected
    assert any(k.startswith("reasoner.model.layers.0.") for k in before)  # the frozen layer exists and did not move


def test_rg_cl_pooling_matches_the_encoder(tok, qe_rec_dir, tmp_path):
    """RG-CL trains on exactly the vector encode_queries caches: last-token pooling of prompt + query + summary cue."""
    from rgalign_core.reasoner import Reasoner

    path, _ = qe_rec_dir
    model_of(tok).save_pretrained(tmp_path / "r")
    tok.save_pretrained(tmp_path / "r")
    aligner = alignment.load_query_aligner(str(tmp_path / "r"), str(path)).eval()
    cue = "\nPending:"
    reasoner = Reasoner.load(tmp_path / "r", template=TEMPLATE, summary_cue=cue)
    cached = reasoner.embed(PROMPTS, BEST)
    a = batch_of(alignment.sft_arrays(tok, TEMPLATE, PROMPTS, BEST, max_len=64, eos=False, summary_cue=cue))
    assert reasoner.query_text(PROMPTS[0], BEST[0]).endswith(f" {BEST[0]}{cue}")
    with torch.no_grad():
        q, _ = aligner(a["input_ids"], a["attention_mask"])
        expected = aligner.projection(torch.from_numpy(cached))
    np.testing.assert_allclose(q.numpy(), expected.numpy(), atol=1e-4)


def test_rg_cl_rows_with_a_summary_pool_at_the_cue_and_train_on_the_summary(tok, qe_rec_dir, tmp_path):
    """With tails the rows go on after the cue, but the vector is still the one encode_queries
    caches (pooled at the cue, which does not see the summary), and the LM loss covers the summary."""
    from rgalign_core.reasoner import Reasoner

    path, _ = qe_rec_dir
    model_of(tok).save_pretrained(tmp_path / "r")
    tok.save_pretrained(tmp_path / "r")
    aligner = alignment.load_query_aligner(str(tmp_path / "r"), str(path)).eval()
    cached = Reasoner.load(tmp_path / "r", template=TEMPLATE, summary_cue=CUE).embed(PROMPTS, BEST)
    tails = [s[len(CUE):] for s in SUMMARIES]
    a = alignment.sft_arrays(tok, TEMPLATE, PROMPTS, BEST, max_len=64, eos=False, summary_cue=CUE, tails=tails)
    plain = alignment.sft_arrays(tok, TEMPLATE, PROMPTS, BEST, max_len=64, eos=False, summary_cue=CUE)
    for i in range(len(PROMPTS)):
        k = int(a["pool_index"][i])
        np.testing.assert_array_equal(a["input_ids"][i, :k + 1], plain["input_ids"][i, :int(plain["length"][i])])
        labelled = a["labels"][i][a["labels"][i] != alignment.IGNORE]
        assert tok.decode(labelled) == f" {BEST[i]}{SUMMARIES[i]}{tok.eos_token}"
    b = batch_of(a)
    with torch.no_grad():
        q, lm = aligner(b["input_ids"], b["attention_mask"], labels=b["labels"], pool_index=b["pool_index"])
        q_end, _ = aligner(b["input_ids"], b["attention_mask"])
        expected = aligner.projection(torch.from_numpy(cached))
    np.testing.assert_allclose(q.numpy(), expected.numpy(), atol=1e-4)
    assert not np.allclose(q_end.numpy(), expected.numpy(), atol=1e-3)  # the row's end is not what is pooled
    assert lm is not None and float(lm) > 0
    # rg_cl_loss (training and alignment_report) pools where the rows say
    n, d = q.shape
    g = torch.Generator().manual_seed(0)
    t = {"pos": torch.randn(n, d, generator=g), "negs": torch.randn(n, 2, d, generator=g),
         "neg_mask": torch.ones(n, 2, dtype=torch.bool), "pos_id": torch.arange(n), "neg_id": torch.arange(n)[:, None] + 100 + torch.arange(2)}
    with torch.no_grad():
        via_loss = alignment.rg_cl_loss(aligner, {**b, **t}, tau=0.1)[0]
    expected_loss = alignment.info_nce(expected, t["pos"], t["negs"], t["neg_mask"], t["pos_id"], t["neg_id"], tau=0.1)[0]
    assert float(via_loss) == pytest.approx(float(expected_loss), abs=1e-4)


def test_a_summary_tail_never_cuts_the_prompt_that_is_pooled(tok):
    """A long prompt is cut as it is without a tail (so the pooled ids are the encoder's); the tail
    gets only the room left, down to nothing."""
    long = " ".join(PROMPTS * 3)
    for max_len in (40, 64, 96):
        plain = alignment.sft_arrays(tok, TEMPLATE, [long], [BEST[0]], max_len=max_len, eos=False, summary_cue=CUE)
        a = alignment.sft_arrays(tok, TEMPLATE, [long], [BEST[0]], max_len=max_len, eos=False, summary_cue=CUE,
                                 tails=[SUMMARIES[0][len(CUE):]])
        k = int(a["pool_index"][0])
        np.testing.assert_array_equal(a["input_ids"][0, :k + 1], plain["input_ids"][0, :int(plain["length"][0])])
        assert int(a["length"][0]) <= max_len


GOLDEN = {"sft": 5.9935, "dpo_step2": 0.5418, "rg_cl": 10.1336}


# ---- the same objectives under the DeepSpeed loop (the launcher, the engine, bucketing, saving) ----

def _launch(tmp_path, tok, objective: str, arrays: dict, **extra) -> tuple[list[dict], dict, dict]:
    """One DeepSpeed process, one global batch of every row, 2 steps; returns the history and the
    saved weights before/after (the reasoner's model.safetensors)."""
    from safetensors.torch import load_file

    from rgalign_core import ds_trainer
    from rgalign_core.config import PROJECT_ROOT

    init = tmp_path / "init"
    model_of(tok).save_pretrained(init)
    tok.save_pretrained(init)
    np.savez(tmp_path / "data.npz", **arrays)
    n = len(arrays["length"]) if "length" in arrays else len(next(iter(arrays.values())))
    spec = {"name": objective, "objective": objective, "model_dir": str(init), "data": str(tmp_path / "data.npz"),
            "ds_config": str(PROJECT_ROOT / "conf/deepspeed/zero0.json"), "global_batch": n, "train_steps": 2,
            "lr": 3e-3, "warmup_steps": 0, "seed": 0, "log_every": 1, "bucket_by": "length",
            "checkpoint_dir": str(tmp_path / "ckpt"), "out_dir": str(tmp_path / "out"), **extra}
    history = ds_trainer.launch(spec, 1, tmp_path / "run")
    return history, load_file(init / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")


def _all_changed(before: dict, after: dict) -> list[str]:
    assert before.keys() == after.keys()
    return [k for k in before if torch.equal(before[k], after[k])]


def test_sft_under_deepspeed_starts_at_the_golden_loss_and_changes_every_weight(tok, tmp_path):
    a = alignment.sft_arrays(tok, TEMPLATE, PROMPTS, BEST, max_len=64)
    history, before, after = _launch(tmp_path, tok, "sft", a)
    assert history[0]["step"] == 1 and history[0]["loss"] == pytest.approx(GOLDEN["sft"], abs=1e-4)
    assert history[1]["loss"] < history[0]["loss"]
    assert _all_changed(before, after) == []


def test_dpo_under_deepspeed_starts_at_log2_and_changes_every_weight(tok, tmp_path):
    a = alignment.dpo_arrays(tok, TEMPLATE, PROMPTS, BEST, WORST, max_len=64)
    history, before, after = _launch(tmp_path, tok, "dpo", a, beta=0.5, anchor_weight=0.0)
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == frozen reference at step 1
    assert history[1]["loss"] == pytest.approx(GOLDEN["dpo_step2"], abs=1e-3)  # the plain test's AdamW has weight decay 0.01, this loop 0
    assert _all_changed(before, after) == []


def test_rg_cl_under_deepspeed_starts_at_the_golden_loss_and_changes_the_reasoner_and_projection(tok, qe_rec_dir, tmp_path):
    from safetensors.torch import load_file

    path, data = qe_rec_dir
    qe, _, _ = train_ranker.load_model(path)
    targets = alignment.intent_targets(qe, data, np.arange(data.n))
    n = len(targets.pop("rows"))
    text = alignment.sft_arrays(tok, TEMPLATE, [PROMPTS[i % len(PROMPTS)] for i in range(n)],
                                [BEST[i % len(BEST)] for i in range(n)], max_len=64, eos=False)
    history, before, after = _launch(tmp_path, tok, "rg_cl", {**text, **targets}, projection_dir=str(path), tau=0.1,
                                     lm_weight=1.0)
    assert history[0]["loss"] == pytest.approx(GOLDEN["rg_cl"], abs=1e-4)
    assert _all_changed(before, after) == []
    projection = load_file(tmp_path / "out" / "query_projection.safetensors")
    assert [k for k, v in qe.query.state_dict().items() if torch.equal(v, projection[k])] == []
